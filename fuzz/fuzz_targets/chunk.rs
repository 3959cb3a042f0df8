//! The offline verifier on an arbitrary chunk file: never panics, always answers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("ccl-fuzz-chunk-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("ledger_1-3.committed"), data);
    let _ = ccl_ledger::verify::verify_ledger(&dir, &Default::default(), &mut |_, _| {});
    let _ = ccl_ledger::chunk::parse_complete_chunk(data);
});
