//! Receipts and application claims from arbitrary JSON text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ccl_receipt::Receipt::from_slice(data) {
        let again = ccl_receipt::Receipt::from_json(&r.to_azure_json()).expect("own output parses");
        assert_eq!(again.root(), r.root());
        let _ = r.verify("not a certificate");
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(c) = ccl_receipt::ApplicationClaims::from_json(&v) {
            let _ = c.digest();
        }
    }
});
