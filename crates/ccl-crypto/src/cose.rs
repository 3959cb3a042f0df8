//! COSE Sign1 (RFC 9052) messages: CCF's root signatures and governance requests.

use crate::keys::{SigningKey, VerifyingKey};
use crate::{CryptoError, Result};
use coset::{CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};

pub use ciborium::Value;
pub use coset::Label;

/// Signs `payload` into a tagged COSE Sign1. `kid` goes in the protected header with the
/// algorithm of the key's curve; `extra` adds further protected header parameters. With
/// `detached`, the payload is left out of the message (nil) but still signed.
pub fn sign1(
    key: &SigningKey,
    kid: &[u8],
    extra: Vec<(Label, Value)>,
    payload: &[u8],
    detached: bool,
) -> Result<Vec<u8>> {
    let mut header = HeaderBuilder::new()
        .algorithm(key.curve().cose_algorithm())
        .key_id(kid.to_vec())
        .build();
    header.rest = extra;
    let builder = CoseSign1Builder::new().protected(header);
    let msg = if detached {
        builder
            .create_detached_signature(payload, b"", |tbs| key.sign_raw(tbs))
            .build()
    } else {
        builder
            .payload(payload.to_vec())
            .create_signature(b"", |tbs| key.sign_raw(tbs))
            .build()
    };
    msg.to_tagged_vec()
        .map_err(|e| CryptoError::InvalidCose(e.to_string()))
}

/// A parsed COSE Sign1 message (tagged or untagged).
#[derive(Clone, Debug)]
pub struct Sign1 {
    msg: CoseSign1,
}

impl Sign1 {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let msg = CoseSign1::from_tagged_slice(bytes)
            .or_else(|_| CoseSign1::from_slice(bytes))
            .map_err(|e| CryptoError::InvalidCose(e.to_string()))?;
        Ok(Sign1 { msg })
    }

    pub fn protected(&self) -> &coset::Header {
        &self.msg.protected.header
    }

    pub fn payload(&self) -> Option<&[u8]> {
        self.msg.payload.as_deref()
    }

    /// The signature bytes.
    pub fn signature(&self) -> &[u8] {
        &self.msg.signature
    }

    pub fn kid(&self) -> &[u8] {
        &self.msg.protected.header.key_id
    }

    /// A protected header parameter with a text label (e.g. `ccf.gov.msg.type`).
    pub fn text_header(&self, name: &str) -> Option<&Value> {
        self.protected()
            .rest
            .iter()
            .find(|(l, _)| matches!(l, Label::Text(t) if t == name))
            .map(|(_, v)| v)
    }

    /// A protected header parameter with an integer label.
    pub fn int_header(&self, label: i64) -> Option<&Value> {
        self.protected()
            .rest
            .iter()
            .find(|(l, _)| matches!(l, Label::Int(i) if *i == label))
            .map(|(_, v)| v)
    }

    /// Verifies the signature with `key`. The algorithm in the protected header must be the one of
    /// the key's curve. `detached_payload` is used when the message carries none.
    pub fn verify(&self, key: &VerifyingKey, detached_payload: Option<&[u8]>) -> Result<()> {
        let expected = coset::Algorithm::Assigned(key.curve().cose_algorithm());
        if self.protected().alg.as_ref() != Some(&expected) {
            return Err(CryptoError::InvalidCose(format!(
                "algorithm {:?} does not match the {:?} key",
                self.protected().alg,
                key.curve()
            )));
        }
        let check = |sig: &[u8], tbs: &[u8]| key.verify_raw(tbs, sig);
        match (&self.msg.payload, detached_payload) {
            (Some(_), _) => self.msg.verify_signature(b"", check),
            (None, Some(p)) => self.msg.verify_detached_signature(p, b"", check),
            (None, None) => Err(CryptoError::InvalidCose("no payload to verify".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Curve;

    #[test]
    fn attached_and_detached_round_trip() {
        for curve in [Curve::P256, Curve::P384] {
            let key = SigningKey::generate(curve).unwrap();
            let vk = key.verifying_key();
            let extra = vec![
                (
                    Label::Text("ccf.gov.msg.type".into()),
                    Value::Text("proposal".into()),
                ),
                (Label::Int(395), Value::Integer(2.into())),
            ];
            let m = sign1(&key, b"kid", extra.clone(), b"payload", false).unwrap();
            let p = Sign1::parse(&m).unwrap();
            assert_eq!(p.payload(), Some(&b"payload"[..]));
            assert_eq!(p.kid(), b"kid");
            assert_eq!(
                p.text_header("ccf.gov.msg.type"),
                Some(&Value::Text("proposal".into()))
            );
            assert_eq!(p.int_header(395), Some(&Value::Integer(2.into())));
            p.verify(&vk, None).unwrap();

            let d = sign1(&key, b"kid", extra, b"root", true).unwrap();
            let p = Sign1::parse(&d).unwrap();
            assert_eq!(p.payload(), None);
            p.verify(&vk, Some(b"root")).unwrap();
            assert!(p.verify(&vk, Some(b"toor")).is_err());
            assert!(p.verify(&vk, None).is_err());
            let other = SigningKey::generate(curve).unwrap().verifying_key();
            assert!(p.verify(&other, Some(b"root")).is_err());
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Sign1::parse(b"").is_err());
        assert!(Sign1::parse(b"\xd2\x84").is_err());
        assert!(Sign1::parse(&[0xff; 40]).is_err());
    }
}
