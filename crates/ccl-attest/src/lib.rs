//! Attestation evidence a node presents when it joins, in CCF's `quote_info` shape:
//! `{"format": "Insecure_Virtual" | "AMD_SEV_SNP_v1", "quote": base64, "endorsements": base64,
//! "uvm_endorsements"?: base64, "endorsed_tcb"?: hex}` (CCF's `include/ccf/ds/quote_info.h`).
//!
//! **Virtual platform** (`Insecure_Virtual`, for development and tests: nothing is signed by
//! hardware, so it proves nothing against a hostile host): the quote is the JSON text
//! `{"host_data": hex, "measurement": hex, "report_data": base64}`, the encodings of CCF's virtual
//! quotes (`src/pal/quote_generation.h`). The report data is the SHA-256 of the node's public key
//! (DER SubjectPublicKeyInfo), as CCF binds it (`verify_quoted_node_public_key`), which ties the
//! evidence to the key the node will be trusted with. ccl's measurement is the SHA-256 of the
//! node's binary and its host data what the node chooses (ccl-node: SHA-256 of its
//! configuration); CCF instead writes a fixed measurement string and puts the binary's hash in
//! the host data, so a quote from a CCF virtual node is refused here as malformed. Report data
//! written as 64 hex digits (ccl before it followed CCF's base64) is still accepted.
//!
//! **AMD SEV-SNP** (`AMD_SEV_SNP_v1`): the quote is the 1184-byte attestation report, the
//! endorsements the VCEK certificate chain (PEM). The report is size-checked and its fields can be
//! read ([`SnpReport`]); verification of its signature chain is not implemented yet, so
//! SEV-SNP evidence is refused with [`AttestError::Unsupported`], never accepted.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest quote accepted (an SEV-SNP report is 1184 bytes, a virtual quote about 200).
pub const MAX_QUOTE_SIZE: usize = 16 << 10;
/// Largest endorsements accepted (a VCEK chain in PEM is about 6 KiB).
pub const MAX_ENDORSEMENTS_SIZE: usize = 64 << 10;
/// Largest UVM endorsements accepted (a COSE Sign1 with its certificate chain).
pub const MAX_UVM_ENDORSEMENTS_SIZE: usize = 64 << 10;
/// Longest `endorsed_tcb` accepted (hex of an 8-byte TCB version: 16 digits).
pub const MAX_ENDORSED_TCB_LEN: usize = 64;
/// Largest `quote_info` JSON text [`QuoteInfo::from_json`] reads.
pub const MAX_QUOTE_INFO_JSON: usize = 256 << 10;
/// Size of an AMD SEV-SNP attestation report.
pub const SEV_SNP_REPORT_SIZE: usize = 1184;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    #[error("malformed quote_info JSON: {0}")]
    Json(String),
    #[error("{0} is not valid base64")]
    Base64(&'static str),
    #[error("{what} larger than {max} bytes")]
    TooLarge { what: &'static str, max: usize },
    #[error("malformed evidence: {0}")]
    Malformed(String),
    #[error("the evidence does not bind the node's public key")]
    KeyNotBound,
    #[error("measurement {0} is not allowed to join")]
    Measurement(String),
    #[error("host data {0} is not allowed to join")]
    HostData(String),
    #[error("virtual (insecure) attestation is not accepted by this service")]
    VirtualNotAllowed,
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// The platform that produced the evidence (CCF's `QuoteFormat` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    #[serde(rename = "Insecure_Virtual")]
    InsecureVirtual,
    #[serde(rename = "AMD_SEV_SNP_v1")]
    AmdSevSnpV1,
}

impl Format {
    /// CCF's name of the format.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::InsecureVirtual => "Insecure_Virtual",
            Format::AmdSevSnpV1 => "AMD_SEV_SNP_v1",
        }
    }
}

/// CCF's `quote_info`. Its JSON form carries the byte fields as base64; decoding checks the size
/// limits (before decoding) and refuses malformed base64, so a deserialized `QuoteInfo` is within
/// them. A value built in code is checked again by [`verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawQuoteInfo", into = "RawQuoteInfo")]
pub struct QuoteInfo {
    pub format: Format,
    pub quote: Vec<u8>,
    pub endorsements: Vec<u8>,
    /// SEV-SNP on Azure Container Instances: the UVM endorsements (COSE Sign1).
    pub uvm_endorsements: Option<Vec<u8>>,
    /// The TCB version the endorsements are for (hex), when the host supplied them.
    pub endorsed_tcb: Option<String>,
}

/// The JSON form of [`QuoteInfo`], field for field as CCF writes it.
#[derive(Serialize, Deserialize)]
struct RawQuoteInfo {
    format: Format,
    quote: String,
    /// Required by CCF; accepted missing (empty), as virtual quotes have none.
    #[serde(default)]
    endorsements: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uvm_endorsements: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endorsed_tcb: Option<String>,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes `s`, refusing before decoding anything that would exceed `max` bytes.
fn unb64(s: &str, what: &'static str, max: usize) -> Result<Vec<u8>, AttestError> {
    if s.len() > max.div_ceil(3) * 4 {
        return Err(AttestError::TooLarge { what, max });
    }
    let out = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| AttestError::Base64(what))?;
    if out.len() > max {
        return Err(AttestError::TooLarge { what, max });
    }
    Ok(out)
}

fn check_endorsed_tcb(tcb: &str) -> Result<(), AttestError> {
    if tcb.len() > MAX_ENDORSED_TCB_LEN {
        return Err(AttestError::TooLarge {
            what: "endorsed_tcb",
            max: MAX_ENDORSED_TCB_LEN,
        });
    }
    if !tcb.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AttestError::Malformed("endorsed_tcb is not hex".into()));
    }
    Ok(())
}

impl TryFrom<RawQuoteInfo> for QuoteInfo {
    type Error = AttestError;

    fn try_from(raw: RawQuoteInfo) -> Result<Self, AttestError> {
        if let Some(tcb) = &raw.endorsed_tcb {
            check_endorsed_tcb(tcb)?;
        }
        Ok(QuoteInfo {
            format: raw.format,
            quote: unb64(&raw.quote, "quote", MAX_QUOTE_SIZE)?,
            endorsements: unb64(&raw.endorsements, "endorsements", MAX_ENDORSEMENTS_SIZE)?,
            uvm_endorsements: raw
                .uvm_endorsements
                .as_deref()
                .map(|s| unb64(s, "uvm_endorsements", MAX_UVM_ENDORSEMENTS_SIZE))
                .transpose()?,
            endorsed_tcb: raw.endorsed_tcb,
        })
    }
}

impl From<QuoteInfo> for RawQuoteInfo {
    fn from(q: QuoteInfo) -> Self {
        RawQuoteInfo {
            format: q.format,
            quote: b64(&q.quote),
            endorsements: b64(&q.endorsements),
            uvm_endorsements: q.uvm_endorsements.as_deref().map(b64),
            endorsed_tcb: q.endorsed_tcb,
        }
    }
}

impl QuoteInfo {
    /// Parses a `quote_info` JSON text, with typed errors: [`AttestError::Json`] (not JSON, a
    /// missing field, an unknown format), [`AttestError::Base64`], [`AttestError::TooLarge`].
    pub fn from_json(text: &[u8]) -> Result<Self, AttestError> {
        if text.len() > MAX_QUOTE_INFO_JSON {
            return Err(AttestError::TooLarge {
                what: "quote_info",
                max: MAX_QUOTE_INFO_JSON,
            });
        }
        let raw: RawQuoteInfo =
            serde_json::from_slice(text).map_err(|e| AttestError::Json(e.to_string()))?;
        Self::try_from(raw)
    }

    /// The JSON text of the `quote_info` (the same as its serde form).
    pub fn to_json(&self) -> String {
        let mut o = serde_json::Map::new();
        o.insert("format".into(), self.format.as_str().into());
        o.insert("quote".into(), b64(&self.quote).into());
        o.insert("endorsements".into(), b64(&self.endorsements).into());
        if let Some(u) = &self.uvm_endorsements {
            o.insert("uvm_endorsements".into(), b64(u).into());
        }
        if let Some(t) = &self.endorsed_tcb {
            o.insert("endorsed_tcb".into(), t.clone().into());
        }
        serde_json::Value::Object(o).to_string()
    }

    /// Checks the size limits (a `QuoteInfo` built in code has not been through decoding).
    fn check_sizes(&self) -> Result<(), AttestError> {
        let over = |len: usize, what, max| {
            if len > max {
                Err(AttestError::TooLarge { what, max })
            } else {
                Ok(())
            }
        };
        over(self.quote.len(), "quote", MAX_QUOTE_SIZE)?;
        over(
            self.endorsements.len(),
            "endorsements",
            MAX_ENDORSEMENTS_SIZE,
        )?;
        if let Some(u) = &self.uvm_endorsements {
            over(u.len(), "uvm_endorsements", MAX_UVM_ENDORSEMENTS_SIZE)?;
        }
        if let Some(t) = &self.endorsed_tcb {
            check_endorsed_tcb(t)?;
        }
        Ok(())
    }
}

/// The virtual platform's quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualEvidence {
    /// SHA-256 of the node's binary.
    pub measurement: [u8; 32],
    /// SHA-256 of the node's public key (DER SubjectPublicKeyInfo).
    pub report_data: [u8; 32],
    /// What the host vouches for (ccl-node: SHA-256 of the node's configuration).
    pub host_data: [u8; 32],
}

/// The virtual quote's JSON fields.
#[derive(Deserialize)]
struct RawVirtual {
    measurement: String,
    report_data: String,
    host_data: String,
}

fn hex32(s: &str, what: &str) -> Result<[u8; 32], AttestError> {
    if s.len() != 64 {
        return Err(AttestError::Malformed(format!(
            "{what} must be 64 hex digits (a SHA-256), found {} characters",
            s.len()
        )));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| AttestError::Malformed(format!("{what} is not hex")))?;
    Ok(out)
}

impl VirtualEvidence {
    /// The quote bytes (JSON text, CCF's encodings: report data in base64, the others hex).
    pub fn to_quote_bytes(&self) -> Vec<u8> {
        serde_json::json!({
            "measurement": hex::encode(self.measurement),
            "report_data": b64(&self.report_data),
            "host_data": hex::encode(self.host_data),
        })
        .to_string()
        .into_bytes()
    }
}

/// SHA-256 of a binary: the virtual platform's measurement. The caller reads its own executable.
pub fn measurement_of_file(bytes: &[u8]) -> [u8; 32] {
    ccl_crypto::sha256(bytes)
}

/// Report data binding a node's public key (DER SubjectPublicKeyInfo): its SHA-256, as CCF binds
/// it (in the first 32 of the 64 bytes of an SEV-SNP report's report data).
pub fn report_data_for_key(spki_der: &[u8]) -> [u8; 32] {
    ccl_crypto::sha256(spki_der)
}

/// Virtual-platform evidence for the node whose public key is `node_public_key_spki_der`.
pub fn virtual_quote(
    measurement: [u8; 32],
    host_data: [u8; 32],
    node_public_key_spki_der: &[u8],
) -> QuoteInfo {
    let evidence = VirtualEvidence {
        measurement,
        report_data: report_data_for_key(node_public_key_spki_der),
        host_data,
    };
    QuoteInfo {
        format: Format::InsecureVirtual,
        quote: evidence.to_quote_bytes(),
        endorsements: Vec::new(),
        uvm_endorsements: None,
        endorsed_tcb: None,
    }
}

/// Parses a virtual quote.
pub fn parse_virtual(quote: &[u8]) -> Result<VirtualEvidence, AttestError> {
    if quote.len() > MAX_QUOTE_SIZE {
        return Err(AttestError::TooLarge {
            what: "quote",
            max: MAX_QUOTE_SIZE,
        });
    }
    let raw: RawVirtual = serde_json::from_slice(quote)
        .map_err(|e| AttestError::Malformed(format!("virtual quote: {e}")))?;
    // Base64 (CCF's encoding: 44 characters for 32 bytes) or hex (64 digits: ccl's first form).
    let report_data = if raw.report_data.len() == 64 {
        hex32(&raw.report_data, "report_data")?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(&raw.report_data)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| AttestError::Malformed("report_data is not 32 bytes in base64".into()))?
    };
    Ok(VirtualEvidence {
        measurement: hex32(&raw.measurement, "measurement")?,
        report_data,
        host_data: hex32(&raw.host_data, "host_data")?,
    })
}

/// Fields of an AMD SEV-SNP attestation report (SEV-SNP firmware ABI specification, table
/// ATTESTATION_REPORT; the layout of CCF's `snp::Attestation`), read **without** checking its
/// signature: nothing here can be trusted before the VCEK signature and chain are verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnpReport {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub vmpl: u32,
    /// 1: ECDSA P-384 with SHA-384.
    pub signature_algo: u32,
    /// CCF: SHA-256 of the node's public key, then 32 zero bytes.
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub chip_id: [u8; 64],
}

impl SnpReport {
    /// Reads the fields of a report of exactly [`SEV_SNP_REPORT_SIZE`] bytes.
    pub fn parse(report: &[u8]) -> Result<Self, AttestError> {
        if report.len() != SEV_SNP_REPORT_SIZE {
            return Err(AttestError::Malformed(format!(
                "an SEV-SNP report has {SEV_SNP_REPORT_SIZE} bytes, this one {}",
                report.len()
            )));
        }
        fn bytes<const N: usize>(r: &[u8], at: usize) -> Result<[u8; N], AttestError> {
            r.get(at..at + N)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| AttestError::Malformed("SEV-SNP report too short".into()))
        }
        let u32_at = |at| bytes::<4>(report, at).map(u32::from_le_bytes);
        Ok(SnpReport {
            version: u32_at(0x00)?,
            guest_svn: u32_at(0x04)?,
            policy: u64::from_le_bytes(bytes::<8>(report, 0x08)?),
            vmpl: u32_at(0x30)?,
            signature_algo: u32_at(0x34)?,
            report_data: bytes::<64>(report, 0x50)?,
            measurement: bytes::<48>(report, 0x90)?,
            host_data: bytes::<32>(report, 0xC0)?,
            chip_id: bytes::<64>(report, 0x1A0)?,
        })
    }
}

/// What joining nodes must show.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Measurements allowed to join (empty: none).
    pub accepted_measurements: Vec<[u8; 32]>,
    /// Host data allowed to join (empty: any).
    pub accepted_host_data: Vec<[u8; 32]>,
    /// Whether virtual (insecure) evidence is accepted at all.
    pub allow_virtual: bool,
}

/// What verified evidence says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub format: Format,
    pub measurement: [u8; 32],
    pub host_data: [u8; 32],
}

/// Checks `quote` against the node's public key (DER SubjectPublicKeyInfo) and `policy`.
pub fn verify(
    quote: &QuoteInfo,
    node_public_key_spki_der: &[u8],
    policy: &Policy,
) -> Result<Verified, AttestError> {
    quote.check_sizes()?;
    match quote.format {
        Format::InsecureVirtual => {
            if !policy.allow_virtual {
                return Err(AttestError::VirtualNotAllowed);
            }
            let e = parse_virtual(&quote.quote)?;
            if e.report_data != report_data_for_key(node_public_key_spki_der) {
                return Err(AttestError::KeyNotBound);
            }
            if !policy.accepted_measurements.contains(&e.measurement) {
                return Err(AttestError::Measurement(hex::encode(e.measurement)));
            }
            if !policy.accepted_host_data.is_empty()
                && !policy.accepted_host_data.contains(&e.host_data)
            {
                return Err(AttestError::HostData(hex::encode(e.host_data)));
            }
            Ok(Verified {
                format: Format::InsecureVirtual,
                measurement: e.measurement,
                host_data: e.host_data,
            })
        }
        Format::AmdSevSnpV1 => {
            SnpReport::parse(&quote.quote)?;
            Err(AttestError::Unsupported(
                "AMD SEV-SNP report verification (VCEK chain to AMD's root key, report \
                 signature, TCB and policy checks) arrives with SEV-SNP platform support; until \
                 then SEV-SNP evidence is refused"
                    .into(),
            ))
        }
    }
}

/// Base64 of bytes, as quote_info carries them.
pub fn to_base64(b: &[u8]) -> String {
    b64(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccl_crypto::{Curve, SigningKey};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn policy(m: [u8; 32]) -> Policy {
        Policy {
            accepted_measurements: vec![m],
            accepted_host_data: vec![],
            allow_virtual: true,
        }
    }

    fn node_spki() -> Vec<u8> {
        SigningKey::generate(Curve::P384)
            .unwrap()
            .verifying_key()
            .spki_der()
    }

    #[test]
    fn virtual_quote_round_trips_and_verifies() {
        let spki = node_spki();
        let m = measurement_of_file(b"ccl binary");
        let q = virtual_quote(m, [7; 32], &spki);
        // Through JSON and back, as it travels.
        let q = QuoteInfo::from_json(q.to_json().as_bytes()).unwrap();
        let v = verify(&q, &spki, &policy(m)).unwrap();
        assert_eq!(
            v,
            Verified {
                format: Format::InsecureVirtual,
                measurement: m,
                host_data: [7; 32]
            }
        );
        let e = parse_virtual(&q.quote).unwrap();
        assert_eq!(e.report_data, ccl_crypto::sha256(&spki));
        assert_eq!(e.measurement, m);
        assert_eq!(parse_virtual(&e.to_quote_bytes()).unwrap(), e);
    }

    #[test]
    fn evidence_for_another_key_is_refused() {
        let spki = node_spki();
        let m = measurement_of_file(b"ccl binary");
        let q = virtual_quote(m, [7; 32], &spki);
        assert_eq!(
            verify(&q, &node_spki(), &policy(m)),
            Err(AttestError::KeyNotBound)
        );
        assert_eq!(
            verify(&q, &spki[..spki.len() - 1], &policy(m)),
            Err(AttestError::KeyNotBound)
        );
    }

    #[test]
    fn policy_is_enforced() {
        let spki = node_spki();
        let m = measurement_of_file(b"ccl binary");
        let q = virtual_quote(m, [7; 32], &spki);
        assert_eq!(
            verify(&q, &spki, &policy([1; 32])),
            Err(AttestError::Measurement(hex::encode(m)))
        );
        assert!(matches!(
            verify(
                &q,
                &spki,
                &Policy {
                    allow_virtual: true,
                    ..Policy::default()
                }
            ),
            Err(AttestError::Measurement(_))
        ));
        let mut p = policy(m);
        p.accepted_measurements.insert(0, [9; 32]);
        p.accepted_host_data = vec![[8; 32]];
        assert_eq!(
            verify(&q, &spki, &p),
            Err(AttestError::HostData(hex::encode([7u8; 32])))
        );
        p.accepted_host_data = vec![[8; 32], [7; 32]];
        assert!(verify(&q, &spki, &p).is_ok());
        p.allow_virtual = false;
        assert_eq!(verify(&q, &spki, &p), Err(AttestError::VirtualNotAllowed));
        assert_eq!(
            verify(&q, &spki, &Policy::default()),
            Err(AttestError::VirtualNotAllowed),
            "the default policy accepts nothing"
        );
    }

    #[test]
    fn quote_info_json_has_ccf_field_names() {
        let spki = node_spki();
        let q = virtual_quote([1; 32], [2; 32], &spki);
        for j in [
            serde_json::to_value(&q).unwrap(),
            serde_json::from_str::<Value>(&q.to_json()).unwrap(),
        ] {
            let keys: Vec<&str> = j.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            assert_eq!(keys, ["endorsements", "format", "quote"]);
            assert_eq!(j["format"], "Insecure_Virtual");
            assert_eq!(j["endorsements"], "");
            // The quote: base64 of the JSON text with CCF's virtual quote fields and encodings.
            let quote = base64::engine::general_purpose::STANDARD
                .decode(j["quote"].as_str().unwrap())
                .unwrap();
            let v: Value = serde_json::from_slice(&quote).unwrap();
            let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            assert_eq!(keys, ["host_data", "measurement", "report_data"]);
            assert_eq!(v["measurement"], hex::encode([1u8; 32]));
            assert_eq!(v["host_data"], hex::encode([2u8; 32]));
            assert_eq!(v["report_data"], to_base64(&ccl_crypto::sha256(&spki)));
            assert_eq!(serde_json::from_value::<QuoteInfo>(j).unwrap(), q);
        }
        // SEV-SNP, with CCF's optional fields.
        let snp = QuoteInfo {
            format: Format::AmdSevSnpV1,
            quote: vec![0; SEV_SNP_REPORT_SIZE],
            endorsements: b"-----BEGIN CERTIFICATE-----".to_vec(),
            uvm_endorsements: Some(vec![0xd2, 0x84]),
            endorsed_tcb: Some("d315000000000004".into()),
        };
        let j = serde_json::to_value(&snp).unwrap();
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "endorsed_tcb",
                "endorsements",
                "format",
                "quote",
                "uvm_endorsements"
            ]
        );
        assert_eq!(j["format"], "AMD_SEV_SNP_v1");
        assert_eq!(j["uvm_endorsements"], "0oQ=");
        assert_eq!(j, serde_json::from_str::<Value>(&snp.to_json()).unwrap());
        assert_eq!(QuoteInfo::from_json(snp.to_json().as_bytes()).unwrap(), snp);
        // Endorsements may be missing (virtual quotes have none).
        let q2 = QuoteInfo::from_json(
            json!({"format": "Insecure_Virtual", "quote": to_base64(&q.quote)})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(q2, q);
    }

    #[test]
    fn ccf_virtual_quote_encodings() {
        let spki = node_spki();
        let hash = ccl_crypto::sha256(&spki);
        // As CCF's quote_generation.h writes it (report_data in base64), with a ccl measurement.
        let ccf_style = json!({
            "host_data": hex::encode([3u8; 32]),
            "measurement": hex::encode([4u8; 32]),
            "report_data": to_base64(&hash),
        });
        let e = parse_virtual(ccf_style.to_string().as_bytes()).unwrap();
        assert_eq!(
            (e.measurement, e.report_data, e.host_data),
            ([4; 32], hash, [3; 32])
        );
        // Report data in hex, as ccl wrote it before: still accepted.
        let legacy = json!({
            "host_data": hex::encode([3u8; 32]),
            "measurement": hex::encode([4u8; 32]),
            "report_data": hex::encode(hash),
        });
        assert_eq!(parse_virtual(legacy.to_string().as_bytes()).unwrap(), e);
        // CCF's own virtual measurement is a fixed string, not a ccl measurement.
        let ccf_node = json!({
            "host_data": hex::encode([3u8; 32]),
            "measurement": "Insecure hard-coded virtual measurement v1",
            "report_data": to_base64(&hash),
        });
        assert!(matches!(
            parse_virtual(ccf_node.to_string().as_bytes()),
            Err(AttestError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_quote_info_gives_typed_errors() {
        let json_err = |t: &str| QuoteInfo::from_json(t.as_bytes());
        assert!(matches!(json_err("not json"), Err(AttestError::Json(_))));
        assert!(matches!(json_err("[]"), Err(AttestError::Json(_))));
        assert!(matches!(
            json_err(r#"{"quote":""}"#),
            Err(AttestError::Json(_))
        ));
        assert!(matches!(
            json_err(r#"{"format":"OE_SGX_v1","quote":"","endorsements":""}"#),
            Err(AttestError::Json(_))
        ));
        assert!(matches!(
            json_err(r#"{"format":"Insecure_Virtual","quote":5}"#),
            Err(AttestError::Json(_))
        ));
        assert_eq!(
            json_err(r#"{"format":"Insecure_Virtual","quote":"!!"}"#),
            Err(AttestError::Base64("quote"))
        );
        assert_eq!(
            json_err(r#"{"format":"Insecure_Virtual","quote":"","endorsements":"AAA"}"#),
            Err(AttestError::Base64("endorsements"))
        );
        assert_eq!(
            json_err(r#"{"format":"Insecure_Virtual","quote":"","uvm_endorsements":"*"}"#),
            Err(AttestError::Base64("uvm_endorsements"))
        );
        assert!(matches!(
            json_err(r#"{"format":"Insecure_Virtual","quote":"","endorsed_tcb":"xyz"}"#),
            Err(AttestError::Malformed(_))
        ));
        // Oversize: refused before decoding, and by the decoded size.
        let big = to_base64(&vec![0u8; MAX_QUOTE_SIZE + 1]);
        let text = json!({"format": "Insecure_Virtual", "quote": big}).to_string();
        assert_eq!(
            QuoteInfo::from_json(text.as_bytes()),
            Err(AttestError::TooLarge {
                what: "quote",
                max: MAX_QUOTE_SIZE
            })
        );
        let at_limit = to_base64(&vec![0u8; MAX_QUOTE_SIZE]);
        let text = json!({"format": "AMD_SEV_SNP_v1", "quote": at_limit}).to_string();
        assert_eq!(
            QuoteInfo::from_json(text.as_bytes()).unwrap().quote.len(),
            MAX_QUOTE_SIZE
        );
        let big = to_base64(&vec![0u8; MAX_ENDORSEMENTS_SIZE + 1]);
        let text =
            json!({"format": "AMD_SEV_SNP_v1", "quote": "", "endorsements": big}).to_string();
        assert!(matches!(
            QuoteInfo::from_json(text.as_bytes()),
            Err(AttestError::TooLarge {
                what: "endorsements",
                ..
            })
        ));
        assert!(matches!(
            QuoteInfo::from_json(&vec![b' '; MAX_QUOTE_INFO_JSON + 1]),
            Err(AttestError::TooLarge {
                what: "quote_info",
                ..
            })
        ));
        // Through plain serde too (a join request embeds it): the limits hold, with the message.
        let big = to_base64(&vec![0u8; MAX_QUOTE_SIZE + 1]);
        let err = serde_json::from_value::<QuoteInfo>(
            json!({"format": "Insecure_Virtual", "quote": big}),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("quote larger than 16384 bytes"),
            "{err}"
        );
        // Built in code: verify checks the limits.
        let big = QuoteInfo {
            format: Format::InsecureVirtual,
            quote: vec![b'x'; MAX_QUOTE_SIZE + 1],
            endorsements: vec![],
            uvm_endorsements: None,
            endorsed_tcb: None,
        };
        assert_eq!(
            verify(&big, b"k", &policy([1; 32])),
            Err(AttestError::TooLarge {
                what: "quote",
                max: MAX_QUOTE_SIZE
            })
        );
    }

    #[test]
    fn malformed_virtual_quotes_are_refused() {
        let spki = node_spki();
        let h = hex::encode([5u8; 32]);
        let rd = to_base64(&ccl_crypto::sha256(&spki));
        for bad in [
            json!({}),
            json!([]),
            json!({"measurement": h, "host_data": h}),
            json!({"measurement": h, "host_data": h, "report_data": 7}),
            json!({"measurement": &h[2..], "host_data": h, "report_data": rd}),
            json!({"measurement": h.replace('5', "g"), "host_data": h, "report_data": rd}),
            json!({"measurement": h, "host_data": h, "report_data": to_base64(&[0; 31])}),
            json!({"measurement": h, "host_data": "", "report_data": rd}),
        ] {
            let q = QuoteInfo {
                format: Format::InsecureVirtual,
                quote: bad.to_string().into_bytes(),
                endorsements: vec![],
                uvm_endorsements: None,
                endorsed_tcb: None,
            };
            assert!(
                matches!(
                    verify(&q, &spki, &policy([5; 32])),
                    Err(AttestError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn sev_snp_is_parsed_but_not_accepted() {
        let mut report = vec![0u8; SEV_SNP_REPORT_SIZE];
        report[0..4].copy_from_slice(&3u32.to_le_bytes());
        report[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        report[0x50..0x70].copy_from_slice(&[0xAA; 32]);
        report[0x90..0xC0].copy_from_slice(&[0xBB; 48]);
        report[0xC0..0xE0].copy_from_slice(&[0xCC; 32]);
        report[0x1A0..0x1E0].copy_from_slice(&[0xDD; 64]);
        let r = SnpReport::parse(&report).unwrap();
        assert_eq!((r.version, r.signature_algo, r.vmpl), (3, 1, 0));
        assert_eq!(&r.report_data[..32], &[0xAA; 32]);
        assert_eq!(r.report_data[32..], [0; 32]);
        assert_eq!(r.measurement, [0xBB; 48]);
        assert_eq!(r.host_data, [0xCC; 32]);
        assert_eq!(r.chip_id, [0xDD; 64]);
        let snp = QuoteInfo::from_json(
            json!({"format": "AMD_SEV_SNP_v1", "quote": to_base64(&report), "endorsements": ""})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let mut p = policy([1; 32]);
        p.allow_virtual = false;
        let err = verify(&snp, b"k", &p).unwrap_err();
        assert!(matches!(err, AttestError::Unsupported(_)));
        assert!(err.to_string().contains("AMD SEV-SNP"));
        for len in [0, 10, SEV_SNP_REPORT_SIZE - 1, SEV_SNP_REPORT_SIZE + 1] {
            let q = QuoteInfo {
                quote: vec![0; len],
                ..snp.clone()
            };
            assert!(matches!(
                verify(&q, b"k", &p),
                Err(AttestError::Malformed(_))
            ));
        }
    }

    proptest! {
        #[test]
        fn random_quotes_are_refused_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..1400),
            snp in any::<bool>(),
        ) {
            let q = QuoteInfo {
                format: if snp { Format::AmdSevSnpV1 } else { Format::InsecureVirtual },
                quote: bytes.clone(),
                endorsements: bytes.clone(),
                uvm_endorsements: None,
                endorsed_tcb: None,
            };
            prop_assert!(verify(&q, b"k", &policy([1; 32])).is_err());
            let _ = parse_virtual(&bytes);
            let _ = SnpReport::parse(&bytes);
        }

        #[test]
        fn random_quote_info_text_is_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = QuoteInfo::from_json(&bytes);
            let _ = serde_json::from_slice::<QuoteInfo>(&bytes);
        }

        #[test]
        fn random_field_strings_give_typed_errors(
            quote in "[A-Za-z0-9+/=!*]{0,80}",
            endorsements in "[A-Za-z0-9+/=]{0,40}",
            tcb in proptest::option::of("[0-9a-fxyz]{0,80}"),
        ) {
            let mut j = json!({"format": "Insecure_Virtual", "quote": quote, "endorsements": endorsements});
            if let Some(t) = tcb {
                j["endorsed_tcb"] = t.into();
            }
            match QuoteInfo::from_json(j.to_string().as_bytes()) {
                Ok(q) => {
                    prop_assert!(q.quote.len() <= MAX_QUOTE_SIZE);
                    prop_assert!(verify(&q, b"k", &policy([1; 32])).is_err());
                }
                Err(e) => prop_assert!(matches!(
                    e,
                    AttestError::Base64(_) | AttestError::TooLarge { .. } | AttestError::Malformed(_)
                ), "{e:?}"),
            }
        }
    }
}
