//! Receipts of ccl, Azure Confidential Ledger and CCF: both JSON shapes, application claims, and
//! offline verification as the Azure SDK (`azure.confidentialledger.receipt.verify_receipt`) does it.
//!
//! A receipt proves that a transaction is in the ledger of a service: its Merkle leaf
//! (`SHA-256(write_set_digest ‖ SHA-256(commit_evidence) ‖ claims_digest)`) folds with the proof
//! into a root, which a node signed (ECDSA over the root as a pre-hashed SHA-256 digest), and the
//! node's certificate is endorsed by the service certificate (directly or through
//! `service_endorsements`). Pure: no I/O.

use base64::Engine as _;
use ccl_crypto::cert::Certificate;
use ccl_crypto::hash::{Digest32, hmac_sha256, sha256, sha256_pair, sha256_parts};
use serde_json::{Map, Value, json};

/// Most proof steps a receipt may have (a tree of 2^64 leaves needs 64).
pub const MAX_PROOF_LEN: usize = 64;
/// Largest receipt or claims document accepted, in bytes.
pub const MAX_RECEIPT_JSON: usize = 1 << 20;
/// Most service endorsements in a receipt.
pub const MAX_ENDORSEMENTS: usize = 16;
/// Most application claims bound to one transaction.
pub const MAX_CLAIMS: usize = 256;

/// The only ledger entry claim protocol Azure Confidential Ledger defines.
pub const LEDGER_ENTRY_V1: &str = "LedgerEntryV1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("malformed receipt: {field}: {reason}")]
    Malformed { field: &'static str, reason: String },
    #[error("malformed application claims: {0}")]
    MalformedClaims(String),
    #[error("certificate {which}: {reason}")]
    BadCertificate { which: &'static str, reason: String },
    #[error("the node certificate is not endorsed by the service certificate{0}")]
    NotEndorsed(String),
    #[error("the node id is not the SHA-256 of the node certificate's public key")]
    NodeIdMismatch,
    #[error("the signature over the Merkle root does not verify with the node certificate")]
    BadSignature,
    #[error(
        "the receipt claims transaction {txid} but its commit evidence is for transaction {evidence}"
    )]
    TxIdMismatch { txid: String, evidence: String },
    #[error(
        "the claims digest of the application claims ({computed}) is not the receipt's ({receipt})"
    )]
    ClaimsMismatch { computed: String, receipt: String },
}

/// Base64 decoding as Python's `b64decode(s, validate=True)` does it (what the SDK uses for
/// signatures and secret keys): standard alphabet, padding required, no whitespace, non-zero
/// trailing bits tolerated.
const B64_DECODE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical),
);

fn malformed(field: &'static str, reason: impl Into<String>) -> ReceiptError {
    ReceiptError::Malformed {
        field,
        reason: reason.into(),
    }
}

/// What a transaction's Merkle leaf is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafComponents {
    pub write_set_digest: Digest32,
    pub commit_evidence: String,
    pub claims_digest: Digest32,
}

impl LeafComponents {
    pub fn leaf(&self) -> Digest32 {
        sha256_parts(&[
            &self.write_set_digest,
            &sha256(self.commit_evidence.as_bytes()),
            &self.claims_digest,
        ])
    }
}

/// One step of a proof, from the leaf up: the sibling is on the left or on the right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofStep {
    Left(Digest32),
    Right(Digest32),
}

/// Folds a proof over a leaf.
pub fn root_from_proof(leaf: &Digest32, proof: &[ProofStep]) -> Digest32 {
    proof.iter().fold(*leaf, |cur, step| match step {
        ProofStep::Left(h) => sha256_pair(h, &cur),
        ProofStep::Right(h) => sha256_pair(&cur, h),
    })
}

/// A receipt, whichever shape it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The transaction id ("view.seqno") when the receipt carries it (Azure shape).
    pub txid: Option<String>,
    /// The signing node's certificate, PEM.
    pub cert: String,
    /// Hex SHA-256 of the node's DER public key.
    pub node_id: String,
    /// DER ECDSA signature over the root.
    pub signature: Vec<u8>,
    pub proof: Vec<ProofStep>,
    pub leaf: LeafComponents,
    pub is_signature_transaction: bool,
    /// Certificates endorsing the node certificate up to the service (PEM), CCF's optional chain.
    pub service_endorsements: Vec<String>,
}

/// Whether `t` is a transaction id: `view.seqno`, two decimal numbers.
fn is_txid(t: &str) -> bool {
    let num = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    t.split_once('.').is_some_and(|(v, s)| num(v) && num(s))
}

/// The transaction id a CCF commit evidence (`ce:view.seqno:hex`) is for, if it has that form.
fn commit_evidence_txid(ce: &str) -> Option<&str> {
    ce.strip_prefix("ce:")?.split_once(':').map(|(t, _)| t)
}

/// A field of a receipt object under either its camelCase or its snake_case name.
fn field<'a>(o: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    o.get(camel).or_else(|| o.get(snake))
}

fn string<'a>(v: Option<&'a Value>, name: &'static str) -> Result<&'a str, ReceiptError> {
    match v {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(malformed(name, "not a string")),
        None => Err(malformed(name, "missing")),
    }
}

fn digest(v: Option<&Value>, name: &'static str) -> Result<Digest32, ReceiptError> {
    let s = string(v, name)?;
    let b = hex::decode(s).map_err(|_| malformed(name, "not hex"))?;
    b.try_into().map_err(|_| malformed(name, "not 32 bytes"))
}

impl Receipt {
    /// Parses a receipt in Azure Confidential Ledger's shape (`{"receipt": {...}, "state",
    /// "transactionId"}` or the inner object) or CCF's (snake_case).
    pub fn from_json(v: &Value) -> Result<Receipt, ReceiptError> {
        let top = v
            .as_object()
            .ok_or_else(|| malformed("receipt", "not a JSON object"))?;
        let (inner, txid) = match top.get("receipt") {
            Some(Value::Object(inner)) => {
                let txid = match field(top, "transactionId", "transaction_id") {
                    None => None,
                    Some(Value::String(t)) if is_txid(t) => Some(t.clone()),
                    Some(Value::String(_)) => {
                        return Err(malformed(
                            "transactionId",
                            "not a transaction id of the form view.seqno",
                        ));
                    }
                    Some(_) => return Err(malformed("transactionId", "not a string")),
                };
                if let Some(state) = top.get("state")
                    && state != "Ready"
                {
                    return Err(malformed(
                        "state",
                        format!("{state} (the receipt is not ready)"),
                    ));
                }
                (inner, txid)
            }
            Some(_) => return Err(malformed("receipt", "not a JSON object")),
            None => (top, None),
        };
        let cert = string(inner.get("cert"), "cert")?.to_string();
        let node_id = string(field(inner, "nodeId", "node_id"), "nodeId")?.to_string();
        if node_id.len() != 64 || hex::decode(&node_id).is_err() {
            return Err(malformed("nodeId", "not 32 bytes of hex"));
        }
        let signature = B64_DECODE
            .decode(string(inner.get("signature"), "signature")?)
            .map_err(|_| malformed("signature", "not base64"))?;
        let lc = match field(inner, "leafComponents", "leaf_components") {
            Some(Value::Object(o)) => o,
            Some(_) => return Err(malformed("leafComponents", "not an object")),
            None => return Err(malformed("leafComponents", "missing")),
        };
        let leaf = LeafComponents {
            write_set_digest: digest(
                field(lc, "writeSetDigest", "write_set_digest"),
                "writeSetDigest",
            )?,
            commit_evidence: string(
                field(lc, "commitEvidence", "commit_evidence"),
                "commitEvidence",
            )?
            .to_string(),
            claims_digest: digest(field(lc, "claimsDigest", "claims_digest"), "claimsDigest")?,
        };
        let steps = inner
            .get("proof")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("proof", "missing or not an array"))?;
        if steps.len() > MAX_PROOF_LEN {
            return Err(malformed(
                "proof",
                format!("{} steps, more than {MAX_PROOF_LEN}", steps.len()),
            ));
        }
        let mut proof = Vec::with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            let step_err = |reason: &str| malformed("proof", format!("step {i}: {reason}"));
            let step_digest = |v: &Value| match digest(Some(v), "proof") {
                Ok(d) => Ok(d),
                Err(ReceiptError::Malformed { reason, .. }) => Err(step_err(&reason)),
                Err(e) => Err(e),
            };
            let o = s.as_object().ok_or_else(|| step_err("not an object"))?;
            proof.push(match (o.get("left"), o.get("right"), o.len()) {
                (Some(l), None, 1) => ProofStep::Left(step_digest(l)?),
                (None, Some(r), 1) => ProofStep::Right(step_digest(r)?),
                _ => return Err(step_err("must hold exactly one of left or right")),
            });
        }
        let is_signature_transaction =
            match field(inner, "isSignatureTransaction", "is_signature_transaction") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(malformed("is_signature_transaction", "not a boolean")),
            };
        let service_endorsements = match field(inner, "serviceEndorsements", "service_endorsements")
        {
            None => Vec::new(),
            Some(Value::Array(a)) if a.len() <= MAX_ENDORSEMENTS => a
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| malformed("serviceEndorsements", "not a string"))
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Array(_)) => {
                return Err(malformed(
                    "serviceEndorsements",
                    format!("more than {MAX_ENDORSEMENTS}"),
                ));
            }
            Some(_) => return Err(malformed("serviceEndorsements", "not an array")),
        };
        Ok(Receipt {
            txid,
            cert,
            node_id,
            signature,
            proof,
            leaf,
            is_signature_transaction,
            service_endorsements,
        })
    }

    /// Parses a receipt document of at most [`MAX_RECEIPT_JSON`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Receipt, ReceiptError> {
        if bytes.len() > MAX_RECEIPT_JSON {
            return Err(malformed(
                "receipt",
                format!("larger than {MAX_RECEIPT_JSON} bytes"),
            ));
        }
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| malformed("receipt", format!("not JSON: {e}")))?;
        Self::from_json(&v)
    }

    fn proof_json(&self) -> Vec<Value> {
        self.proof
            .iter()
            .map(|p| match p {
                ProofStep::Left(d) => json!({"left": hex::encode(d)}),
                ProofStep::Right(d) => json!({"right": hex::encode(d)}),
            })
            .collect()
    }

    /// The receipt as Azure Confidential Ledger returns it from `GET /app/transactions/{id}/receipt`.
    pub fn to_azure_json(&self) -> Value {
        let mut inner = json!({
            "cert": self.cert,
            "leafComponents": {
                "claimsDigest": hex::encode(self.leaf.claims_digest),
                "commitEvidence": self.leaf.commit_evidence,
                "writeSetDigest": hex::encode(self.leaf.write_set_digest),
            },
            "nodeId": self.node_id,
            "proof": self.proof_json(),
            "signature": base64::engine::general_purpose::STANDARD.encode(&self.signature),
        });
        if !self.service_endorsements.is_empty() {
            inner["serviceEndorsements"] = json!(self.service_endorsements);
        }
        if self.is_signature_transaction {
            inner["isSignatureTransaction"] = json!(true);
        }
        let mut out = json!({"receipt": inner, "state": "Ready"});
        if let Some(t) = &self.txid {
            out["transactionId"] = json!(t);
        }
        out
    }

    /// [`Receipt::to_azure_json`] serialised, written straight into `out` (the hot path of a
    /// receipt endpoint: no intermediate JSON values).
    pub fn write_azure_json(&self, out: &mut String) {
        out.push_str("{\"receipt\":{\"cert\":");
        push_json_str(out, &self.cert);
        out.push_str(",\"leafComponents\":{\"claimsDigest\":\"");
        push_hex(out, &self.leaf.claims_digest);
        out.push_str("\",\"commitEvidence\":");
        push_json_str(out, &self.leaf.commit_evidence);
        out.push_str(",\"writeSetDigest\":\"");
        push_hex(out, &self.leaf.write_set_digest);
        out.push_str("\"},\"nodeId\":");
        push_json_str(out, &self.node_id);
        out.push_str(",\"proof\":[");
        for (i, p) in self.proof.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let (side, d) = match p {
                ProofStep::Left(d) => ("{\"left\":\"", d),
                ProofStep::Right(d) => ("{\"right\":\"", d),
            };
            out.push_str(side);
            push_hex(out, d);
            out.push_str("\"}");
        }
        out.push(']');
        if !self.service_endorsements.is_empty() {
            out.push_str(",\"serviceEndorsements\":[");
            for (i, e) in self.service_endorsements.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(out, e);
            }
            out.push(']');
        }
        if self.is_signature_transaction {
            out.push_str(",\"isSignatureTransaction\":true");
        }
        out.push_str(",\"signature\":\"");
        base64::engine::general_purpose::STANDARD.encode_string(&self.signature, out);
        out.push_str("\"},\"state\":\"Ready\"");
        if let Some(t) = &self.txid {
            out.push_str(",\"transactionId\":");
            push_json_str(out, t);
        }
        out.push('}');
    }

    /// The receipt in CCF's shape.
    pub fn to_ccf_json(&self) -> Value {
        json!({
            "cert": self.cert,
            "is_signature_transaction": self.is_signature_transaction,
            "leaf_components": {
                "claims_digest": hex::encode(self.leaf.claims_digest),
                "commit_evidence": self.leaf.commit_evidence,
                "write_set_digest": hex::encode(self.leaf.write_set_digest),
            },
            "node_id": self.node_id,
            "proof": self.proof_json(),
            "service_endorsements": self.service_endorsements,
            "signature": base64::engine::general_purpose::STANDARD.encode(&self.signature),
        })
    }

    pub fn root(&self) -> Digest32 {
        root_from_proof(&self.leaf.leaf(), &self.proof)
    }

    /// Verifies the receipt against the service certificate (PEM): node certificate endorsed by
    /// the service (through the endorsements, if any), node id = hash of the node key, signature
    /// over the root recomputed from the leaf and the proof.
    pub fn verify(&self, service_cert_pem: &str) -> Result<(), ReceiptError> {
        // Every certificate must parse and hold an EC key (P-256 or P-384), as the SDK demands.
        let load = |pem: &str, which: &'static str| {
            let bad = |e: ccl_crypto::CryptoError| ReceiptError::BadCertificate {
                which,
                reason: e.to_string(),
            };
            let cert = Certificate::from_pem(pem).map_err(bad)?;
            let key = cert.public_key().map_err(bad)?;
            Ok::<_, ReceiptError>((cert, key))
        };
        let (service, _) = load(service_cert_pem, "of the service")?;
        let (node, node_key) = load(&self.cert, "of the node")?;
        if self.service_endorsements.len() > MAX_ENDORSEMENTS {
            return Err(malformed(
                "serviceEndorsements",
                format!("more than {MAX_ENDORSEMENTS} certificates"),
            ));
        }
        // The node certificate is endorsed by the first endorsement, each endorsement by the
        // next, the last by the service certificate (just the service certificate if none).
        let mut endorsee = node.clone();
        for (i, pem) in self.service_endorsements.iter().enumerate() {
            let (e, _) = load(pem, "of a service endorsement")?;
            endorsee.verify_issued_by(&e).map_err(|_| {
                ReceiptError::NotEndorsed(format!(
                    " (service endorsement {i} did not endorse the {})",
                    if i == 0 {
                        "node certificate".to_string()
                    } else {
                        format!("service endorsement {}", i - 1)
                    }
                ))
            })?;
            endorsee = e;
        }
        endorsee.verify_issued_by(&service).map_err(|_| {
            ReceiptError::NotEndorsed(if self.service_endorsements.is_empty() {
                String::new()
            } else {
                " (the last service endorsement is not issued by the service certificate)".into()
            })
        })?;
        if !ccl_crypto::hash::constant_time_eq(
            hex::encode(node.key_id()).as_bytes(),
            self.node_id.to_ascii_lowercase().as_bytes(),
        ) {
            return Err(ReceiptError::NodeIdMismatch);
        }
        node_key
            .verify_prehashed(&self.root(), &self.signature)
            .map_err(|_| ReceiptError::BadSignature)?;
        // Not in the SDK: the transaction id shown with the receipt (unsigned) must be the one
        // the signed commit evidence names.
        if let (Some(txid), Some(evidence)) =
            (&self.txid, commit_evidence_txid(&self.leaf.commit_evidence))
            && txid != evidence
        {
            return Err(ReceiptError::TxIdMismatch {
                txid: txid.clone(),
                evidence: evidence.to_string(),
            });
        }
        Ok(())
    }

    /// [`Receipt::verify`], and the application claims' digest is the receipt's claims digest.
    pub fn verify_with_claims(
        &self,
        service_cert_pem: &str,
        claims: &ApplicationClaims,
    ) -> Result<(), ReceiptError> {
        let computed = claims.digest()?;
        if computed != self.leaf.claims_digest {
            return Err(ReceiptError::ClaimsMismatch {
                computed: hex::encode(computed),
                receipt: hex::encode(self.leaf.claims_digest),
            });
        }
        self.verify(service_cert_pem)
    }
}

/// An application claim as Azure Confidential Ledger attaches them to writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplicationClaim {
    /// The entry itself, bound through HMACs under a per-entry secret key.
    LedgerEntry {
        collection_id: String,
        contents: String,
        protocol: String,
        secret_key: Vec<u8>,
    },
    /// A digest standing for a claim (e.g. a LedgerEntry claim whose contents are withheld).
    ClaimDigest { protocol: String, value: Vec<u8> },
}

impl ApplicationClaim {
    /// The LedgerEntryV1 claim of a write.
    pub fn ledger_entry(collection_id: &str, contents: &str, secret_key: &[u8]) -> Self {
        ApplicationClaim::LedgerEntry {
            collection_id: collection_id.into(),
            contents: contents.into(),
            protocol: LEDGER_ENTRY_V1.into(),
            secret_key: secret_key.to_vec(),
        }
    }

    /// The digest of this claim (what a ClaimDigest claim stands for).
    pub fn digest(&self) -> Result<Digest32, ReceiptError> {
        match self {
            ApplicationClaim::LedgerEntry {
                collection_id,
                contents,
                protocol,
                secret_key,
            } => {
                if protocol != LEDGER_ENTRY_V1 {
                    return Err(ReceiptError::MalformedClaims(format!(
                        "unsupported ledger entry protocol {protocol:?}"
                    )));
                }
                let inner = sha256_pair(
                    &hmac_sha256(secret_key, collection_id.as_bytes()),
                    &hmac_sha256(secret_key, contents.as_bytes()),
                );
                Ok(sha256_parts(&[protocol.as_bytes(), &inner]))
            }
            ApplicationClaim::ClaimDigest { protocol, value } => {
                Ok(sha256_parts(&[protocol.as_bytes(), value]))
            }
        }
    }

    /// This claim as a `ClaimDigest` claim (hides the contents, keeps the digest).
    pub fn to_claim_digest(&self) -> Result<ApplicationClaim, ReceiptError> {
        match self {
            ApplicationClaim::LedgerEntry {
                protocol,
                collection_id,
                contents,
                secret_key,
            } => {
                let inner = sha256_pair(
                    &hmac_sha256(secret_key, collection_id.as_bytes()),
                    &hmac_sha256(secret_key, contents.as_bytes()),
                );
                Ok(ApplicationClaim::ClaimDigest {
                    protocol: protocol.clone(),
                    value: inner.to_vec(),
                })
            }
            c => Ok(c.clone()),
        }
    }

    /// The claim in the SDK's JSON shape.
    pub fn to_json(&self) -> Value {
        match self {
            ApplicationClaim::LedgerEntry {
                collection_id,
                contents,
                protocol,
                secret_key,
            } => json!({
                "kind": "LedgerEntry",
                "ledgerEntry": {
                    "collectionId": collection_id,
                    "contents": contents,
                    "protocol": protocol,
                    "secretKey": base64::engine::general_purpose::STANDARD.encode(secret_key),
                },
            }),
            ApplicationClaim::ClaimDigest { protocol, value } => json!({
                "kind": "ClaimDigest",
                "digest": {"protocol": protocol, "value": hex::encode(value)},
            }),
        }
    }

    pub fn from_json(v: &Value) -> Result<Self, ReceiptError> {
        let bad = |m: &str| ReceiptError::MalformedClaims(m.to_string());
        let o = v
            .as_object()
            .ok_or_else(|| bad("a claim is not an object"))?;
        let s = |o: &Map<String, Value>, k: &str| -> Result<String, ReceiptError> {
            o.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("{k} is missing or not a string")))
        };
        match o.get("kind").and_then(Value::as_str) {
            Some("LedgerEntry") => {
                let e = o
                    .get("ledgerEntry")
                    .and_then(Value::as_object)
                    .ok_or_else(|| bad("ledgerEntry is missing"))?;
                let secret_key = B64_DECODE
                    .decode(s(e, "secretKey")?)
                    .map_err(|_| bad("secretKey is not base64"))?;
                Ok(ApplicationClaim::LedgerEntry {
                    collection_id: s(e, "collectionId")?,
                    contents: s(e, "contents")?,
                    protocol: s(e, "protocol")?,
                    secret_key,
                })
            }
            Some("ClaimDigest") => {
                let d = o
                    .get("digest")
                    .and_then(Value::as_object)
                    .ok_or_else(|| bad("digest is missing"))?;
                let value =
                    hex::decode(s(d, "value")?).map_err(|_| bad("digest value is not hex"))?;
                Ok(ApplicationClaim::ClaimDigest {
                    protocol: s(d, "protocol")?,
                    value,
                })
            }
            Some(k) => Err(bad(&format!("unknown claim kind {k:?}"))),
            None => Err(bad("kind is missing or not a string")),
        }
    }
}

fn push_hex(out: &mut String, d: &[u8]) {
    let mut buf = [0u8; 128];
    for chunk in d.chunks(64) {
        let n = chunk.len() * 2;
        hex::encode_to_slice(chunk, &mut buf[..n]).expect("buffer fits the chunk");
        out.push_str(std::str::from_utf8(&buf[..n]).expect("hex is ASCII"));
    }
}

/// `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    let plain = s
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f);
    if plain {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string serialises"));
    }
}

/// The application claims of one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplicationClaims(pub Vec<ApplicationClaim>);

impl ApplicationClaims {
    /// Parses the JSON array the SDK takes as `application_claims`.
    pub fn from_json(v: &Value) -> Result<Self, ReceiptError> {
        let a = v
            .as_array()
            .ok_or_else(|| ReceiptError::MalformedClaims("not a JSON array".into()))?;
        if a.is_empty() || a.len() > MAX_CLAIMS {
            return Err(ReceiptError::MalformedClaims(format!(
                "between 1 and {MAX_CLAIMS} claims expected"
            )));
        }
        Ok(ApplicationClaims(
            a.iter()
                .map(ApplicationClaim::from_json)
                .collect::<Result<_, _>>()?,
        ))
    }

    pub fn to_json(&self) -> Value {
        Value::Array(self.0.iter().map(ApplicationClaim::to_json).collect())
    }

    pub fn digest(&self) -> Result<Digest32, ReceiptError> {
        let mut buf = Vec::with_capacity(4 + 32 * self.0.len());
        buf.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for c in &self.0 {
            buf.extend_from_slice(&c.digest()?);
        }
        Ok(sha256(&buf))
    }
}

/// The claims digest of `claims`, as Azure Confidential Ledger computes it.
pub fn compute_claims_digest(claims: &[ApplicationClaim]) -> Result<Digest32, ReceiptError> {
    ApplicationClaims(claims.to_vec()).digest()
}

#[cfg(test)]
mod tests;
