//! A network of real `ccl` processes on loopback: node 0 started with `ccl start`, the others
//! with `ccl join`, admitted by member0's `transition_node_to_trusted` proposal through the CLI.

use super::ccl;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct ClusterNode {
    pub dir: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
    pub id: String,
    /// The file this node reads its cut-off peers from (`CCL_TEST_PARTITION_FILE`).
    pub partition: PathBuf,
    joiner: bool,
}

impl ClusterNode {
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

pub struct Cluster {
    pub root: PathBuf,
    pub nodes: Vec<ClusterNode>,
    pub extra: Vec<String>,
    rt: tokio::runtime::Runtime,
}

/// Free loopback ports (bound, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Reads a child's stdout lines on a thread.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str, timeout: Duration, root: &Path) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(_) => {}
            Err(e) => {
                let _ = std::process::Command::new("cp")
                    .arg("-r")
                    .arg(root)
                    .arg("/tmp/cluster-failure")
                    .status();
                panic!("waiting for {prefix:?}: {e} (directories copied to /tmp/cluster-failure)")
            }
        }
    }
}

impl Cluster {
    /// Starts `n` nodes; `extra` arguments go to every node.
    pub fn start(root: &Path, n: usize, extra: &[&str]) -> Cluster {
        let ports = free_ports(n);
        let mut c = Cluster {
            root: root.to_path_buf(),
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        };
        for (i, port) in ports.into_iter().enumerate() {
            c.nodes.push(ClusterNode {
                dir: root.join(format!("node{i}")),
                port,
                child: None,
                id: String::new(),
                partition: root.join(format!("node{i}.partition")),
                joiner: i > 0,
            });
        }
        c.launch(0);
        c.nodes[0].id = c.network(0)["node_id"].as_str().unwrap().to_string();
        for i in 1..n {
            c.join(i);
        }
        c.wait_voters(n);
        c.wait_caught_up();
        c
    }

    /// Waits until every live node has committed what the primary had committed when called.
    pub fn wait_caught_up(&self) {
        let p = self.primary().unwrap_or(0);
        let target = self.committed(p);
        self.wait_committed(target, Duration::from_secs(60));
    }

    fn command(&self, i: usize) -> std::process::Command {
        let node = &self.nodes[i];
        let mut cmd = ccl();
        if node.joiner {
            cmd.arg("join")
                .arg("--target")
                .arg(self.nodes[0].endpoint())
                .arg("--service-cert")
                .arg(self.service_cert_path());
        } else {
            cmd.arg("start");
        }
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", node.port))
            .arg("--data-dir")
            .arg(&node.dir)
            .args(["--signature-interval-ms", "20", "--chunk-size", "16384"])
            .args(&self.extra)
            .env("CCL_TEST_PARTITION_FILE", &node.partition)
            .env("CCL_LOG", "info,openraft=warn")
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(node.dir.with_extension("log"))
                    .unwrap(),
            );
        cmd
    }

    /// Starts node `i`'s process (a new one, or a restart on its data directory) and waits until
    /// it listens.
    pub fn launch(&mut self, i: usize) {
        let mut child = self.command(i).spawn().unwrap();
        let rx = lines(&mut child);
        wait_line(&rx, "listening on ", Duration::from_secs(60), &self.root);
        std::thread::spawn(move || for _ in rx {});
        self.nodes[i].child = Some(child);
    }

    /// A new node `i` joins: it asks, member0 proposes to trust it, it catches up and listens.
    fn join(&mut self, i: usize) {
        let mut child = self.command(i).spawn().unwrap();
        let rx = lines(&mut child);
        let pending = wait_line(&rx, "node ", Duration::from_secs(60), &self.root);
        let id = pending
            .strip_prefix("node ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string();
        self.trust(&id);
        wait_line(&rx, "listening on ", Duration::from_secs(120), &self.root);
        std::thread::spawn(move || for _ in rx {});
        self.nodes[i].child = Some(child);
        self.nodes[i].id = id;
    }

    /// Adds a node to the cluster (not started).
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        self.nodes.push(ClusterNode {
            dir: self.root.join(format!("node{i}")),
            port: free_ports(1)[0],
            child: None,
            id: String::new(),
            partition: self.root.join(format!("node{i}.partition")),
            joiner: true,
        });
        self.join(i);
        i
    }

    pub fn service_cert_path(&self) -> PathBuf {
        self.nodes[0].dir.join("service_cert.pem")
    }

    pub fn user_pem(&self) -> PathBuf {
        self.nodes[0].dir.join("user0.pem")
    }

    /// Node `i` loses its disk: killed, its directory wiped, it joins again as a new node.
    pub fn rejoin_wiped(&mut self, i: usize) -> String {
        self.kill(i);
        std::fs::remove_dir_all(&self.nodes[i].dir).unwrap();
        self.nodes[i].joiner = true;
        let old = std::mem::take(&mut self.nodes[i].id);
        self.join(i);
        old
    }

    /// member0 proposes transition_node_to_trusted (one member: it passes at once).
    pub fn trust(&self, node_id: &str) {
        self.propose(
            &format!("trust-{node_id}"),
            serde_json::json!({"actions": [{"name": "transition_node_to_trusted", "args": {
                "node_id": node_id, "valid_from": "20260101000000Z", "validity_period_days": 365}}]}),
        );
    }

    /// member0 proposes remove_node.
    pub fn retire(&self, node_id: &str) {
        self.propose(
            &format!("retire-{node_id}"),
            serde_json::json!({"actions": [{"name": "remove_node", "args": {"node_id": node_id}}]}),
        );
    }

    /// member0 proposes `actions` and votes for them (one member: they pass at once).
    pub fn propose(&self, name: &str, actions: serde_json::Value) {
        let node_id = name;
        let proposal = self.root.join(format!("{name}.json"));
        std::fs::write(&proposal, actions.to_string()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let gov = |member: usize, args: &[&str]| {
            let endpoint = self.any_live_endpoint();
            ccl()
                .arg("gov")
                .args(args)
                .args(["--json", "--endpoint", &endpoint, "--service-cert"])
                .arg(self.service_cert_path())
                .arg("--member")
                .arg(self.nodes[0].dir.join(format!("member{member}.pem")))
                .output()
                .unwrap()
        };
        // Generated members vote in turn (member0 alone, with one member) until it passes.
        let members = (0..9)
            .take_while(|m| self.nodes[0].dir.join(format!("member{m}.pem")).exists())
            .count()
            .max(1);
        loop {
            let out = gov(0, &["propose", proposal.to_str().unwrap()]);
            let mut text = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                let id = v["proposalId"].as_str().unwrap().to_string();
                for m in 0..members {
                    let out = gov(m, &["vote", "--accept", &id]);
                    text = String::from_utf8_lossy(&out.stdout).to_string();
                    if out.status.success() && text.contains("Accepted") {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "proposal {node_id}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn any_live_endpoint(&self) -> String {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .map(ClusterNode::endpoint)
            .unwrap_or_else(|| self.nodes[0].endpoint())
    }

    /// `/node/network` of node `i`.
    pub fn network(&self, i: usize) -> serde_json::Value {
        self.get(i, "/node/network").unwrap()
    }

    /// A GET on node `i` as user0.
    pub fn get(&self, i: usize, path: &str) -> Result<serde_json::Value, ccl_client::ClientError> {
        let client = self.client(i);
        let path = path.to_string();
        self.rt.block_on(async move {
            let mut c = client.connect().await?;
            c.request(ccl_client::Method::GET, &path, None)
                .await?
                .json()
        })
    }

    pub fn client(&self, i: usize) -> ccl_client::Client {
        let cert = std::fs::read_to_string(self.service_cert_path()).unwrap();
        let user = std::fs::read_to_string(self.user_pem()).unwrap();
        ccl_client::Client::new(&self.nodes[i].endpoint(), &cert, Some(&user)).unwrap()
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// Waits until node 0 (or any live node) reports `n` voters and a primary.
    pub fn wait_voters(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                if node.child.is_none() {
                    continue;
                }
                if let Ok(v) = self.get(i, "/node/network") {
                    let voters = v["nodes"]
                        .as_array()
                        .map_or(0, |a| a.iter().filter(|x| x["voter"] == true).count());
                    if voters == n && v["primary_id"].is_string() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the network never had {n} voters"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The index of the node that is primary now, as a live node reports it.
    pub fn primary(&self) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            if let Ok(v) = self.get(i, "/node/network")
                && let Some(p) = v["primary_id"].as_str()
            {
                return self.nodes.iter().position(|n| n.id == p);
            }
        }
        None
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            c.wait().unwrap();
        }
    }

    /// Cuts the traffic between the nodes of `a` and those of `b` (both directions).
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        let ids = |s: &[usize]| -> String {
            s.iter()
                .map(|i| format!("{}\n", self.nodes[*i].id))
                .collect()
        };
        for i in a {
            std::fs::write(&self.nodes[*i].partition, ids(b)).unwrap();
        }
        for i in b {
            std::fs::write(&self.nodes[*i].partition, ids(a)).unwrap();
        }
        // Nodes re-read the file at most every `ccl_consensus::faults::REREAD` (50 ms): until then
        // a write may still reach the other side.
        std::thread::sleep(Duration::from_millis(150));
    }

    pub fn heal(&self) {
        for n in &self.nodes {
            let _ = std::fs::write(&n.partition, "");
        }
    }

    /// Node `i`'s committed seqno.
    pub fn committed(&self, i: usize) -> u64 {
        self.get(i, "/node/commit")
            .ok()
            .and_then(|v| {
                v["transaction_id"]
                    .as_str()
                    .and_then(|t| t.split_once('.'))
                    .and_then(|(_, s)| s.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Waits until every live node has committed at least `seqno`.
    pub fn wait_committed(&self, seqno: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                continue;
            }
            while self.committed(i) < seqno {
                assert!(
                    Instant::now() < deadline,
                    "node {i} did not commit {seqno} (it has {})",
                    self.committed(i)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
