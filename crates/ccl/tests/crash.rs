//! Crash test: a process appending under load is killed with SIGKILL at random points; on reopen
//! no acknowledged (fsynced) transaction is missing and no torn entry is accepted.

mod common;

use ccl_crypto::SigningKey;
use ccl_crypto::cert::Certificate;
use ccl_engine::{Engine, Identity};
use ccl_ledger::secrets::{LedgerSecret, LedgerSecrets};
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "CCL_CRASH_CHILD_DIR";

fn value(i: u64) -> Vec<u8> {
    format!("value-{i}-")
        .repeat(1 + (i % 13) as usize)
        .into_bytes()
}

fn save_identity(dir: &Path, id: &Identity) {
    std::fs::write(
        dir.join("node_key.pem"),
        id.node_key.to_pkcs8_pem().as_bytes(),
    )
    .unwrap();
    std::fs::write(dir.join("node_cert.pem"), id.node_cert.pem()).unwrap();
    std::fs::write(
        dir.join("service_key.pem"),
        id.service_key.to_pkcs8_pem().as_bytes(),
    )
    .unwrap();
    std::fs::write(dir.join("service_cert.pem"), id.service_cert.pem()).unwrap();
}

fn load_identity(dir: &Path) -> Identity {
    let r = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    Identity {
        node_key: SigningKey::from_pem(&r("node_key.pem")).unwrap(),
        node_cert: Certificate::from_pem(&r("node_cert.pem")).unwrap(),
        service_key: SigningKey::from_pem(&r("service_key.pem")).unwrap(),
        service_cert: Certificate::from_pem(&r("service_cert.pem")).unwrap(),
    }
}

fn open_or_create(dir: &Path) -> Engine {
    let cfg = config(50, 32 << 10);
    if dir.join("node_cert.pem").exists() {
        Engine::open(
            dir,
            cfg,
            load_identity(dir),
            LedgerSecrets::new(LedgerSecret::from_bytes(SECRET)),
        )
        .unwrap()
    } else {
        let id = Identity::generate(&[]).unwrap();
        let e = Engine::create(
            dir,
            cfg,
            id.clone(),
            LedgerSecret::from_bytes(SECRET),
            |_| Ok(()),
        )
        .unwrap();
        save_identity(dir, &id);
        e
    }
}

/// The writer, run in a child process by `sigkill_at_random_points_loses_nothing_acknowledged`.
#[test]
#[ignore = "run as a child process by the crash test"]
fn child_writer() {
    let dir = std::path::PathBuf::from(std::env::var_os(CHILD_ENV).expect("run by the crash test"));
    let mut e = open_or_create(&dir);
    let mut next = e
        .store()
        .state()
        .map("records")
        .map_or(0, |m| m.len() as u64);
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        for _ in 0..20 {
            let mut tx = e.store().begin();
            tx.put("records", &next.to_be_bytes(), &value(next))
                .unwrap();
            e.commit(tx, None).unwrap();
            e.maybe_emit_signature(Instant::now()).unwrap();
            next += 1;
        }
        let s = e.sync().unwrap();
        e.commit_up_to(s).unwrap();
        // Acknowledged: every record before `next` is durable.
        writeln!(out, "durable {next}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ std::process::id() as u64;
    let mut acked_total = 0;
    for round in 0..6 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line
                    .strip_prefix("durable ")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    let _ = tx.send(n);
                }
            }
        });
        // Let it run a random while after its first acknowledgement, then SIGKILL it.
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer acknowledges something");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(20 + seed % 300));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = rx.try_iter().last().unwrap_or(first).max(first);
        assert!(
            acked >= acked_total,
            "round {round}: acknowledgements only grow"
        );
        acked_total = acked;

        // Reopen: every acknowledged record is there, intact; the ledger verifies.
        let e = open_or_create(dir.path());
        let state = e.store().state();
        for i in 0..acked {
            let v = state.get("records", &i.to_be_bytes()).unwrap_or_else(|| {
                panic!("round {round}: record {i} of {acked} acknowledged is missing")
            });
            assert_eq!(&v.value[..], &value(i)[..], "round {round}: record {i}");
        }
        drop(e);
        let report = ccl_ledger::verify::verify_ledger(
            &dir.path().join(ccl_engine::LEDGER_DIR),
            &Default::default(),
            &mut |_, _| {},
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(report.torn_tail, 0, "the torn tail was cut on open");
    }
    assert!(acked_total > 0);
}
