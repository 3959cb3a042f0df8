//! Governance requests from arbitrary bytes, against a service with one member: the COSE parser,
//! the header checks and, for bodies that get that far, proposals and ballots.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const NOW: i64 = 1_800_000_000;

fn store() -> &'static ccl_store::Store {
    static STORE: OnceLock<ccl_store::Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = ccl_store::Store::new();
        let key = ccl_crypto::SigningKey::generate(ccl_crypto::Curve::P256).unwrap();
        let cert = ccl_crypto::cert::self_signed(&key, &ccl_crypto::cert::CertSpec::client("m"))
            .unwrap();
        let mut tx = store.begin();
        ccl_gov::set_constitution(&mut tx, ccl_gov::DEFAULT_CONSTITUTION).unwrap();
        ccl_gov::add_member(&mut tx, &cert.pem(), ccl_gov::MemberStatus::Active, None).unwrap();
        store.commit(tx).unwrap();
        store
    })
}

fuzz_target!(|data: &[u8]| {
    let mut tx = store().begin();
    for ty in [ccl_gov::msg::PROPOSAL, ccl_gov::msg::BALLOT, ccl_gov::msg::ACK] {
        if let Ok(s) = ccl_gov::request::verify(&mut tx, data, ty, None, NOW) {
            let _ = ccl_gov::propose(&mut tx, &s, data, &[0; 32]);
        }
    }
});
