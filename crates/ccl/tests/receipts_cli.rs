//! `ccl receipt verify` on the real Azure Confidential Ledger receipts (crates/ccl-receipt/testdata):
//! each verifies with its service certificate; each with any one field altered fails.

mod common;

use serde_json::Value;

fn vectors() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ccl-receipt/testdata/acl-receipts.json"
    );
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn verify(dir: &std::path::Path, receipt: &Value, cert: &str) -> std::process::Output {
    let r = dir.join("r.json");
    let c = dir.join("c.pem");
    std::fs::write(&r, receipt.to_string()).unwrap();
    std::fs::write(&c, cert).unwrap();
    common::ccl()
        .args(["receipt", "verify"])
        .arg(&r)
        .arg("--service-cert")
        .arg(&c)
        .output()
        .unwrap()
}

/// Every string leaf of `v` (with its JSON pointer), except the node certificate's PEM armour.
fn string_leaves(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| string_leaves(x, format!("{path}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| string_leaves(x, format!("{path}/{i}"), out)),
        Value::String(_) => out.push(path),
        _ => {}
    }
}

fn alter(s: &str) -> String {
    // Change one character in the middle, keeping it in the same alphabet (hex, base64, PEM).
    let mut c: Vec<char> = s.chars().collect();
    let i = c.len() / 2;
    c[i] = match c[i] {
        '0' => '1',
        'a' => 'b',
        'A' => 'B',
        '\n' => ' ',
        x if x.is_ascii_digit() => '0',
        x if x.is_ascii_lowercase() => 'a',
        _ => 'A',
    };
    c.into_iter().collect()
}

#[test]
fn real_azure_receipts_pass_and_any_altered_field_fails() {
    let dir = tempfile::tempdir().unwrap();
    let v = vectors();
    let mut altered = 0;
    for case in v["valid_receipts"].as_array().unwrap() {
        let cert = v["service_certificates"][case["service_certificate"].as_str().unwrap()]
            .as_str()
            .unwrap();
        let receipt = &case["receipt"];
        let out = verify(dir.path(), receipt, cert);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut leaves = Vec::new();
        string_leaves(receipt, String::new(), &mut leaves);
        for p in leaves {
            let mut bad = receipt.clone();
            let s = bad.pointer(&p).unwrap().as_str().unwrap().to_string();
            *bad.pointer_mut(&p).unwrap() = Value::String(alter(&s));
            let out = verify(dir.path(), &bad, cert);
            assert!(!out.status.success(), "altering {p} went unnoticed");
            assert!(String::from_utf8_lossy(&out.stderr).starts_with("error:"));
            altered += 1;
        }
    }
    assert!(altered > 20, "{altered} alterations");
}
