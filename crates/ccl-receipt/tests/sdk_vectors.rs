//! Synthetic receipts and claims checked with the Azure SDK when generated
//! (testdata/gen_sdk_vectors.py): endorsement chains, non-zero claims digests, right-hand proof
//! steps, P-384 node keys, several claims per transaction.

use ccl_receipt::{
    ApplicationClaim, ApplicationClaims, ProofStep, Receipt, ReceiptError, compute_claims_digest,
};
use serde_json::{Value, json};

fn vectors() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/sdk-vectors.json");
    serde_json::from_slice(&std::fs::read(p).expect("test data")).expect("JSON")
}

struct Case {
    name: String,
    receipt: Receipt,
    valid_with: String,
    invalid_with: Vec<String>,
    claims: Option<ApplicationClaims>,
}

fn cases(v: &Value) -> Vec<Case> {
    let certs = &v["service_certificates"];
    let cert = |k: &Value| certs[k.as_str().unwrap()].as_str().unwrap().to_string();
    v["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            receipt: Receipt::from_json(&c["receipt"]).unwrap(),
            valid_with: cert(&c["sdk_valid_with"]),
            invalid_with: c["sdk_invalid_with"]
                .as_array()
                .unwrap()
                .iter()
                .map(cert)
                .collect(),
            claims: c
                .get("claims")
                .map(|c| ApplicationClaims::from_json(c).unwrap()),
        })
        .collect()
}

#[test]
fn what_the_sdk_accepts_verifies_and_what_it_refuses_does_not() {
    let v = vectors();
    let cases = cases(&v);
    assert_eq!(cases.len(), 4);
    assert!(
        cases
            .iter()
            .any(|c| c.receipt.service_endorsements.len() == 2)
    );
    assert!(cases.iter().any(|c| {
        c.receipt
            .proof
            .iter()
            .any(|s| matches!(s, ProofStep::Right(_)))
    }));
    for c in &cases {
        assert!(c.receipt.txid.is_some(), "{}", c.name);
        c.receipt
            .verify(&c.valid_with)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        for other in &c.invalid_with {
            assert!(
                matches!(c.receipt.verify(other), Err(ReceiptError::NotEndorsed(_))),
                "{}",
                c.name
            );
        }
        if let Some(claims) = &c.claims {
            c.receipt.verify_with_claims(&c.valid_with, claims).unwrap();
            assert_eq!(claims.digest().unwrap(), c.receipt.leaf.claims_digest);
            // Other claims, or the claims against another service, are refused.
            let other = ApplicationClaims(vec![ApplicationClaim::ClaimDigest {
                protocol: "LedgerEntryV1".into(),
                value: vec![0; 32],
            }]);
            assert!(matches!(
                c.receipt.verify_with_claims(&c.valid_with, &other),
                Err(ReceiptError::ClaimsMismatch { .. })
            ));
            assert!(
                c.receipt
                    .verify_with_claims(&c.invalid_with[0], claims)
                    .is_err()
            );
        }
        // Both shapes round-trip and still verify.
        for shape in [c.receipt.to_azure_json(), c.receipt.to_ccf_json()] {
            Receipt::from_json(&shape)
                .unwrap()
                .verify(&c.valid_with)
                .unwrap();
        }
    }
}

#[test]
fn broken_endorsement_chains_are_refused() {
    let v = vectors();
    for c in cases(&v) {
        let n = c.receipt.service_endorsements.len();
        if n == 0 {
            continue;
        }
        let mut variants = Vec::new();
        // Without the endorsements the node certificate is not the service's.
        variants.push(Receipt {
            service_endorsements: vec![],
            ..c.receipt.clone()
        });
        // Missing the last endorsement, or the first.
        let mut r = c.receipt.clone();
        r.service_endorsements.pop();
        variants.push(r);
        let mut r = c.receipt.clone();
        r.service_endorsements.remove(0);
        variants.push(r);
        if n > 1 {
            let mut r = c.receipt.clone();
            r.service_endorsements.reverse();
            variants.push(r);
        }
        // The service certificate itself appended to the chain.
        let mut r = c.receipt.clone();
        r.service_endorsements.push(c.valid_with.clone());
        let appended_ok = r.verify(&c.valid_with).is_ok();
        for (i, r) in variants.iter().enumerate() {
            assert!(
                matches!(r.verify(&c.valid_with), Err(ReceiptError::NotEndorsed(_))),
                "{} variant {i}",
                c.name
            );
        }
        // A self-signed service certificate endorses itself, so appending it keeps the chain
        // valid (the SDK behaves the same); garbage instead of an endorsement is refused.
        assert!(appended_ok, "{}", c.name);
        let mut r = c.receipt.clone();
        r.service_endorsements[0] = "not a certificate".into();
        assert!(matches!(
            r.verify(&c.valid_with),
            Err(ReceiptError::BadCertificate { .. })
        ));
    }
}

#[test]
fn altered_synthetic_receipts_fail() {
    let v = vectors();
    for c in cases(&v) {
        let good = c.receipt;
        let mut variants: Vec<Receipt> = Vec::new();
        for i in 0..good.proof.len() {
            let mut r = good.clone();
            r.proof[i] = match r.proof[i] {
                ProofStep::Left(d) => ProofStep::Right(d),
                ProofStep::Right(d) => ProofStep::Left(d),
            };
            variants.push(r);
        }
        let mut r = good.clone();
        r.proof.push(ProofStep::Right([0; 32]));
        variants.push(r);
        let mut r = good.clone();
        r.leaf.claims_digest[0] ^= 1;
        variants.push(r);
        let mut r = good.clone();
        r.leaf.write_set_digest[31] ^= 1;
        variants.push(r);
        let mut r = good.clone();
        r.leaf.commit_evidence.pop();
        variants.push(r);
        let mut r = good.clone();
        r.txid = Some("1000.1".into());
        variants.push(r);
        let mut r = good.clone();
        r.node_id = "00".repeat(32);
        variants.push(r);
        let mut r = good.clone();
        r.signature.truncate(r.signature.len() - 1);
        variants.push(r);
        for (i, r) in variants.iter().enumerate() {
            assert!(r.verify(&c.valid_with).is_err(), "{} variant {i}", c.name);
        }
    }
}

#[test]
fn claims_digests_match_the_sdk() {
    let v = vectors();
    let vectors = v["claims"].as_array().unwrap();
    assert_eq!(vectors.len(), 3);
    for c in vectors {
        let claims = ApplicationClaims::from_json(&c["claims"]).unwrap();
        let expected = c["expected_claims_digest"].as_str().unwrap();
        assert_eq!(hex::encode(claims.digest().unwrap()), expected);
        assert_eq!(
            hex::encode(compute_claims_digest(&claims.0).unwrap()),
            expected
        );
        // to_json gives back what the SDK takes.
        assert_eq!(claims.to_json(), c["claims"]);
    }
    // The builder the service uses for writes gives the SDK's digest.
    let key = base64_decode("Jde/VvaIfyrjQ/B19P+UJCBwmcrgN7sERStoyHnYO0M=");
    let built = ApplicationClaim::ledger_entry("subledger:0", "Hello world", &key);
    assert_eq!(
        ApplicationClaims(vec![built.clone()]).to_json(),
        vectors[0]["claims"]
    );
    assert_eq!(
        hex::encode(compute_claims_digest(&[built]).unwrap()),
        vectors[0]["expected_claims_digest"].as_str().unwrap()
    );
    // Order matters.
    let mut reversed = ApplicationClaims::from_json(&vectors[1]["claims"]).unwrap();
    reversed.0.reverse();
    assert_ne!(
        hex::encode(reversed.digest().unwrap()),
        vectors[1]["expected_claims_digest"].as_str().unwrap()
    );
}

#[test]
fn claims_parsing_is_strict_with_clear_errors() {
    let le = |e: Value| json!([{"kind": "LedgerEntry", "ledgerEntry": e}]);
    let good = json!({"collectionId": "c", "contents": "x", "protocol": "LedgerEntryV1", "secretKey": "AAAA"});
    assert!(ApplicationClaims::from_json(&le(good.clone())).is_ok());
    for (bad, says) in [
        (json!([]), "between 1"),
        (json!({}), "not a JSON array"),
        (json!([1]), "not an object"),
        (json!([{"kind": 5}]), "kind"),
        (json!([{"kind": "Other"}]), "Other"),
        (json!([{"kind": "LedgerEntry"}]), "ledgerEntry"),
        (
            json!([{"kind": "ClaimDigest", "digest": {"protocol": "p"}}]),
            "value",
        ),
        (
            json!([{"kind": "ClaimDigest", "digest": {"protocol": "p", "value": "0g"}}]),
            "hex",
        ),
        (
            le(
                json!({"collectionId": 1, "contents": "x", "protocol": "LedgerEntryV1", "secretKey": ""}),
            ),
            "collectionId",
        ),
        (
            le(
                json!({"collectionId": "c", "contents": "x", "protocol": "LedgerEntryV1", "secretKey": "AAA"}),
            ),
            "secretKey",
        ),
        (
            le(json!({"collectionId": "c", "contents": "x", "protocol": "LedgerEntryV1"})),
            "secretKey",
        ),
    ] {
        let e = ApplicationClaims::from_json(&bad).expect_err(says);
        assert!(e.to_string().contains(says), "{e} should say {says}");
    }
    // An unknown ledger entry protocol parses but has no digest (as in the SDK).
    let mut v2 = good;
    v2["protocol"] = json!("LedgerEntryV2");
    let claims = ApplicationClaims::from_json(&le(v2)).unwrap();
    let e = claims.digest().unwrap_err();
    assert!(e.to_string().contains("LedgerEntryV2"), "{e}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
