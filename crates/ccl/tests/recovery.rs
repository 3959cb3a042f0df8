//! Issue 6: ledger secrets on a network (rekey through the ledger), recovery shares and disaster
//! recovery, with real `ccl` processes on loopback.

mod common;

use common::cluster::Cluster;
use common::*;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One network at a time (see cluster.rs).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

const API: &str = "api-version=2022-05-13";

/// Writes `contents` through node `i` (into `collection` if given); returns the transaction id
/// once it is committed.
fn write(c: &Cluster, i: usize, collection: Option<&str>, contents: &str) -> String {
    let client = c.client(i);
    let contents = contents.to_string();
    let collection = collection.map(str::to_string);
    c.runtime().block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = async {
                let mut conn = client.connect().await?;
                let txid = conn.write_entry(collection.as_deref(), &contents).await?;
                for _ in 0..1000 {
                    if conn.status(&txid).await? == "Committed" {
                        return Ok(Some(txid));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<_, ccl_client::ClientError>(None)
            }
            .await;
            match r {
                Ok(Some(txid)) => return txid,
                other => assert!(Instant::now() < deadline, "write {contents}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Node `i` serves every written entry with its contents, and a receipt for it that verifies
/// against the service certificate `cert` (with the endorsements it carries).
fn check_entries(c: &Cluster, i: usize, written: &[(String, String)], cert: &str) {
    for (txid, contents) in written {
        let v = c
            .get(i, &format!("/app/transactions/{txid}?{API}"))
            .unwrap_or_else(|e| panic!("node {i}: {txid}: {e}"));
        assert_eq!(v["entry"]["contents"], contents.as_str(), "node {i}: {v}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = c
                .get(i, &format!("/app/transactions/{txid}/receipt?{API}"))
                .unwrap();
            if r["state"] == "Ready" {
                let receipt = ccl_receipt::Receipt::from_json(&r).unwrap();
                receipt
                    .verify(cert)
                    .unwrap_or_else(|e| panic!("node {i}: receipt of {txid}: {e}"));
                break;
            }
            assert!(Instant::now() < deadline, "no receipt for {txid}: {r}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// CCF's own check of the chain of ledger secrets.
fn check_secrets_chain(data: &Path) {
    let out = std::process::Command::new(python())
        .args(["-m", "ccf.verify_ledger_secrets_chain"])
        .arg(data.join("ledger"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify_ledger_secrets_chain: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rekey(c: &Cluster, name: &str) {
    c.propose(
        name,
        serde_json::json!({"actions": [{"name": "trigger_ledger_rekey", "args": {}}]}),
    );
}

#[test]
fn rekey_on_three_nodes_everything_stays_readable_and_verifiable() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(root.path(), 3, &[]);
    let cert = std::fs::read_to_string(c.service_cert_path()).unwrap();
    let mut written = Vec::new();
    for i in 0..6 {
        let contents = format!("before the rekey {i}");
        written.push((write(&c, i % 3, None, &contents), contents));
    }
    rekey(&c, "rekey-1");
    for i in 0..6 {
        let contents = format!("after the first rekey {i}");
        written.push((write(&c, i % 3, None, &contents), contents));
    }
    // A second rekey, with a backup down: it gets the secret from the ledger when it catches up.
    let backup = (0..3).find(|i| Some(*i) != c.primary()).unwrap();
    c.stop(backup);
    rekey(&c, "rekey-2");
    let live = (0..3).find(|i| *i != backup).unwrap();
    for i in 0..4 {
        let contents = format!("after the second rekey {i}");
        written.push((write(&c, live, None, &contents), contents));
    }
    c.launch(backup);
    c.wait_caught_up();
    for i in 0..3 {
        check_entries(&c, i, &written, &cert);
    }
    // Every node restarted: each replays its ledger and learns the secrets from it.
    for i in 0..3 {
        c.stop(i);
    }
    for i in 0..3 {
        c.launch(i);
    }
    c.wait_voters(3);
    let contents = "after the restart".to_string();
    written.push((write(&c, 0, None, &contents), contents));
    c.wait_caught_up();
    for i in 0..3 {
        check_entries(&c, i, &written, &cert);
    }
    for i in 0..3 {
        c.stop(i);
    }
    for i in 0..3 {
        let data = &c.nodes[i].dir;
        validate_data_dir(data, false);
        check_secrets_chain(data);
        // The rekeys' secrets are in the ledger sealed to nodes, never in the clear: the
        // entries' plaintexts are nowhere on disk.
        for f in files(data) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes.windows(12).any(|w| w == b"second rekey"),
                "{} holds a plaintext",
                f.display()
            );
        }
    }
}
