//! Acceptance of issue 2 by the external tools: CCF's `read_ledger.py` validates ledgers ccl
//! writes; the Azure SDK and the `ccf` package verify ccl's receipts; `ccl ledger verify` and
//! `ccl receipt verify` agree.

mod common;

use common::*;
use std::process::Command;

#[test]
fn ccf_validator_accepts_ccl_ledgers_and_sdks_accept_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let built = build(dir.path(), 3000, 100, 128 << 10, true);
    let ledger = dir.path().join(ccl_engine::LEDGER_DIR);
    let chunks: Vec<_> = files(&ledger);
    assert!(
        chunks
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".committed"))
            .count()
            >= 4,
        "{chunks:?}"
    );
    let cert_path = dir.path().join("service_cert.pem");
    std::fs::write(&cert_path, built.id.service_cert.pem()).unwrap();

    // ccl's own verifier.
    let out = ccl()
        .args(["ledger", "verify", "--json", "--service-cert"])
        .arg(&cert_path)
        .arg(&ledger)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["signatures"], built.signatures);
    assert_eq!(report["transactions"], built.engine.last_seqno());
    assert_eq!(report["unsigned_tail"], 0);

    // CCF's validator, committed chunks only (its default) and everything.
    for (args, sigs) in [
        (vec![], built.signatures - 1),
        (vec!["--uncommitted"], built.signatures),
    ] {
        let out = Command::new(python())
            .args(["-m", "ccf.read_ledger", "-q"])
            .args(&args)
            .arg(&ledger)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "read_ledger.py failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("Found {sigs} signatures")),
            "{stdout}"
        );
    }

    // Receipts: every transaction with claims and a sample of the others.
    let h = built.engine.handle();
    let mut cases = Vec::new();
    let with_claims: std::collections::HashMap<u64, &serde_json::Value> =
        built.claims.iter().map(|(s, _, j)| (*s, j)).collect();
    for s in 1..h.committed_seqno() {
        if !(with_claims.contains_key(&s) || s % 37 == 0) {
            continue;
        }
        let r = h.receipt(s).unwrap();
        let receipt = r.to_receipt();
        cases.push(serde_json::json!({
            "receipt": receipt.to_azure_json(),
            "ccf": receipt.to_ccf_json(),
            "claims": with_claims.get(&s).copied(),
        }));
    }
    assert!(cases.len() > 400);
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&cases).unwrap()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/check_receipts.py"
    );
    let out = Command::new(python())
        .arg(script)
        .arg(&cases_path)
        .arg(&cert_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("checked {}", cases.len())));

    // `ccl receipt verify` on a few of them, with and without claims, and altered.
    for case in cases.iter().step_by(40) {
        let rp = dir.path().join("receipt.json");
        std::fs::write(&rp, case["receipt"].to_string()).unwrap();
        let mut cmd = ccl();
        cmd.args(["receipt", "verify"])
            .arg(&rp)
            .arg("--service-cert")
            .arg(&cert_path);
        if !case["claims"].is_null() {
            let cp = dir.path().join("claims.json");
            std::fs::write(&cp, case["claims"].to_string()).unwrap();
            cmd.arg("--claims").arg(&cp);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut bad = case["ccf"].clone();
        bad["node_id"] = serde_json::json!("00".repeat(32));
        std::fs::write(&rp, bad.to_string()).unwrap();
        let out = ccl()
            .args(["receipt", "verify"])
            .arg(&rp)
            .arg("--service-cert")
            .arg(&cert_path)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}

#[test]
fn private_plaintext_reaches_no_ledger_or_snapshot_file() {
    let dir = tempfile::tempdir().unwrap();
    let id = ccl_engine::Identity::generate(&["localhost".into()]).unwrap();
    let mut cfg = config(50, 32 << 10);
    cfg.snapshot_interval_txs = 200;
    let mut e = ccl_engine::Engine::create(
        dir.path(),
        cfg,
        id,
        ccl_ledger::secrets::LedgerSecret::from_bytes(SECRET),
        |_| Ok(()),
    )
    .unwrap();
    for i in 0..1000u32 {
        let mut tx = e.store().begin();
        tx.put(
            "public:plain",
            &i.to_be_bytes(),
            format!("VISIBLE-{i}").as_bytes(),
        )
        .unwrap();
        tx.put(
            "medical.records",
            &i.to_be_bytes(),
            format!("PATIENT-DIAGNOSIS-{i}").as_bytes(),
        )
        .unwrap();
        e.commit(tx, None).unwrap();
        e.maybe_emit_signature(std::time::Instant::now()).unwrap();
        if i % 100 == 99 {
            let s = e.sync().unwrap();
            e.commit_up_to(s).unwrap();
        }
    }
    let s = e.finish().unwrap();
    e.commit_up_to(s).unwrap();
    let all = files(dir.path());
    assert!(
        all.iter()
            .any(|p| p.to_string_lossy().contains("snapshot_")),
        "snapshots were written: {all:?}"
    );
    let mut visible = 0;
    for p in &all {
        let b = std::fs::read(p).unwrap();
        assert!(
            !b.windows(17).any(|w| w == b"PATIENT-DIAGNOSIS"),
            "plaintext of a private map in {}",
            p.display()
        );
        visible += b.windows(8).filter(|w| w == b"VISIBLE-").count();
    }
    assert!(
        visible >= 1000,
        "public values are in the clear (the scan works)"
    );
}
