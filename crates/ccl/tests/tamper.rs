//! Tamper tests: any change to committed chunks makes `ccl ledger verify` fail, naming the
//! transaction (or the missing seqnos).

mod common;

use ccl_ledger::chunk::{ChunkName, read_table};
use ccl_ledger::verify::{VerifyError, VerifyOptions, verify_ledger};
use common::*;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One ledger for all the tests: committed chunks, then an in-progress chunk with a signature.
fn pristine() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static L: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    L.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let built = build(dir.path(), 400, 25, 12 << 10, true);
        drop(built);
        let chunks = committed(&dir.path().join(ccl_engine::LEDGER_DIR));
        assert!(chunks.len() >= 4, "{chunks:?}");
        (dir, chunks)
    })
}

fn committed(ledger: &Path) -> Vec<PathBuf> {
    files(ledger)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".committed"))
        .collect()
}

/// A private copy of the pristine ledger directory.
fn copy() -> (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
    let (src, _) = pristine();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    std::fs::create_dir_all(&ledger).unwrap();
    for f in files(&src.path().join(ccl_engine::LEDGER_DIR)) {
        std::fs::copy(&f, ledger.join(f.file_name().unwrap())).unwrap();
    }
    let chunks = committed(&ledger);
    (dir, ledger, chunks)
}

fn verify(ledger: &Path) -> Result<(), VerifyError> {
    verify_ledger(ledger, &VerifyOptions::default(), &mut |_, _| {}).map(|_| ())
}

fn cli_fails_naming_a_transaction(ledger: &Path) -> String {
    let out = ccl()
        .args(["ledger", "verify"])
        .arg(ledger)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "verification passed on a tampered ledger"
    );
    assert!(
        stderr.contains("transaction"),
        "the error names no transaction: {stderr}"
    );
    stderr
}

fn name(p: &Path) -> ChunkName {
    ChunkName::parse(&p.file_name().unwrap().to_string_lossy()).unwrap()
}

#[test]
fn pristine_ledger_verifies() {
    let (_d, ledger, _) = copy();
    verify(&ledger).unwrap();
    let out = ccl()
        .args(["ledger", "verify"])
        .arg(&ledger)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn flipping_any_byte_of_a_committed_chunk_is_detected(chunk in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (_d, ledger, chunks) = copy();
        let path = &chunks[chunk.index(chunks.len())];
        let mut bytes = std::fs::read(path).unwrap();
        let at = pos.index(bytes.len());
        bytes[at] ^= 1 << bit;
        std::fs::write(path, &bytes).unwrap();
        let err = verify(&ledger).expect_err("a flipped byte went unnoticed");
        let n = name(path);
        let seqno = err.seqno.expect("the error names a seqno");
        prop_assert!(seqno >= n.start, "error at {seqno} before the chunk {n:?}: {err}");
    }
}

#[test]
fn truncated_committed_chunk_is_detected() {
    for cut in [1usize, 4, 100, 2000] {
        let (_d, ledger, chunks) = copy();
        let p = &chunks[1];
        let b = std::fs::read(p).unwrap();
        std::fs::write(p, &b[..b.len() - cut]).unwrap();
        cli_fails_naming_a_transaction(&ledger);
    }
}

#[test]
fn removed_chunk_is_detected() {
    let (_d, ledger, chunks) = copy();
    std::fs::remove_file(&chunks[2]).unwrap();
    let err = cli_fails_naming_a_transaction(&ledger);
    assert!(err.contains("missing"), "{err}");
    // Removing the first chunk too.
    let (_d, ledger, chunks) = copy();
    std::fs::remove_file(&chunks[0]).unwrap();
    cli_fails_naming_a_transaction(&ledger);
}

#[test]
fn duplicated_chunk_is_detected() {
    let (_d, ledger, chunks) = copy();
    std::fs::copy(&chunks[1], &chunks[2]).unwrap();
    let err = cli_fails_naming_a_transaction(&ledger);
    let n = name(&chunks[2]);
    assert!(
        err.contains(&format!("seqno {}", n.start)) || err.contains(&format!(".{} ", n.start)),
        "{err}"
    );
    // A second copy of a chunk under an overlapping name.
    let (_d, ledger, chunks) = copy();
    let n = name(&chunks[1]);
    let dup = ledger.join(format!(
        "ledger_{}-{}.committed",
        n.start + 1,
        n.end.unwrap()
    ));
    std::fs::copy(&chunks[1], dup).unwrap();
    cli_fails_naming_a_transaction(&ledger);
}

#[test]
fn reordered_chunks_are_detected() {
    let (_d, ledger, chunks) = copy();
    let a = std::fs::read(&chunks[1]).unwrap();
    let b = std::fs::read(&chunks[2]).unwrap();
    std::fs::write(&chunks[1], b).unwrap();
    std::fs::write(&chunks[2], a).unwrap();
    cli_fails_naming_a_transaction(&ledger);
}

#[test]
fn swapped_entries_are_detected() {
    let (_d, ledger, chunks) = copy();
    let p = &chunks[1];
    let mut bytes = std::fs::read(p).unwrap();
    let table = read_table(&bytes).unwrap().unwrap();
    let end = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let bounds: Vec<(usize, usize)> = table
        .iter()
        .enumerate()
        .map(|(i, &s)| (s as usize, table.get(i + 1).map_or(end, |&e| e as usize)))
        .collect();
    // Two entries of the same length, so the positions table still fits.
    let (i, j) = (0..bounds.len())
        .flat_map(|i| (i + 1..bounds.len()).map(move |j| (i, j)))
        .find(|&(i, j)| bounds[i].1 - bounds[i].0 == bounds[j].1 - bounds[j].0)
        .expect("two entries of the same length");
    let (a, b) = (bounds[i], bounds[j]);
    let ea = bytes[a.0..a.1].to_vec();
    let eb = bytes[b.0..b.1].to_vec();
    bytes[a.0..a.1].copy_from_slice(&eb);
    bytes[b.0..b.1].copy_from_slice(&ea);
    std::fs::write(p, &bytes).unwrap();
    let err = cli_fails_naming_a_transaction(&ledger);
    let expected = name(p).start + i as u64;
    assert!(
        err.contains(&format!(".{expected} ")) || err.contains(&format!("seqno {expected}")),
        "{err}"
    );
}

#[test]
fn ledger_of_another_service_is_refused() {
    let (d, ledger, _) = copy();
    let other = ccl_engine::Identity::generate(&[]).unwrap();
    let cert = d.path().join("other.pem");
    std::fs::write(&cert, other.service_cert.pem()).unwrap();
    let out = ccl()
        .args(["ledger", "verify", "--service-cert"])
        .arg(&cert)
        .arg(&ledger)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another service"));
}

#[test]
fn bad_arguments_fail_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let out = ccl()
        .args(["ledger", "verify"])
        .arg(d.path().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error:"));
    let out = ccl()
        .args(["ledger", "verify"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an empty directory is not a valid ledger"
    );
    let junk = d.path().join("cert.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let out = ccl()
        .args(["ledger", "verify", "--service-cert"])
        .arg(&junk)
        .arg(d.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = ccl()
        .args(["receipt", "verify"])
        .arg(&junk)
        .arg("--service-cert")
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
