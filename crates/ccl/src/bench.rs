//! `ccl bench`: the figures of BENCHMARKS.md, measured side by side in one run.

use anyhow::{Context, Result, bail};
use ccl_engine::{Engine, EngineConfig, Identity};
use ccl_ledger::secrets::LedgerSecret;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
    /// Directory for the benchmark's data (a temporary directory by default).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// Keep the data written (to inspect or profile it).
    #[arg(long, global = true)]
    keep: bool,
}

#[derive(clap::Subcommand)]
enum What {
    /// Durable appends through the engine: store, ledger entry (private map, encrypted), Merkle
    /// leaf, signature every --sig-every transactions, group commit (one fsync for many).
    Append {
        #[arg(long, default_value_t = 300_000)]
        txs: u64,
        /// Value sizes to measure, in bytes.
        #[arg(long, value_delimiter = ',', default_value = "100,1024")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 1000)]
        sig_every: u64,
        /// Distinct keys written (the store keeps the latest value of each; the ledger keeps
        /// every write). 0: a new key for every transaction.
        #[arg(long, default_value_t = 1024)]
        keys: u64,
    },
    /// Receipts for random committed seqnos.
    Receipts {
        #[arg(long, default_value_t = 200_000)]
        txs: u64,
        #[arg(long, default_value_t = 200_000)]
        receipts: u64,
    },
    /// Committed writes through the API: a node in this process, N clients over TLS each
    /// writing entries back to back; latency is from sending a write to its commit.
    Api {
        /// Concurrent clients (one TLS connection each); several values run one after another.
        #[arg(long, value_delimiter = ',', default_value = "64,256")]
        clients: Vec<usize>,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Where to write the JSON report.
        #[arg(long, default_value = "ccl-bench-api.json")]
        report: PathBuf,
    },
    /// Committed writes on a local network (`ccl start --nodes N`, one process per node),
    /// side by side with an etcd cluster (--etcd): N clients writing entries back to back;
    /// latency from sending a write to seeing its commit (ccl: the primary's /node/commit,
    /// followed with ?after=, which answers as the commit moves; etcd: the put's answer, which follows its commit). scripts/bench-etcd
    /// starts a 3-member etcd and runs this.
    Network {
        /// Nodes of the ccl network.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Concurrent clients (one connection each); several values run one after another.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bytes per entry (ccl: the entry's contents; etcd: the value).
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        /// Where the clients connect: all (spread over every node, backups first: backups
        /// forward writes to the primary; etcd's spread over every member), primary (etcd's on
        /// its leader), or both (all,primary). Each placement gets its own etcd run and ratio.
        #[arg(long, value_delimiter = ',', default_value = "all,primary")]
        to: Vec<crate::bench_net::To>,
        /// etcd client URLs (http://host:port,...): the same runs against etcd, its clients
        /// placed as ccl's.
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// An extra argument for `ccl start --nodes N` (repeatable), e.g.
        /// --start-arg=--signature-interval-ms=20.
        #[arg(long = "start-arg", allow_hyphen_values = true)]
        start_args: Vec<String>,
        /// Where to write the JSON report.
        #[arg(long, default_value = "ccl-bench-network.json")]
        report: PathBuf,
    },
    /// `ccl ledger verify` beside single-core SHA-256 and CCF's read_ledger.py.
    Verify {
        /// Size of the ledger to build, in MB.
        #[arg(long, default_value_t = 200)]
        mb: u64,
        /// A Python with the `ccf` package, to time read_ledger.py on the same ledger.
        #[arg(long)]
        python: Option<PathBuf>,
        /// A signature transaction every this many transactions in the ledger built.
        #[arg(long, default_value_t = 1000)]
        sig_every: u64,
    },
}

pub fn run(args: BenchArgs) -> Result<()> {
    let tmp;
    let dir = match args.dir {
        Some(d) => d,
        None => {
            tmp = std::env::temp_dir().join(format!("ccl-bench-{}", std::process::id()));
            tmp
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = match args.what {
        What::Append {
            txs,
            sizes,
            sig_every,
            keys,
        } => append(&dir, txs, &sizes, sig_every, keys),
        What::Receipts { txs, receipts } => receipts_bench(&dir, txs, receipts),
        What::Api {
            clients,
            seconds,
            report,
        } => crate::bench_api::run(&dir, &clients, seconds, &report),
        What::Network {
            nodes,
            clients,
            seconds,
            payload,
            to,
            etcd,
            start_args,
            report,
        } => crate::bench_net::run(
            &dir,
            &crate::bench_net::Options {
                nodes,
                clients: &clients,
                seconds,
                payload,
                to: &to,
                etcd: &etcd,
                start_args: &start_args,
                report: &report,
            },
        ),
        What::Verify {
            mb,
            python,
            sig_every,
        } => verify_bench(&dir, mb, python.as_deref(), sig_every),
    };
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{model}, {cpus} CPUs")
}

/// Writes `txs` transactions of one private value of `size` bytes each. A syncer thread fsyncs
/// batches while the writer goes on (group commit); commit follows durability.
pub fn write_ledger(
    dir: &Path,
    txs: u64,
    size: usize,
    sig_every: u64,
    keys: u64,
) -> Result<(Engine, Identity, Duration)> {
    let id = Identity::generate(&["localhost".into()])?;
    let cfg = EngineConfig {
        signature_interval_txs: sig_every,
        signature_interval: Duration::from_secs(3600),
        signature_min_interval: Duration::from_secs(3600),
        snapshot_interval_txs: 0,
        ..EngineConfig::default()
    };
    let mut engine = Engine::create(dir, cfg, id.clone(), LedgerSecret::generate()?, |_| Ok(()))?;
    let value = vec![0x5au8; size];
    let durable = Arc::new(AtomicU64::new(0));
    let (to_syncer, from_writer) =
        std::sync::mpsc::sync_channel::<ccl_ledger::ledger::SyncHandle>(1);
    let syncer = {
        let durable = durable.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            for h in from_writer {
                let s = h.sync()?;
                durable.store(s, Ordering::Release);
            }
            Ok(())
        })
    };
    let started = Instant::now();
    let mut committed = 0;
    for i in 0..txs {
        let mut tx = engine.store().begin();
        let key = if keys == 0 { i } else { i % keys };
        tx.put("records", &key.to_be_bytes(), &value)?;
        engine.commit(tx, None)?;
        engine.maybe_emit_signature(Instant::now())?;
        if i % 256 == 255 {
            // Consensus takes the entries a primary executed (to replicate them); without it
            // they would pile up in memory.
            engine.take_outbox();
            // Hand the next batch to the syncer if it is free; never wait for it here.
            let h = engine.sync_handle()?;
            let _ = to_syncer.try_send(h);
            let d = durable.load(Ordering::Acquire);
            if d > committed {
                committed = engine.commit_up_to(d)?;
            }
        }
    }
    let last = engine.finish()?;
    drop(to_syncer);
    syncer
        .join()
        .map_err(|_| anyhow::anyhow!("syncer panicked"))??;
    engine.commit_up_to(last)?;
    Ok((engine, id, started.elapsed()))
}

fn append(dir: &Path, txs: u64, sizes: &[usize], sig_every: u64, keys: u64) -> Result<()> {
    let over = if keys == 0 {
        "a new key each".to_string()
    } else {
        format!("over {keys} keys")
    };
    println!(
        "# ccl bench append: {txs} durable transactions per size ({over}), signature every {sig_every}, group commit"
    );
    println!("machine: {}", machine());
    println!("| value size | tx/s | MB/s of ledger | elapsed |");
    println!("|---|---|---|---|");
    for &size in sizes {
        let d = dir.join(format!("append-{size}"));
        let (engine, _, elapsed) = write_ledger(&d, txs, size, sig_every, keys)?;
        let bytes = dir_size(&d.join(ccl_engine::LEDGER_DIR));
        drop(engine);
        let secs = elapsed.as_secs_f64();
        println!(
            "| {size} B | {:.0} | {:.1} | {secs:.2}s |",
            txs as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
        let _ = std::fs::remove_dir_all(&d);
    }
    Ok(())
}

fn receipts_bench(dir: &Path, txs: u64, n: u64) -> Result<()> {
    let (engine, _, _) = write_ledger(dir, txs, 100, 1000, 1024)?;
    let h = engine.handle();
    let committed = h.committed_seqno();
    // Signature transactions at the very end have no later signature: ask below the last one.
    let top = committed.saturating_sub(1).max(1);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    // Warm up the page cache and the signature cache the way a running node has them.
    for s in 1..=top.min(10_000) {
        h.receipt(s)?;
    }
    let started = Instant::now();
    let mut proof_steps = 0usize;
    let mut out = String::new();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = 1 + x % top;
        let r = h.receipt(s)?;
        proof_steps += r.proof.len();
        out.clear();
        r.to_receipt().write_azure_json(&mut out);
        std::hint::black_box(&out);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "# ccl bench receipts: {n} receipts (JSON, Azure shape) for random seqnos of a {txs}-transaction ledger"
    );
    println!("machine: {}", machine());
    println!(
        "receipts/s: {:.0}  (mean proof length {:.1})",
        n as f64 / secs,
        proof_steps as f64 / n as f64
    );
    Ok(())
}

fn verify_bench(dir: &Path, mb: u64, python: Option<&Path>, sig_every: u64) -> Result<()> {
    // ~1 KiB transactions until the ledger reaches the size asked for.
    let txs = mb * 1_000_000 / 1100;
    let (engine, id, _) = write_ledger(dir, txs, 1024, sig_every, 1024)?;
    drop(engine);
    let ledger = dir.join(ccl_engine::LEDGER_DIR);
    let bytes = dir_size(&ledger);
    // Raw single-core SHA-256 over the same number of bytes, from memory.
    let buf = vec![0xa5u8; 8 << 20];
    let started = Instant::now();
    let mut hashed = 0u64;
    while hashed < bytes {
        std::hint::black_box(ccl_crypto::sha256(&buf));
        hashed += buf.len() as u64;
    }
    let sha_mbs = hashed as f64 / 1e6 / started.elapsed().as_secs_f64();
    // Warm the page cache once, so both readers see the same conditions.
    let _ = ccl_ledger::verify::verify_ledger(&ledger, &Default::default(), &mut |_, _| {});
    let opts = ccl_ledger::verify::VerifyOptions {
        service_cert: Some(id.service_cert.clone()),
    };
    let started = Instant::now();
    let report = ccl_ledger::verify::verify_ledger(&ledger, &opts, &mut |_, _| {})
        .map_err(|e| anyhow::anyhow!("verification failed: {e}"))?;
    let ccl_secs = started.elapsed().as_secs_f64();
    let ccl_mbs = bytes as f64 / 1e6 / ccl_secs;
    println!(
        "# ccl bench verify: a {:.0} MB ledger, {} transactions, {} signatures",
        bytes as f64 / 1e6,
        report.transactions,
        report.signatures
    );
    println!("machine: {}", machine());
    println!("| what | MB/s | ratio |");
    println!("|---|---|---|");
    println!("| SHA-256, one core, in memory | {sha_mbs:.0} | 1.00 |");
    println!(
        "| ccl ledger verify | {ccl_mbs:.0} | {:.2} of SHA-256 |",
        ccl_mbs / sha_mbs
    );
    if let Some(py) = python {
        let started = Instant::now();
        let out = std::process::Command::new(py)
            .args(["-m", "ccf.read_ledger", "-q"])
            .arg(&ledger)
            .output()
            .with_context(|| format!("cannot run {}", py.display()))?;
        let secs = started.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "read_ledger.py failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let py_mbs = bytes as f64 / 1e6 / secs;
        println!(
            "| CCF read_ledger.py | {py_mbs:.1} | ccl is {:.0}x faster |",
            ccl_mbs / py_mbs
        );
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
