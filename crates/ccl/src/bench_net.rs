//! `ccl bench network`: committed writes/s and latency to commit on a local network of N nodes
//! (`ccl start --nodes N`, one process per node), side by side with an etcd cluster given by
//! its endpoints (written through etcd's HTTP JSON gateway, `POST /v3/kv/put`).
//!
//! Both systems see the same load: every client has one write outstanding at a time and sends
//! the next once the previous one is committed (closed loop, as an SDK client waiting for
//! commit does). ccl: each client is one TLS connection; a write is answered with its
//! transaction id once executed, and a single watcher follows the primary's commit
//! (`/node/commit?after=SEQNO`, answered as soon as the commit passes SEQNO) and completes every
//! write whose seqno the commit has passed: latency is from sending a write to seeing its
//! commit. etcd: each client is one plain HTTP/1.1 connection; a put answers once the entry is
//! committed by a majority and applied, so latency is the response time.
//!
//! Placement is like for like: clients spread over every ccl node are compared with clients
//! spread over every etcd member (a ccl backup forwards writes to the primary, an etcd follower
//! forwards proposals to the leader), and clients on ccl's primary with clients on etcd's leader.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use ccl_client::{Client, ClientError, Connection};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the ccl clients send their writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum To {
    /// Clients spread over every node, backups first: a backup forwards writes to the primary.
    All,
    /// Every client on the primary.
    Primary,
}

impl To {
    fn name(self) -> &'static str {
        match self {
            To::All => "all nodes",
            To::Primary => "primary",
        }
    }

    /// Where etcd's clients go for the same placement.
    fn etcd_name(self) -> &'static str {
        match self {
            To::All => "all members",
            To::Primary => "leader",
        }
    }

    /// The table's placement column.
    fn placement(self) -> &'static str {
        match self {
            To::All => "spread over all nodes",
            To::Primary => "on the primary (etcd: leader)",
        }
    }
}

pub struct Options<'a> {
    pub nodes: usize,
    pub clients: &'a [usize],
    pub seconds: u64,
    pub payload: usize,
    pub to: &'a [To],
    pub etcd: &'a [String],
    pub start_args: &'a [String],
    pub report: &'a Path,
}

/// How long the network has to come up (N voters, a primary known to every node).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long writes still in flight when a run ends have to commit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Transaction ids kept per run to check their status at the end.
const SAMPLE: usize = 200;

pub fn run(dir: &Path, o: &Options) -> Result<()> {
    if o.nodes == 0 || o.nodes > crate::start::MAX_LOCAL_NODES {
        bail!("--nodes is 1 to {}", crate::start::MAX_LOCAL_NODES);
    }
    if o.payload == 0 || o.payload > 8192 {
        bail!("--payload is 1 to 8192 bytes (ccl's largest entry)");
    }
    if o.to.is_empty() {
        bail!("--to needs at least one of all, primary");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut net = Network::start(dir, o.nodes, o.start_args)?;
    let r = rt.block_on(bench(&mut net, o));
    net.stop();
    if r.is_err() {
        eprintln!("network log: {}", net.log.display());
    }
    r
}

async fn bench(net: &mut Network, o: &Options<'_>) -> Result<()> {
    let ready = net.wait_ready().await?;
    let etcd = if o.etcd.is_empty() {
        None
    } else {
        Some(Etcd::check(o.etcd).await?)
    };
    // The same bytes for both systems: printable, so that ccl's JSON string is as long.
    let payload: String = (0..o.payload)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    println!(
        "# ccl bench network: {} nodes on loopback (ccl start --nodes {}{}), {}-byte entries, {}s per run",
        o.nodes,
        o.nodes,
        if o.start_args.is_empty() {
            String::new()
        } else {
            format!(" {}", o.start_args.join(" "))
        },
        o.payload,
        o.seconds
    );
    println!("machine: {}", crate::bench::machine());
    println!(
        "ccl: primary {} ({}), writes committed when the primary's /node/commit passes them (followed with ?after=)",
        ready.primary_id, ready.endpoints[ready.primary]
    );
    if let Some(e) = &etcd {
        println!(
            "etcd {}: {} members ({}), POST /v3/kv/put through the HTTP gateway, latency = response time",
            e.version,
            e.endpoints.len(),
            e.endpoints.join(", ")
        );
    }
    let d = Duration::from_secs(o.seconds);
    // One row per client count and placement: ccl, then etcd with its clients placed alike
    // (spread over every member, or all on its leader), so that each ratio is like for like.
    let mut rows = Vec::new();
    let mut json_runs = Vec::new();
    let mut etcd_runs = 0;
    for &n in o.clients {
        for &to in o.to {
            let r = ccl_run(&ready, to, n, d, &payload).await?;
            eprintln!("ccl -> {}, {n} clients: {}", to.name(), r.line());
            let e = match &etcd {
                Some(e) => {
                    let endpoints = match to {
                        To::All => e.endpoints.clone(),
                        To::Primary => vec![e.leader().await?],
                    };
                    etcd_runs += 1;
                    let r = etcd_run(&endpoints, n, d, &payload, etcd_runs).await?;
                    eprintln!("etcd -> {}, {n} clients: {}", to.etcd_name(), r.line());
                    Some(r)
                }
                None => None,
            };
            let mut run = json!({"clients": n, "placement": format!("{to:?}").to_lowercase(), "ccl": r.json()});
            if let Some(e) = &e {
                run["etcd"] = e.json();
                run["ccl_over_etcd_writes_per_sec"] = json!(r.per_sec / e.per_sec);
                run["ccl_over_etcd_p99"] = json!(r.p99_ms / e.p99_ms);
            }
            json_runs.push(run);
            rows.push((n, to, r, e));
        }
    }

    let mut head: Vec<String> = [
        "clients",
        "placement",
        "ccl writes/s",
        "p50",
        "p99",
        "p99.9",
    ]
    .map(String::from)
    .into();
    if etcd.is_some() {
        head.extend(
            [
                "etcd writes/s",
                "p50",
                "p99",
                "p99.9",
                "ccl / etcd writes/s",
                "ccl / etcd p99",
            ]
            .map(String::from),
        );
    }
    println!();
    println!("| {} |", head.join(" | "));
    println!("|{}", "---|".repeat(head.len()));
    for (n, to, r, e) in &rows {
        let mut cells = vec![n.to_string(), to.placement().to_string()];
        cells.extend(r.cells());
        if let Some(e) = e {
            cells.extend(e.cells());
            cells.push(format!("{:.2}x", r.per_sec / e.per_sec));
            cells.push(format!("{:.2}x", r.p99_ms / e.p99_ms));
        }
        println!("| {} |", cells.join(" | "));
    }
    let mut notes = Vec::new();
    for (n, to, r, e) in &rows {
        if r.errors > 0 || r.unconfirmed > 0 {
            notes.push(format!(
                "ccl ({}), {n} clients: {} rejected writes, {} of {} sampled not Committed",
                to.name(),
                r.errors,
                r.unconfirmed,
                r.sampled
            ));
        }
        if let Some(e) = e
            && (e.errors > 0 || e.unconfirmed > 0)
        {
            notes.push(format!(
                "etcd ({}), {n} clients: {} failed puts, {} acknowledged puts missing",
                to.etcd_name(),
                e.errors,
                e.unconfirmed
            ));
        }
    }
    let sampled: usize = rows.iter().map(|(_, _, r, _)| r.sampled).sum();
    if notes.is_empty() {
        println!(
            "checks: {sampled} sampled ccl transaction ids Committed (status endpoint){}",
            if etcd.is_some() {
                "; etcd key counts equal the puts acknowledged"
            } else {
                ""
            }
        );
    } else {
        for n in &notes {
            println!("warning: {n}");
        }
    }
    let doc = json!({
        "benchmark": "network",
        "machine": crate::bench::machine(),
        "nodes": o.nodes,
        "payload_bytes": o.payload,
        "seconds": o.seconds,
        "ccl_start_args": o.start_args,
        "ccl_primary": ready.primary_id,
        "etcd": etcd.as_ref().map(|e| json!({"version": e.version, "endpoints": e.endpoints})),
        "runs": json_runs,
    });
    std::fs::write(o.report, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", o.report.display()))?;
    println!("report: {}", o.report.display());
    Ok(())
}

struct RunResult {
    count: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// Writes refused (ccl: 503 and the like; etcd: non-200 answers), retried.
    errors: u64,
    /// ccl: sampled transaction ids not Committed at the end; etcd: acknowledged puts missing.
    unconfirmed: usize,
    sampled: usize,
    /// ccl: median time from sending a write to its answer (executed, not yet committed).
    answer_p50_ms: Option<f64>,
    /// ccl: the same figures for the writes sent to the primary and for those a backup
    /// forwarded (when the clients were spread over all nodes).
    split: Vec<(&'static str, Split)>,
}

/// Latency of one group of writes (by where their client sat).
struct Split {
    writes: usize,
    p50_ms: f64,
    p99_ms: f64,
    answer_p50_ms: f64,
}

impl Split {
    fn of(mut committed: Vec<Duration>, mut answered: Vec<Duration>) -> Split {
        Split {
            writes: committed.len(),
            p50_ms: percentile_ms(&mut committed, 0.50),
            p99_ms: percentile_ms(&mut committed, 0.99),
            answer_p50_ms: percentile_ms(&mut answered, 0.50),
        }
    }
}

/// The `p` quantile of `l`, in milliseconds (0 for none).
fn percentile_ms(l: &mut [Duration], p: f64) -> f64 {
    if l.is_empty() {
        return 0.0;
    }
    let i = ((l.len() as f64 * p) as usize).min(l.len() - 1);
    l.select_nth_unstable(i).1.as_secs_f64() * 1e3
}

impl RunResult {
    fn from_latencies(mut l: Vec<Duration>, elapsed: Duration) -> RunResult {
        RunResult {
            count: l.len(),
            per_sec: l.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: percentile_ms(&mut l, 0.50),
            p99_ms: percentile_ms(&mut l, 0.99),
            p999_ms: percentile_ms(&mut l, 0.999),
            errors: 0,
            unconfirmed: 0,
            sampled: 0,
            answer_p50_ms: None,
            split: Vec::new(),
        }
    }

    fn cells(&self) -> [String; 4] {
        [
            format!("{:.0}", self.per_sec),
            format!("{:.1} ms", self.p50_ms),
            format!("{:.1} ms", self.p99_ms),
            format!("{:.1} ms", self.p999_ms),
        ]
    }

    fn line(&self) -> String {
        let answered = self
            .answer_p50_ms
            .map_or(String::new(), |a| format!(" (answered: p50 {a:.1} ms)"));
        let split: String = self
            .split
            .iter()
            .map(|(name, s)| {
                format!(
                    "; {name}: {} writes, p50 {:.1} ms (answered: p50 {:.1} ms), p99 {:.1} ms",
                    s.writes, s.p50_ms, s.answer_p50_ms, s.p99_ms
                )
            })
            .collect();
        format!(
            "{:.0} committed writes/s, p50 {:.1} ms{answered}, p99 {:.1} ms, p99.9 {:.1} ms, {} writes, {} errors{split}",
            self.per_sec, self.p50_ms, self.p99_ms, self.p999_ms, self.count, self.errors
        )
    }

    fn json(&self) -> Value {
        json!({
            "committed_writes": self.count, "committed_writes_per_sec": self.per_sec,
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "p999_ms": self.p999_ms,
            "errors": self.errors, "sampled": self.sampled, "unconfirmed": self.unconfirmed,
            "answer_p50_ms": self.answer_p50_ms,
            "by_client_placement": self.split.iter().map(|(name, s)| (name.to_string(), json!({
                "committed_writes": s.writes, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms,
                "answer_p50_ms": s.answer_p50_ms,
            }))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// `ccl start --nodes N` in a child process.
struct Network {
    child: Option<Child>,
    base_port: u16,
    nodes: usize,
    root: PathBuf,
    log: PathBuf,
}

/// The network once it is ready.
struct Ready {
    /// `https://127.0.0.1:port` of node i.
    endpoints: Vec<String>,
    /// Client of node i (user0).
    clients: Vec<Client>,
    /// Index of the primary in `endpoints`.
    primary: usize,
    primary_id: String,
}

impl Network {
    fn start(dir: &Path, nodes: usize, extra: &[String]) -> Result<Network> {
        let root = dir.join("network");
        let base_port = free_base_port(nodes)?;
        let log = dir.join("network.log");
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let exe = std::env::current_exe().context("cannot find the ccl executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("start")
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--data-dir")
            .arg(&root)
            .arg("--listen")
            .arg(format!("127.0.0.1:{base_port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if std::env::var_os("CCL_LOG").is_none() {
            cmd.env("CCL_LOG", "warn");
        }
        let child = cmd.spawn().context("cannot start ccl start --nodes")?;
        Ok(Network {
            child: Some(child),
            base_port,
            nodes,
            root,
            log,
        })
    }

    /// Waits until node 0 counts N voters and a primary, every node knows that primary and the
    /// service is Open.
    async fn wait_ready(&mut self) -> Result<Ready> {
        let deadline = Instant::now() + READY_TIMEOUT;
        // `ccl start --nodes 1` is a plain node: its files are in the data directory itself.
        let node0 = if self.nodes == 1 {
            self.root.clone()
        } else {
            self.root.join("node0")
        };
        let endpoints: Vec<String> = (0..self.nodes)
            .map(|i| format!("https://127.0.0.1:{}", self.base_port + i as u16))
            .collect();
        let mut last = String::from("no answer yet");
        loop {
            if Instant::now() > deadline {
                bail!(
                    "the network was not ready after {}s: {last}",
                    READY_TIMEOUT.as_secs()
                );
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("ccl start exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (Ok(cert), Ok(user)) = (
                std::fs::read_to_string(node0.join(ccl_node::init::SERVICE_CERT)),
                std::fs::read_to_string(node0.join(ccl_node::init::USER0)),
            ) else {
                continue;
            };
            let clients = endpoints
                .iter()
                .map(|e| Client::new(e, &cert, Some(&user)))
                .collect::<Result<Vec<_>, _>>()?;
            match check_ready(&clients, self.nodes).await {
                Ok((primary, primary_id)) => {
                    return Ok(Ready {
                        endpoints,
                        clients,
                        primary,
                        primary_id,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
    }

    /// SIGTERM to `ccl start` (it stops its children); SIGKILL to whatever is left after 20 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let children = child_pids(child.id());
        signal("TERM", child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if child.try_wait().ok().flatten().is_none() {
            eprintln!("ccl start did not stop within 20 s: killed");
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in children {
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal("KILL", pid);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The processes whose parent is `pid` (Linux /proc).
fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// A loopback port with `n - 1` free ports after it.
fn free_base_port(n: usize) -> Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64)
        ^ u64::from(std::process::id());
    for attempt in 0..200u64 {
        let base =
            20_000 + ((seed.wrapping_mul(6364136223846793005) >> 17) + attempt * 97) % 30_000;
        let base = base as u16;
        let ok = (0..n as u16)
            .map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)))
            .collect::<Result<Vec<_>, _>>()
            .is_ok();
        if ok {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free ports on 127.0.0.1")
}

async fn get_json(c: &Client, path: &str) -> Result<Value> {
    let mut conn = c.connect().await?;
    Ok(conn
        .request(ccl_client::Method::GET, path, None)
        .await?
        .json()?)
}

/// (index of the primary, its node id) once the network is ready.
async fn check_ready(clients: &[Client], n: usize) -> Result<(usize, String)> {
    let v = get_json(&clients[0], "/node/network").await?;
    let voters = v["nodes"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|x| x["voter"] == true).count());
    let Some(primary_id) = v["primary_id"].as_str().map(str::to_string) else {
        bail!("no primary yet");
    };
    if voters != n {
        bail!("{voters} of {n} nodes are voters");
    }
    if v["service_status"] != "Open" {
        bail!("service status {}", v["service_status"]);
    }
    let mut primary = None;
    for (i, c) in clients.iter().enumerate() {
        let v = get_json(c, "/node/network").await?;
        if v["primary_id"].as_str() != Some(&primary_id) {
            bail!("node {i} does not know the primary yet");
        }
        if v["is_primary"] == true {
            primary = Some(i);
        }
    }
    let primary = primary.ok_or_else(|| anyhow!("the primary's endpoint was not found"))?;
    Ok((primary, primary_id))
}

fn seqno_of(txid: &str) -> Option<u64> {
    txid.split_once('.')?.1.parse().ok()
}

/// One run against ccl: `n` writers for `d`, a watcher completing their writes on commit.
async fn ccl_run(ready: &Ready, to: To, n: usize, d: Duration, payload: &str) -> Result<RunResult> {
    // Which node each writer talks to: backups first, so that one client goes through a backup.
    let order: Vec<usize> = match to {
        To::Primary => vec![ready.primary],
        To::All => (0..ready.clients.len())
            .filter(|&i| i != ready.primary)
            .chain([ready.primary])
            .collect(),
    };
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(ready.clients[order[i % order.len()]].connect().await?);
    }
    let mut watch = ready.clients[ready.primary].connect().await?;
    // Each write in flight: when it was sent, and whether a backup forwarded it.
    let inflight: Arc<Mutex<BTreeMap<u64, (Instant, bool)>>> = Arc::default();
    let sample: Arc<Mutex<Vec<String>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // The primary's commit seqno as the watcher last saw it: a writer waits for its write.
    let (commit_tx, commit_rx) = tokio::sync::watch::channel(0u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let node = order[i % order.len()];
        let forwarded = node != ready.primary;
        let client = ready.clients[node].clone();
        let (inflight, sample, errors, stop, mut commit_rx) = (
            inflight.clone(),
            sample.clone(),
            errors.clone(),
            stop.clone(),
            commit_rx.clone(),
        );
        let contents = payload.to_string();
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match conn.write_entry(None, &contents).await {
                    Ok(txid) => {
                        answers.push((sent.elapsed(), forwarded));
                        let seqno = seqno_of(&txid)
                            .ok_or_else(|| anyhow!("bad transaction id {txid:?}"))?;
                        inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(seqno, (sent, forwarded));
                        if k % 64 == (i as u64) % 64 {
                            let mut s = sample.lock().unwrap_or_else(|p| p.into_inner());
                            if s.len() < SAMPLE {
                                s.push(txid);
                            }
                        }
                        k += 1;
                        // Closed loop: the next write once this one is committed.
                        if commit_rx.wait_for(|c| *c >= seqno).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let n = errors.fetch_add(1, Ordering::Relaxed);
                        if n < 5 {
                            eprintln!("ccl write refused: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if !matches!(e, ClientError::Api { .. }) {
                            conn = reconnect(&client, &stop).await?;
                        }
                    }
                }
            }
            anyhow::Ok(answers)
        }));
    }
    // The watcher, here: the primary's commit seqno as it moves (`/node/commit?after=`, which
    // answers when the commit passes what was seen); polled every millisecond while draining,
    // so that the end of the run is not held up by a wait for commits that will not come.
    let mut latencies = Vec::new();
    let mut drain_deadline = None;
    let mut seen = 0;
    loop {
        let answer = if drain_deadline.is_none() {
            watch.committed_after(seen).await
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            watch.committed().await
        };
        let committed = match answer {
            Ok(t) => seqno_of(&t).unwrap_or(0),
            Err(e) => {
                eprintln!("/node/commit: {e}");
                watch = ready.clients[ready.primary].connect().await?;
                continue;
            }
        };
        let now = Instant::now();
        seen = seen.max(committed);
        commit_tx.send_replace(committed);
        let done = {
            let mut m = inflight.lock().unwrap_or_else(|p| p.into_inner());
            let rest = m.split_off(&(committed + 1));
            std::mem::replace(&mut *m, rest)
        };
        latencies.extend(done.into_values().map(|(t, f)| (now - t, f)));
        if drain_deadline.is_none() && now - started >= d {
            stop.store(true, Ordering::Relaxed);
            drain_deadline = Some(now + DRAIN_TIMEOUT);
        }
        if let Some(dl) = drain_deadline
            && tasks.iter().all(|t| t.is_finished())
        {
            let left = inflight.lock().unwrap_or_else(|p| p.into_inner()).len();
            if left == 0 {
                break;
            }
            if now > dl {
                eprintln!(
                    "{left} writes not committed {}s after the run",
                    DRAIN_TIMEOUT.as_secs()
                );
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await??);
    }
    let split = |forwarded: bool| {
        let pick = |l: &[(Duration, bool)]| {
            l.iter()
                .filter(|(_, f)| *f == forwarded)
                .map(|(d, _)| *d)
                .collect::<Vec<_>>()
        };
        Split::of(pick(&latencies), pick(&answers))
    };
    let split = match to {
        To::All => vec![("direct", split(false)), ("forwarded", split(true))],
        To::Primary => Vec::new(),
    };
    let mut answers: Vec<Duration> = answers.into_iter().map(|(d, _)| d).collect();
    let mut r = RunResult::from_latencies(latencies.into_iter().map(|(d, _)| d).collect(), elapsed);
    r.answer_p50_ms = (!answers.is_empty()).then(|| percentile_ms(&mut answers, 0.50));
    r.split = split;
    r.errors = errors.load(Ordering::Relaxed);
    let sample = std::mem::take(&mut *sample.lock().unwrap_or_else(|p| p.into_inner()));
    r.sampled = sample.len();
    for txid in &sample {
        let state = match watch.status(txid).await {
            Ok(s) => s,
            Err(ClientError::Api { code, .. }) => code,
            Err(e) => return Err(e.into()),
        };
        if state != "Committed" {
            r.unconfirmed += 1;
            eprintln!("transaction {txid}: {state}");
        }
    }
    Ok(r)
}

async fn reconnect(client: &Client, stop: &AtomicBool) -> Result<Connection> {
    loop {
        match client.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if stop.load(Ordering::Relaxed) => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// An etcd cluster reached through its HTTP JSON gateway.
struct Etcd {
    /// host:port of each member's client URL.
    endpoints: Vec<String>,
    version: String,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Etcd {
    async fn check(urls: &[String]) -> Result<Etcd> {
        let mut endpoints = Vec::new();
        for u in urls {
            let hp = u
                .trim()
                .strip_prefix("http://")
                .ok_or_else(|| anyhow!("etcd endpoint {u:?}: expected http://host:port"))?
                .trim_end_matches('/');
            endpoints.push(hp.to_string());
        }
        let mut version = String::new();
        for e in &endpoints {
            let mut s = etcd_connect(e)
                .await
                .with_context(|| format!("cannot reach etcd at {e}"))?;
            let (st, body) = http(&mut s, e, hyper::Method::GET, "/version", None).await?;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if st != 200 {
                bail!("etcd at {e}: /version answered {st}");
            }
            version = v["etcdserver"].as_str().unwrap_or("?").to_string();
            let (st, body) = http(&mut s, e, hyper::Method::GET, "/health", None).await?;
            if st != 200 {
                bail!(
                    "etcd at {e} is not healthy: {st} {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
        Ok(Etcd { endpoints, version })
    }

    /// The endpoint of the member that leads now (`/v3/maintenance/status`: the member whose id
    /// is the leader's).
    async fn leader(&self) -> Result<String> {
        for e in &self.endpoints {
            let mut s = etcd_connect(e)
                .await
                .with_context(|| format!("cannot reach etcd at {e}"))?;
            let (st, body) = http(
                &mut s,
                e,
                hyper::Method::POST,
                "/v3/maintenance/status",
                Some(b"{}".to_vec()),
            )
            .await?;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if st != 200 {
                bail!("etcd at {e}: status answered {st} {v}");
            }
            if v["leader"].is_string() && v["leader"] == v["header"]["member_id"] {
                return Ok(e.clone());
            }
        }
        bail!("no etcd member says it leads")
    }
}

async fn etcd_connect(hostport: &str) -> Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(hostport).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn http(
    s: &mut Sender,
    host: &str,
    method: hyper::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(hyper::StatusCode, Bytes)> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    s.ready().await?;
    let resp = s.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// One run against etcd: `n` writers for `d`, each put timed to its answer.
async fn etcd_run(
    endpoints: &[String],
    n: usize,
    d: Duration,
    payload: &str,
    run: usize,
) -> Result<RunResult> {
    let prefix = format!(
        "ccl-bench/{}-{run}/",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs())
    );
    let value = base64(payload.as_bytes());
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let e = endpoints[i % endpoints.len()].clone();
        conns.push((etcd_connect(&e).await?, e));
    }
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (mut s, host)) in conns.into_iter().enumerate() {
        let (errors, stop, value, prefix) =
            (errors.clone(), stop.clone(), value.clone(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = base64(format!("{prefix}{i}/{k}").as_bytes());
                let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#).into_bytes();
                let sent = Instant::now();
                let r = http(&mut s, &host, hyper::Method::POST, "/v3/kv/put", Some(body)).await;
                match r {
                    Ok((st, body)) if st == 200 && body.starts_with(b"{\"header\"") => {
                        lat.push(sent.elapsed());
                        k += 1;
                    }
                    other => {
                        let n = errors.fetch_add(1, Ordering::Relaxed);
                        if n < 5 {
                            match &other {
                                Ok((st, body)) => eprintln!(
                                    "etcd put refused: {st} {}",
                                    String::from_utf8_lossy(body)
                                ),
                                Err(e) => eprintln!("etcd put: {e}"),
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if other.is_err() {
                            loop {
                                match etcd_connect(&host).await {
                                    Ok(c) => {
                                        s = c;
                                        break;
                                    }
                                    Err(e) if stop.load(Ordering::Relaxed) => return Err(e),
                                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                                }
                            }
                        }
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    let mut r = RunResult::from_latencies(latencies, elapsed);
    r.errors = errors.load(Ordering::Relaxed);
    // Every acknowledged put must be there: count the run's keys (a linearizable read).
    let host = &endpoints[0];
    let mut s = etcd_connect(host).await?;
    let mut end = prefix.clone().into_bytes();
    *end.last_mut().expect("a prefix") += 1;
    let body = format!(
        r#"{{"key":"{}","range_end":"{}","count_only":true}}"#,
        base64(prefix.as_bytes()),
        base64(&end)
    );
    let (st, body) = http(
        &mut s,
        host,
        hyper::Method::POST,
        "/v3/kv/range",
        Some(body.into_bytes()),
    )
    .await?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if st != 200 {
        bail!("etcd range: {st} {v}");
    }
    // The gateway writes int64 as strings and leaves zero values out.
    let count: usize = match &v["count"] {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0) as usize,
        _ => 0,
    };
    r.sampled = r.count;
    r.unconfirmed = r.count.saturating_sub(count);
    Ok(r)
}

/// Standard base64 with padding (etcd's gateway takes bytes fields so).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let x = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for j in 0..4 {
            if j <= c.len() {
                out.push(A[(x >> (18 - 6 * j) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn seqno() {
        assert_eq!(super::seqno_of("2.15"), Some(15));
        assert_eq!(super::seqno_of("15"), None);
    }
}
