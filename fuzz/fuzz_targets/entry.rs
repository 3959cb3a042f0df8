//! Ledger entries and snapshots from arbitrary bytes: parse, public domain, map sections.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((e, len)) = ccl_ledger::entry::Entry::parse(data) {
        assert!(len <= data.len());
        let _ = e.write_set_digest();
        if let Ok(pd) = e.public_domain() {
            for m in pd.map_iter() {
                if m.is_err() {
                    break;
                }
            }
            let _ = pd.leaf(&[0u8; 32]);
        }
    }
    let _ = ccl_ledger::snapshot::split_snapshot_file(data);
    let _ = ccl_ledger::entry::decode_maps(data);
});
