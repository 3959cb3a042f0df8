//! Shared by the integration tests: building ledgers with the crates, finding the test Python.
#![allow(dead_code)]

use ccl_crypto::Digest32;
use ccl_engine::{Engine, EngineConfig, Identity};
use ccl_ledger::secrets::LedgerSecret;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const SECRET: [u8; 32] = [0x42; 32];

/// The Python with `ccf` and `azure-confidentialledger` that the README's test command installs.
pub fn python() -> PathBuf {
    match std::env::var_os("CCL_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "CCL_TEST_PYTHON is not set: run the tests with ./scripts/test, which installs ccf==6.0.28 and \
             azure-confidentialledger==1.1.1 into a venv and points CCL_TEST_PYTHON at it"
        ),
    }
}

pub fn ccl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ccl"))
}

/// Checks a node's data directory with `ccl ledger verify` (against its service certificate) and
/// with CCF's `read_ledger.py` (quiet, or dumping every table); both must succeed. Returns
/// `read_ledger.py`'s stdout and stderr.
pub fn validate_data_dir(data: &Path, dump_tables: bool) -> (String, String) {
    let ledger = data.join("ledger");
    let out = ccl()
        .args(["ledger", "verify", "--service-cert"])
        .arg(data.join("service_cert.pem"))
        .arg(&ledger)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new(python());
    cmd.args(["-m", "ccf.read_ledger"]);
    if !dump_tables {
        cmd.arg("-q");
    }
    let out = cmd.arg(&ledger).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "read_ledger.py failed:\n{stdout}{stderr}"
    );
    (stdout, stderr)
}

/// Starts `ccl start` on a free loopback port with its data in `dir` (log in `dir`.log), plus
/// `extra` arguments; returns the process and its endpoint once it listens.
pub fn spawn_node(dir: &Path, extra: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = ccl()
        .args([
            "start",
            "--listen",
            "127.0.0.1:0",
            "--signature-interval-ms",
            "20",
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("CCL_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let endpoint = loop {
        let line = lines
            .next()
            .expect("ccl start exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix("listening on ") {
            break rest.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, endpoint)
}

/// A ledger built for a test.
pub struct Built {
    pub engine: Engine,
    pub id: Identity,
    /// Seqno -> claims digest bound to it, for the transactions that have claims.
    pub claims: Vec<(u64, Digest32, serde_json::Value)>,
    pub signatures: u64,
}

pub fn config(sig_every: u64, chunk_size: u64) -> EngineConfig {
    EngineConfig {
        signature_interval_txs: sig_every,
        signature_interval: Duration::from_secs(3600),
        signature_min_interval: Duration::from_secs(3600),
        chunk_size,
        snapshot_interval_txs: 0,
        merkle_cache_pages: 64,
        snapshots_in_background: true,
        // Signatures with pooled nonces, so CCF's validator checks those too.
        presigned_nonces: ccl_engine::DEFAULT_PRESIGNED_NONCES,
    }
}

/// `txs` transactions over public and private maps, every 7th with Azure-style ledger entry
/// claims; all committed as complete `.committed` chunks; then, with `open_tail`, a few more
/// transactions and a signature in an in-progress chunk (so the last committed chunk is itself
/// covered by a later signature).
pub fn build(dir: &Path, txs: u64, sig_every: u64, chunk_size: u64, open_tail: bool) -> Built {
    let id = Identity::generate(&["localhost".into()]).expect("identity");
    let mut engine = Engine::create(
        dir,
        config(sig_every, chunk_size),
        id.clone(),
        LedgerSecret::from_bytes(SECRET),
        |_| Ok(()),
    )
    .expect("create");
    // Signatures with pooled nonces, so that CCF's validator checks those too: wait for the
    // pool's first nonces (its thread builds a table first).
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.identity().node_key.nonces_ready() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut claims = Vec::new();
    let write = |engine: &mut Engine, claims: &mut Vec<_>, i: u64| {
        let mut tx = engine.store().begin();
        let key = format!("entry-{i:08}");
        tx.put(
            "public:ccl.test.index",
            key.as_bytes(),
            format!("public-{i}").as_bytes(),
        )
        .expect("put");
        let contents = format!("SECRET-CONTENTS-{i:08}");
        tx.put("ccl.test.private", key.as_bytes(), contents.as_bytes())
            .expect("put");
        let claim = (i % 7 == 3).then(|| {
            let c = ccl_receipt::ApplicationClaim::ledger_entry(
                "subledger:0",
                &contents,
                format!("key-{i}").as_bytes(),
            );
            (
                ccl_receipt::compute_claims_digest(std::slice::from_ref(&c)).expect("digest"),
                serde_json::Value::Array(vec![c.to_json()]),
            )
        });
        let txid = engine
            .commit(tx, claim.as_ref().map(|c| c.0))
            .expect("commit");
        if let Some((d, j)) = claim {
            claims.push((txid.seqno, d, j));
        }
        engine
            .maybe_emit_signature(Instant::now())
            .expect("signature");
    };
    for i in 0..txs {
        write(&mut engine, &mut claims, i);
    }
    let last = engine.finish().expect("finish");
    engine.commit_up_to(last).expect("commit");
    if open_tail {
        for i in txs..txs + 5 {
            write(&mut engine, &mut claims, i);
        }
        engine.emit_signature().expect("signature");
        let s = engine.sync().expect("sync");
        engine.commit_up_to(s).expect("commit");
    }
    let signatures = count_signatures(&engine);
    assert!(
        engine.identity().node_key.pooled_signatures() > 0,
        "no signature of the ledger used a pooled nonce"
    );
    Built {
        engine,
        id,
        claims,
        signatures,
    }
}

fn count_signatures(engine: &Engine) -> u64 {
    let h = engine.handle();
    (1..=h.last_seqno())
        .filter(|s| {
            h.read_transaction(*s)
                .expect("read")
                .maps
                .iter()
                .any(|m| m.name == ccl_ledger::tables::SIGNATURES)
        })
        .count() as u64
}

/// Files of `dir` (recursively).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        if e.path().is_dir() {
            out.extend(files(&e.path()))
        } else {
            out.push(e.path())
        }
    }
    out.sort();
    out
}
pub mod cluster;
