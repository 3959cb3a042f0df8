//! `ccl bench api`: committed writes/s and latency to commit through the HTTPS API.

use anyhow::{Context, Result};
use ccl_engine::EngineConfig;
use ccl_node::NodeConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn run(dir: &Path, clients: &[usize], seconds: u64, report: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cfg = NodeConfig {
            data_dir: dir.join("node"),
            listen: "127.0.0.1:0".parse().expect("address"),
            names: vec![],
            engine: EngineConfig::default(),
            generated_members: 1,
            member_certs: vec![],
            auto_open: true,
            rpc_address: None,
        };
        let (shared, _) = tokio::task::spawn_blocking({
            let cfg = cfg.clone();
            move || ccl_node::open(&cfg)
        })
        .await??;
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(ccl_node::serve(cfg.clone(), shared.clone(), listener, async {
            let _ = stop_rx.await;
        }));
        let cert = std::fs::read_to_string(cfg.data_dir.join(ccl_node::init::SERVICE_CERT))?;
        let user = std::fs::read_to_string(cfg.data_dir.join(ccl_node::init::USER0))?;
        let client = ccl_client::Client::new(&format!("https://localhost:{}", addr.port()), &cert, Some(&user))?;
        println!("# ccl bench api: committed writes through HTTPS, {seconds}s per run, one node in this process");
        println!("machine: {}", crate::bench::machine());
        println!("| clients | committed writes/s | p50 | p99 | p99.9 | writes |");
        println!("|---|---|---|---|---|---|");
        let mut runs = Vec::new();
        for &n in clients {
            let r = one_run(&client, &shared, n, Duration::from_secs(seconds)).await?;
            println!(
                "| {n} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
                r.per_sec, r.p50_ms, r.p99_ms, r.p999_ms, r.count
            );
            runs.push(serde_json::json!({
                "clients": n, "seconds": seconds, "committed_writes": r.count,
                "committed_writes_per_sec": r.per_sec, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "p999_ms": r.p999_ms,
            }));
        }
        let rss_mb = resident_mb();
        let entries = shared.handle.last_seqno();
        println!("resident memory after {entries} transactions: {rss_mb:.0} MB (node and clients, one process)");
        let _ = stop_tx.send(());
        server.await??;
        let doc = serde_json::json!({
            "benchmark": "api", "machine": crate::bench::machine(), "runs": runs,
            "transactions": entries, "resident_mb": rss_mb,
        });
        std::fs::write(report, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("cannot write {}", report.display()))?;
        println!("report: {}", report.display());
        Ok(())
    })
}

struct RunResult {
    count: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

async fn one_run(
    client: &ccl_client::Client,
    shared: &Arc<ccl_node::Shared>,
    n: usize,
    d: Duration,
) -> Result<RunResult> {
    // Writes in flight, by seqno: when the commit passes them, their latency is known.
    let inflight: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (inflight, latencies, stop, handle) = (
            inflight.clone(),
            latencies.clone(),
            stop.clone(),
            shared.handle.clone(),
        );
        tokio::spawn(async move {
            loop {
                let committed = handle.committed_seqno();
                let now = Instant::now();
                let done: Vec<Instant> = {
                    let mut m = inflight.lock().unwrap_or_else(|p| p.into_inner());
                    let rest = m.split_off(&(committed + 1));
                    std::mem::replace(&mut *m, rest).into_values().collect()
                };
                latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(done.into_iter().map(|t| now - t));
                if stop.load(Ordering::Relaxed)
                    && inflight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_empty()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, inflight, stop) = (client.clone(), inflight.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect().await?;
            let contents = format!("bench entry from client {i}: {}", "x".repeat(64));
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let txid = conn.write_entry(None, &contents).await?;
                let seqno: u64 = txid
                    .split('.')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(seqno, sent);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    watcher.await?;
    let elapsed = started.elapsed();
    let mut l = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Ok(RunResult {
        count: l.len(),
        per_sec: l.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
    })
}

/// Resident memory of this process, in MB (Linux).
fn resident_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
