//! Ledger secrets: the AES-256-GCM key of private maps, and the commit secret behind commit
//! evidence. A ledger may have several secrets over its life (rekeys); each applies from a seqno on.

use crate::txid::TxId;
use ccl_crypto::aead::AesGcmKey;
use ccl_crypto::{Digest32, HmacKey, sha256};
use zeroize::Zeroizing;

/// Length of a ledger secret.
pub const LEDGER_SECRET_LEN: usize = 32;

/// One ledger secret and the keys derived from it. `Debug` never shows the secret.
pub struct LedgerSecret {
    raw: Zeroizing<[u8; LEDGER_SECRET_LEN]>,
    aead: AesGcmKey,
    commit: HmacKey,
}

impl std::fmt::Debug for LedgerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerSecret(..)")
    }
}

impl LedgerSecret {
    pub fn from_bytes(raw: [u8; LEDGER_SECRET_LEN]) -> Self {
        let raw = Zeroizing::new(raw);
        // CCF: commit_secret = HMAC-SHA256(ledger secret, "Commit S").
        let commit_secret = Zeroizing::new(ccl_crypto::hash::hmac_sha256(&raw[..], b"Commit S"));
        LedgerSecret {
            aead: AesGcmKey::new(&raw),
            commit: HmacKey::new(&commit_secret[..]),
            raw,
        }
    }

    /// A fresh random secret.
    pub fn generate() -> ccl_crypto::Result<Self> {
        Ok(Self::from_bytes(ccl_crypto::random_array()?))
    }

    /// The raw secret (to wrap it for another node or for recovery; never log it).
    pub fn raw(&self) -> &[u8; LEDGER_SECRET_LEN] {
        &self.raw
    }

    /// The key that encrypts private maps.
    pub fn aead(&self) -> &AesGcmKey {
        &self.aead
    }

    /// The commit evidence of a transaction: `ce:{view}.{seqno}:{hex(HMAC(commit_secret, "{view}.{seqno}"))}`.
    /// Only holders of the ledger secret can produce it, so a receipt carrying it proves the
    /// transaction was committed and not rolled back.
    pub fn commit_evidence(&self, txid: TxId) -> String {
        let label = txid.to_string();
        let nonce = self.commit.sign(label.as_bytes());
        let mut s = String::with_capacity(4 + label.len() + 64);
        s.push_str("ce:");
        s.push_str(&label);
        s.push(':');
        let mut hexed = [0u8; 64];
        hex::encode_to_slice(nonce, &mut hexed).expect("64 hex digits for 32 bytes");
        s.push_str(std::str::from_utf8(&hexed).expect("hex is ASCII"));
        s
    }

    /// SHA-256 of the commit evidence: what the entry's public domain and the Merkle leaf hold.
    pub fn commit_evidence_digest(&self, txid: TxId) -> Digest32 {
        sha256(self.commit_evidence(txid).as_bytes())
    }
}

/// The ledger secrets of a service, each valid from a seqno on (ascending).
#[derive(Debug, Default)]
pub struct LedgerSecrets {
    secrets: Vec<(u64, LedgerSecret)>,
}

impl LedgerSecrets {
    pub fn new(first: LedgerSecret) -> Self {
        LedgerSecrets {
            secrets: vec![(1, first)],
        }
    }

    /// Adds a secret that applies from `from_seqno` on (a rekey).
    pub fn push(&mut self, from_seqno: u64, secret: LedgerSecret) {
        assert!(
            self.secrets.last().is_none_or(|(s, _)| *s < from_seqno),
            "ledger secrets must be added in seqno order"
        );
        self.secrets.push((from_seqno, secret));
    }

    /// Adds a secret that applies from `from_seqno` on, in order, replacing one that applied
    /// from the same seqno (the ledger's copy wins over a sealed one). Returns whether it changed
    /// anything.
    pub fn insert(&mut self, from_seqno: u64, secret: LedgerSecret) -> bool {
        let i = self.secrets.partition_point(|(s, _)| *s < from_seqno);
        match self.secrets.get(i) {
            Some((s, k)) if *s == from_seqno => {
                if k.raw() == secret.raw() {
                    return false;
                }
                self.secrets[i].1 = secret;
            }
            _ => self.secrets.insert(i, (from_seqno, secret)),
        }
        true
    }

    /// The seqno the newest secret applies from.
    pub fn latest_from(&self) -> Option<u64> {
        self.secrets.last().map(|(s, _)| *s)
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// A copy (secrets are not `Clone`, so that copies are deliberate).
    pub fn duplicate(&self) -> LedgerSecrets {
        LedgerSecrets {
            secrets: self
                .secrets
                .iter()
                .map(|(s, k)| (*s, LedgerSecret::from_bytes(*k.raw())))
                .collect(),
        }
    }

    /// The secret that applies at `seqno`.
    pub fn for_seqno(&self, seqno: u64) -> Option<&LedgerSecret> {
        let i = self.secrets.partition_point(|(s, _)| *s <= seqno);
        i.checked_sub(1).map(|i| &self.secrets[i].1)
    }

    /// The newest secret, used for new transactions.
    pub fn latest(&self) -> Option<&LedgerSecret> {
        self.secrets.last().map(|(_, s)| s)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &LedgerSecret)> {
        self.secrets.iter().map(|(s, k)| (*s, k))
    }

    /// Drops secrets that apply only after `seqno` (rollback of an uncommitted rekey).
    pub fn truncate_after(&mut self, seqno: u64) {
        self.secrets.retain(|(s, _)| *s <= seqno);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_evidence_shape_and_determinism() {
        let s = LedgerSecret::from_bytes([5u8; 32]);
        let ce = s.commit_evidence(TxId::new(2, 15));
        assert!(ce.starts_with("ce:2.15:"));
        assert_eq!(ce.len(), "ce:2.15:".len() + 64);
        assert_eq!(
            ce,
            LedgerSecret::from_bytes([5u8; 32]).commit_evidence(TxId::new(2, 15))
        );
        assert_ne!(
            ce,
            LedgerSecret::from_bytes([6u8; 32]).commit_evidence(TxId::new(2, 15))
        );
        assert_ne!(ce, s.commit_evidence(TxId::new(3, 15)));
        assert_eq!(
            s.commit_evidence_digest(TxId::new(2, 15)),
            sha256(ce.as_bytes())
        );
        assert!(!format!("{s:?}").contains("05"));
    }

    #[test]
    fn secrets_apply_by_seqno() {
        let mut all = LedgerSecrets::new(LedgerSecret::from_bytes([1u8; 32]));
        all.push(10, LedgerSecret::from_bytes([2u8; 32]));
        assert_eq!(all.for_seqno(9).unwrap().raw(), &[1u8; 32]);
        assert_eq!(all.for_seqno(10).unwrap().raw(), &[2u8; 32]);
        assert_eq!(all.latest().unwrap().raw(), &[2u8; 32]);
        assert!(all.for_seqno(0).is_none());
        all.truncate_after(9);
        assert_eq!(all.latest().unwrap().raw(), &[1u8; 32]);
        assert!(all.insert(20, LedgerSecret::from_bytes([3u8; 32])));
        assert!(all.insert(10, LedgerSecret::from_bytes([2u8; 32])));
        assert!(!all.insert(10, LedgerSecret::from_bytes([2u8; 32])));
        assert!(all.insert(10, LedgerSecret::from_bytes([4u8; 32])));
        assert_eq!(all.for_seqno(15).unwrap().raw(), &[4u8; 32]);
        assert_eq!(all.latest_from(), Some(20));
        assert_eq!(all.duplicate().len(), 3);
    }
}
