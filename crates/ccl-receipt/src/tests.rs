use super::*;
use proptest::prelude::*;

fn vectors() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/acl-receipts.json");
    serde_json::from_slice(&std::fs::read(p).expect("test data")).expect("JSON")
}

fn cases() -> Vec<(Value, String)> {
    let v = vectors();
    v["valid_receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let cert = v["service_certificates"][c["service_certificate"].as_str().unwrap()]
                .as_str()
                .unwrap()
                .to_string(); // as given (some have a leading newline), like the SDK takes it
            (c["receipt"].clone(), cert)
        })
        .collect()
}

#[test]
fn real_azure_receipts_verify() {
    let cases = cases();
    assert_eq!(cases.len(), 3);
    for (r, cert) in &cases {
        let receipt = Receipt::from_json(r).unwrap();
        receipt.verify(cert).unwrap();
        // The transaction id, when given, must be the commit evidence's.
        let ce_txid = receipt
            .leaf
            .commit_evidence
            .split(':')
            .nth(1)
            .unwrap()
            .to_string();
        let with_txid = Receipt {
            txid: Some(ce_txid.clone()),
            ..receipt.clone()
        };
        with_txid.verify(cert).unwrap();
        let wrong_txid = Receipt {
            txid: Some(format!("{ce_txid}1")),
            ..receipt.clone()
        };
        assert!(matches!(
            wrong_txid.verify(cert),
            Err(ReceiptError::TxIdMismatch { .. })
        ));
        // Wrapped in Azure's response shape.
        let wrapped = json!({"receipt": r, "state": "Ready", "transactionId": ce_txid});
        Receipt::from_json(&wrapped).unwrap().verify(cert).unwrap();
        // Both shapes round-trip and still verify.
        for shape in [receipt.to_azure_json(), receipt.to_ccf_json()] {
            let again = Receipt::from_json(&shape).unwrap();
            again.verify(cert).unwrap();
        }
    }
}

#[test]
fn receipts_do_not_verify_against_another_service() {
    let cases = cases();
    let (r0, _) = &cases[0];
    let other = &cases.iter().find(|(_, c)| c != &cases[0].1).unwrap().1;
    assert!(matches!(
        Receipt::from_json(r0).unwrap().verify(other),
        Err(ReceiptError::NotEndorsed(_))
    ));
}

/// Every alteration of one field of a real receipt must fail verification.
#[test]
fn any_altered_field_fails() {
    let all = cases();
    for (r, cert) in all.clone() {
        let other_service = all
            .iter()
            .map(|(_, c)| c)
            .find(|c| **c != cert)
            .unwrap()
            .clone();
        let good = Receipt::from_json(&r).unwrap();
        let other_node_cert = all
            .iter()
            .map(|(r, _)| Receipt::from_json(r).unwrap().cert)
            .find(|c| *c != good.cert)
            .unwrap();
        let mut variants: Vec<(String, Receipt)> = Vec::new();
        let mut v = good.clone();
        v.cert = other_node_cert;
        variants.push(("cert of another node".into(), v));
        let mut v = good.clone();
        v.leaf.write_set_digest[5] ^= 1;
        variants.push(("write set digest".into(), v));
        let mut v = good.clone();
        v.leaf.claims_digest[31] ^= 0x80;
        variants.push(("claims digest".into(), v));
        let mut v = good.clone();
        v.leaf.commit_evidence.push('0');
        variants.push(("commit evidence".into(), v));
        let mut v = good.clone();
        let ce = v.leaf.commit_evidence.clone();
        v.leaf.commit_evidence = ce.replacen("ce:", "ce:1", 1);
        variants.push(("commit evidence txid".into(), v));
        for i in 0..good.proof.len() {
            let mut v = good.clone();
            v.proof[i] = match v.proof[i] {
                ProofStep::Left(mut d) => {
                    d[0] ^= 1;
                    ProofStep::Left(d)
                }
                ProofStep::Right(mut d) => {
                    d[0] ^= 1;
                    ProofStep::Right(d)
                }
            };
            variants.push((format!("proof element {i}"), v));
            let mut v = good.clone();
            v.proof[i] = match v.proof[i] {
                ProofStep::Left(d) => ProofStep::Right(d),
                ProofStep::Right(d) => ProofStep::Left(d),
            };
            variants.push((format!("proof side {i}"), v));
            let mut v = good.clone();
            v.proof.remove(i);
            variants.push((format!("proof without element {i}"), v));
        }
        let mut v = good.clone();
        v.node_id = v.node_id.replacen(
            &v.node_id[..1],
            if &v.node_id[..1] == "0" { "1" } else { "0" },
            1,
        );
        variants.push(("node id".into(), v));
        let mut v = good.clone();
        let n = v.signature.len();
        v.signature[n - 3] ^= 0x10;
        variants.push(("signature".into(), v));
        let mut v = good.clone();
        v.cert = cert.clone(); // the service certificate instead of the node's
        variants.push(("cert".into(), v));
        let mut v = good.clone();
        v.service_endorsements.push(other_service.clone());
        variants.push(("endorsements".into(), v));
        for (what, v) in variants {
            assert_ne!(v, good);
            let err = v.verify(&cert).expect_err(&what);
            // Each alteration is caught by the check meant for it.
            let expected_ok = match &err {
                ReceiptError::BadSignature => {
                    what.starts_with("proof")
                        || what.starts_with("commit")
                        || what.ends_with("digest")
                        || what == "signature"
                }
                // The service certificate in place of the node's is "endorsed" (self-signed)
                // but has another key.
                ReceiptError::NodeIdMismatch => what == "node id" || what == "cert",
                ReceiptError::NotEndorsed(_) => what.starts_with("cert") || what == "endorsements",
                _ => false,
            };
            assert!(expected_ok, "altered {what}: unexpected error {err:?}");
            // Also through JSON, as a user would hand it over.
            assert!(
                Receipt::from_json(&v.to_azure_json())
                    .and_then(|r| r.verify(&cert))
                    .is_err(),
                "{what}"
            );
        }
    }
}

#[test]
fn claims_digests_match_the_sdk() {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/acl-application-claims.json"
    );
    let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    for k in ["ledger_entry_claims", "claim_digest_claims"] {
        let claims = ApplicationClaims::from_json(&v[k]).unwrap();
        assert_eq!(
            hex::encode(claims.digest().unwrap()),
            v["expected_claims_digest"][k].as_str().unwrap(),
            "{k}"
        );
        assert_eq!(
            ApplicationClaims::from_json(&claims.to_json()).unwrap(),
            claims
        );
    }
    // A ledger entry claim and its ClaimDigest form give the same digest.
    let le = ApplicationClaims::from_json(&v["ledger_entry_claims"]).unwrap();
    let as_digest = ApplicationClaims(le.0.iter().map(|c| c.to_claim_digest().unwrap()).collect());
    assert_eq!(as_digest.digest().unwrap(), le.digest().unwrap());
    // Any change to a claim changes the digest.
    let ApplicationClaim::LedgerEntry {
        collection_id,
        contents,
        secret_key,
        ..
    } = le.0[0].clone()
    else {
        panic!()
    };
    let d = le.digest().unwrap();
    for other in [
        ApplicationClaim::ledger_entry(&collection_id, &format!("{contents}!"), &secret_key),
        ApplicationClaim::ledger_entry("subledger:1", &contents, &secret_key),
        ApplicationClaim::ledger_entry(&collection_id, &contents, b"another key"),
    ] {
        assert_ne!(compute_claims_digest(&[other]).unwrap(), d);
    }
}

#[test]
fn verify_with_claims_checks_the_digest() {
    let (r, cert) = cases().remove(0);
    let receipt = Receipt::from_json(&r).unwrap();
    let claims = ApplicationClaims(vec![ApplicationClaim::ClaimDigest {
        protocol: "LedgerEntryV1".into(),
        value: vec![1; 32],
    }]);
    assert!(matches!(
        receipt.verify_with_claims(&cert, &claims),
        Err(ReceiptError::ClaimsMismatch { .. })
    ));
}

#[test]
fn malformed_receipts_and_claims_are_refused_with_the_field() {
    let (r, _) = cases().remove(1);
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "receipt"),
        (json!({"receipt": 5}), "receipt"),
        (json!({}), "cert"),
        (
            {
                let mut v = r.clone();
                v["proof"] = json!("x");
                v
            },
            "proof",
        ),
        (
            {
                let mut v = r.clone();
                v["proof"] = json!([{"left": "00", "right": "00"}]);
                v
            },
            "proof",
        ),
        (
            {
                let mut v = r.clone();
                v["proof"] = json!(vec![json!({"left": "00".repeat(32)}); MAX_PROOF_LEN + 1]);
                v
            },
            "proof",
        ),
        (
            {
                let mut v = r.clone();
                v["signature"] = json!("*not base64*");
                v
            },
            "signature",
        ),
        (
            {
                let mut v = r.clone();
                v["leafComponents"]["writeSetDigest"] = json!("abcd");
                v
            },
            "writeSetDigest",
        ),
        (
            {
                let mut v = r.clone();
                v["leafComponents"]["claimsDigest"] = json!(7);
                v
            },
            "claimsDigest",
        ),
        (
            {
                let mut v = r.clone();
                v["nodeId"] = json!("zz");
                v
            },
            "nodeId",
        ),
        (json!({"receipt": r.clone(), "state": "Loading"}), "state"),
        (
            json!({"receipt": r.clone(), "state": "Ready", "transactionId": "2.x"}),
            "transactionId",
        ),
        (
            json!({"receipt": r.clone(), "state": "Ready", "transactionId": 15}),
            "transactionId",
        ),
        (
            {
                let mut v = r.clone();
                v["proof"][2] = json!({"right": "00".repeat(31)});
                v
            },
            "step 2: not 32 bytes",
        ),
        (
            {
                let mut v = r.clone();
                v["serviceEndorsements"] = json!(vec!["x"; MAX_ENDORSEMENTS + 1]);
                v
            },
            "serviceEndorsements",
        ),
        (
            {
                let mut v = r.clone();
                v.as_object_mut().unwrap().remove("signature");
                v
            },
            "signature: missing",
        ),
        (
            {
                let mut v = r.clone();
                v["leafComponents"]
                    .as_object_mut()
                    .unwrap()
                    .remove("commitEvidence");
                v
            },
            "commitEvidence: missing",
        ),
    ];
    for (v, field) in cases {
        let e = Receipt::from_json(&v).expect_err(field);
        assert!(e.to_string().contains(field), "{e} should name {field}");
    }
    assert!(Receipt::from_slice(&vec![b' '; MAX_RECEIPT_JSON + 1]).is_err());
    for c in [
        json!({}),
        json!([]),
        json!([{"kind": "Other"}]),
        json!([{"kind": "LedgerEntry", "ledgerEntry": {"collectionId": "a", "contents": "b", "protocol": "LedgerEntryV1", "secretKey": "!!"}}]),
    ] {
        assert!(ApplicationClaims::from_json(&c).is_err(), "{c}");
    }
    let v2 = ApplicationClaims(vec![ApplicationClaim::LedgerEntry {
        collection_id: "a".into(),
        contents: "b".into(),
        protocol: "LedgerEntryV2".into(),
        secret_key: vec![],
    }]);
    assert!(v2.digest().is_err());
}

fn arb_receipt() -> impl Strategy<Value = Receipt> {
    (
        proptest::option::of("[0-9]{1,3}\\.[0-9]{1,6}"),
        any::<[u8; 32]>(),
        ".{0,40}",
        any::<[u8; 32]>(),
        proptest::collection::vec((any::<bool>(), any::<[u8; 32]>()), 0..20),
        proptest::collection::vec(any::<u8>(), 0..80),
        any::<[u8; 32]>(),
        any::<bool>(),
    )
        .prop_map(|(txid, ws, ce, cl, proof, sig, node, is_sig)| Receipt {
            txid,
            cert: format!("-----BEGIN CERTIFICATE-----\n{ce}\"\\\u{1}é"),
            node_id: hex::encode(node),
            signature: sig,
            proof: proof
                .into_iter()
                .map(|(l, d)| {
                    if l {
                        ProofStep::Left(d)
                    } else {
                        ProofStep::Right(d)
                    }
                })
                .collect(),
            leaf: LeafComponents {
                write_set_digest: ws,
                commit_evidence: ce,
                claims_digest: cl,
            },
            is_signature_transaction: is_sig,
            service_endorsements: if is_sig {
                vec!["E1\n".into(), "E2".into()]
            } else {
                vec![]
            },
        })
}

proptest! {
    #[test]
    fn both_shapes_round_trip(r in arb_receipt()) {
        let mut fast = String::new();
        r.write_azure_json(&mut fast);
        prop_assert_eq!(serde_json::from_str::<Value>(&fast).unwrap(), r.to_azure_json());
        let from_azure = Receipt::from_json(&r.to_azure_json()).unwrap();
        prop_assert_eq!(&from_azure, &r);
        // The serialised text parses back too.
        prop_assert_eq!(&Receipt::from_slice(fast.as_bytes()).unwrap(), &r);
        prop_assert_eq!(&Receipt::from_slice(r.to_ccf_json().to_string().as_bytes()).unwrap(), &Receipt { txid: None, ..r.clone() });
        let from_ccf = Receipt::from_json(&r.to_ccf_json()).unwrap();
        prop_assert_eq!(&from_ccf, &Receipt { txid: None, ..r.clone() });
        prop_assert_eq!(from_ccf.root(), r.root());
    }

    /// Whatever is removed or replaced in a real receipt, parsing answers (no panic).
    #[test]
    fn mutated_json_never_panics(which in 0usize..3, path in proptest::collection::vec(any::<prop::sample::Index>(), 1..4), replacement in prop_oneof![
        Just(Value::Null), Just(json!(1)), Just(json!("x")), Just(json!([])), Just(json!({})), Just(json!(true)), Just(json!([{"left": 1}]))
    ], remove in any::<bool>()) {
        let (mut v, cert) = cases().remove(which);
        let mut cur = &mut v;
        for (depth, idx) in path.iter().enumerate() {
            let last = depth + 1 == path.len();
            match cur {
                Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(idx.index(m.len())).unwrap().clone();
                    if last {
                        if remove { m.remove(&k); } else { m.insert(k, replacement.clone()); }
                        break;
                    }
                    cur = m.get_mut(&k).unwrap();
                }
                Value::Array(a) if !a.is_empty() => {
                    let i = idx.index(a.len());
                    if last {
                        if remove { a.remove(i); } else { a[i] = replacement.clone(); }
                        break;
                    }
                    cur = &mut a[i];
                }
                _ => break,
            }
        }
        if let Ok(r) = Receipt::from_json(&v) {
            let _ = r.verify(&cert);
        }
    }
}
