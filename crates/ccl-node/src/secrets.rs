//! Ledger secrets and recovery shares, written to the ledger by the transactions that change
//! them (CCF's design: everything is a map, so a replayed ledger is the complete audit).
//!
//! - **Rekey** ([`write_rekey`]): the new secret, ECIES-sealed to every Trusted node's key, in
//!   `public:ccf.internal.encrypted_ledger_secrets`; every replica (and every replay) learns its
//!   copy when it applies the entry, and uses it from the next seqno on. The previous secret,
//!   encrypted under the new one, extends the chain in
//!   `public:ccf.internal.historical_encrypted_ledger_secret`, so the latest secret recovers all.
//! - **Recovery shares** ([`issue_shares`]): a fresh wrapping key wraps the latest secret; the
//!   key is split k-of-n (Shamir) among the recovery members (Active members with an encryption
//!   key), each share RSA-OAEP-encrypted to its member, in `public:ccf.internal.recovery_shares`.
//!   Issued again at every rekey and whenever the recovery members or the threshold change.
//!
//! No secret is ever logged or written in the clear.

use ccl_crypto::aead;
use ccl_gov::{GovError, Tx};
use ccl_ledger::secrets::{LedgerSecret, LedgerSecrets};
use ccl_ledger::tables::{
    self, EncryptedLedgerSecret, EncryptedLedgerSecretInfo, LedgerSecretsForNodes, NodeInfo,
    NodeStatus, PreviousLedgerSecretInfo, RecoverySharesInfo,
};
use std::collections::BTreeMap;
use std::ops::Bound;

/// The recovery threshold: key [`THRESHOLD_KEY`], value a JSON number (the default
/// constitution's `set_recovery_threshold` writes it).
pub const RECOVERY_THRESHOLD: &str = "public:ccf.gov.recovery_threshold";
pub const THRESHOLD_KEY: &[u8] = b"threshold";
/// Most recovery members (Shamir's x coordinates are the 255 non-zero bytes).
pub const MAX_RECOVERY_MEMBERS: usize = ccl_crypto::shamir::MAX_SHARES;
/// Most nodes a rekey hands the new secret to.
pub const MAX_REKEY_NODES: usize = 10_000;

/// Who holds recovery shares, and how many are needed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// Active members with an encryption key: (member id, public key PEM), by id.
    pub members: Vec<(String, String)>,
    pub threshold: usize,
    /// Whether any member (active or not) has an encryption key.
    pub any_keys: bool,
}

impl RecoveryConfig {
    /// Whether shares can be issued: recovery members, and at least as many as the threshold.
    pub fn can_issue(&self) -> bool {
        !self.members.is_empty() && self.threshold >= 1 && self.threshold <= self.members.len()
    }
}

fn internal(e: impl std::fmt::Display) -> GovError {
    GovError::internal(e.to_string())
}

fn all(tx: &mut Tx, map: &str, limit: usize) -> Vec<(bytes::Bytes, bytes::Bytes)> {
    tx.range(map, (Bound::Unbounded, Bound::Unbounded), limit)
}

/// The recovery configuration as `tx` sees it. The threshold defaults to 1 when unset.
pub fn recovery_config(tx: &mut Tx) -> RecoveryConfig {
    let keys = all(tx, ccl_gov::maps::MEMBER_KEYS, MAX_RECOVERY_MEMBERS + 1);
    let mut members = Vec::new();
    for (id, pem) in &keys {
        let active = tx
            .get(ccl_gov::maps::MEMBER_INFO, id)
            .and_then(|v| serde_json::from_slice::<ccl_gov::MemberInfo>(&v).ok())
            .is_some_and(|i| i.status == ccl_gov::MemberStatus::Active);
        if active {
            members.push((
                String::from_utf8_lossy(id).into_owned(),
                String::from_utf8_lossy(pem).into_owned(),
            ));
        }
    }
    let threshold = tx
        .get(RECOVERY_THRESHOLD, THRESHOLD_KEY)
        .and_then(|v| serde_json::from_slice::<usize>(&v).ok())
        .unwrap_or(1);
    RecoveryConfig {
        members,
        threshold,
        any_keys: !keys.is_empty(),
    }
}

/// Writes fresh recovery shares of `latest`: a new wrapping key wraps it and is split among the
/// recovery members. Nothing is written while there are fewer recovery members than the
/// threshold.
pub fn issue_shares(tx: &mut Tx, latest: &LedgerSecret) -> Result<(), GovError> {
    let cfg = recovery_config(tx);
    if !cfg.can_issue() {
        // Not yet enough recovery members (they become Active one acknowledgement at a time);
        // the service cannot open until there are, and never goes back (see `gov::transact`).
        return Ok(());
    }
    if cfg.members.len() > MAX_RECOVERY_MEMBERS {
        return Err(GovError::bad(
            "TooManyRecoveryMembers",
            format!("at most {MAX_RECOVERY_MEMBERS} recovery members"),
        ));
    }
    let wrapping_key = zeroize::Zeroizing::new(ccl_crypto::random_array::<32>().map_err(internal)?);
    let wrapped = aead::seal_blob(&wrapping_key, latest.raw()).map_err(internal)?;
    let shares = ccl_crypto::shamir::split(&wrapping_key, cfg.members.len(), cfg.threshold)
        .map_err(internal)?;
    let mut encrypted_shares = BTreeMap::new();
    let mut share_digests = BTreeMap::new();
    for ((id, pem), share) in cfg.members.iter().zip(shares.iter()) {
        let key = ccl_crypto::oaep::EncryptionPublicKey::from_pem(pem).map_err(|e| {
            GovError::bad(
                "InvalidEncryptionKey",
                format!("member {id}'s encryption key: {e}"),
            )
        })?;
        let encrypted = key.encrypt(&share[..]).map_err(internal)?;
        encrypted_shares.insert(id.clone(), b64(&encrypted));
        share_digests.insert(id.clone(), hex::encode(ccl_crypto::sha256(&share[..])));
    }
    let previous = tx
        .get_versioned(
            tables::HISTORICAL_ENCRYPTED_LEDGER_SECRET,
            &tables::SINGLETON_KEY,
        )
        .map(|v| v.version);
    let info = RecoverySharesInfo {
        wrapped_latest_ledger_secret: wrapped,
        encrypted_shares,
        previous_secret_stored_version: previous,
        share_digests,
        threshold: cfg.threshold,
    };
    put_json(tx, tables::RECOVERY_SHARES, &info)
}

fn put_json<T: serde::Serialize>(tx: &mut Tx, map: &str, v: &T) -> Result<(), GovError> {
    let bytes = serde_json::to_vec(v).map_err(internal)?;
    tx.put(map, &tables::SINGLETON_KEY, &bytes)
        .map_err(internal)
}

pub(crate) fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A new service's chain of secrets starts at genesis: the first secret applies from seqno 1.
pub fn write_genesis(tx: &mut Tx, threshold: usize) -> Result<(), GovError> {
    put_json(
        tx,
        tables::HISTORICAL_ENCRYPTED_LEDGER_SECRET,
        &EncryptedLedgerSecretInfo {
            previous_ledger_secret: None,
            next_version: Some(1),
        },
    )?;
    tx.put(
        RECOVERY_THRESHOLD,
        THRESHOLD_KEY,
        threshold.to_string().as_bytes(),
    )
    .map_err(internal)
}

/// The Trusted nodes' ids and public keys, as `tx` sees them.
fn trusted_nodes(tx: &mut Tx) -> Result<Vec<(String, ccl_crypto::VerifyingKey)>, GovError> {
    let mut out = Vec::new();
    for (id, v) in all(tx, tables::NODES, MAX_REKEY_NODES) {
        let Ok(info) = serde_json::from_slice::<NodeInfo>(&v) else {
            continue;
        };
        if info.status != NodeStatus::Trusted {
            continue;
        }
        let key = ccl_crypto::VerifyingKey::from_pem(&info.public_key).map_err(internal)?;
        out.push((String::from_utf8_lossy(&id).into_owned(), key));
    }
    Ok(out)
}

/// Seals `secret` to each of `nodes`, applying from `version` (`None`: the next seqno).
fn seal_to_nodes(
    nodes: &[(String, ccl_crypto::VerifyingKey)],
    secret: &LedgerSecret,
    version: Option<u64>,
) -> Result<LedgerSecretsForNodes, GovError> {
    let mut out = LedgerSecretsForNodes::new();
    for (id, key) in nodes {
        let sealed =
            ccl_crypto::ecies::seal_to(key, tables::LEDGER_SECRET_ECIES_INFO, secret.raw())
                .map_err(internal)?;
        out.insert(
            id.clone(),
            vec![EncryptedLedgerSecret {
                version,
                encrypted_secret: sealed,
                previous_secret_stored_version: None,
            }],
        );
    }
    Ok(out)
}

/// A rekey: `new` is handed to every Trusted node through the ledger (the engine of each learns
/// it when it applies this transaction, and uses it from the next seqno on), the latest secret
/// of `current` joins the chain encrypted under `new`, and recovery shares of `new` are issued.
pub fn write_rekey(
    tx: &mut Tx,
    current: &LedgerSecrets,
    new: &LedgerSecret,
) -> Result<(), GovError> {
    let nodes = trusted_nodes(tx)?;
    put_json(
        tx,
        tables::ENCRYPTED_LEDGER_SECRETS,
        &seal_to_nodes(&nodes, new, None)?,
    )?;
    link_previous(tx, current, new, None)?;
    issue_shares(tx, new)
}

/// Extends the chain: the latest secret of `current`, encrypted under `new`.
fn link_previous(
    tx: &mut Tx,
    current: &LedgerSecrets,
    new: &LedgerSecret,
    next_version: Option<u64>,
) -> Result<(), GovError> {
    let (Some(previous), Some(from)) = (current.latest(), current.latest_from()) else {
        return Err(GovError::internal("no ledger secret"));
    };
    let stored = tx
        .get_versioned(
            tables::HISTORICAL_ENCRYPTED_LEDGER_SECRET,
            &tables::SINGLETON_KEY,
        )
        .map(|v| v.version);
    put_json(
        tx,
        tables::HISTORICAL_ENCRYPTED_LEDGER_SECRET,
        &EncryptedLedgerSecretInfo {
            previous_ledger_secret: Some(PreviousLedgerSecretInfo {
                encrypted_data: aead::seal_blob(new.raw(), previous.raw()).map_err(internal)?,
                version: from,
                previous_secret_stored_version: stored,
            }),
            next_version,
        },
    )
}

/// Disaster recovery, once the old secrets are back (`old`, whose latest is the last secret of
/// the old service): the recovery secret `recovery_secret` (applying from `recovery_from`, the
/// first seqno of the new service) is chained to them, handed to the node itself through the
/// ledger, and new recovery shares of it are issued.
pub fn write_recovered(
    tx: &mut Tx,
    old: &LedgerSecrets,
    recovery_secret: &LedgerSecret,
    recovery_from: u64,
) -> Result<(), GovError> {
    link_previous(tx, old, recovery_secret, Some(recovery_from))?;
    issue_shares(tx, recovery_secret)
}

/// What a submitted share must be to be accepted: the member's share digest in the latest
/// recovery shares.
pub fn check_share(info: &RecoverySharesInfo, member: &str, share: &[u8]) -> Result<(), String> {
    let Some(expected) = info.share_digests.get(member) else {
        return Err(format!("member {member} holds no recovery share"));
    };
    if share.len() != ccl_crypto::shamir::SHARE_LEN {
        return Err(format!(
            "a recovery share is {} bytes, not {}",
            ccl_crypto::shamir::SHARE_LEN,
            share.len()
        ));
    }
    let digest = hex::encode(ccl_crypto::sha256(share));
    if !ccl_crypto::hash::constant_time_eq(digest.as_bytes(), expected.as_bytes()) {
        return Err(format!("this is not member {member}'s recovery share"));
    }
    Ok(())
}

/// One link of the chain, as recovery reads it from the old ledger: the seqno of the entry that
/// wrote it, and what it holds.
#[derive(Clone, Debug)]
pub struct ChainLink {
    pub seqno: u64,
    pub info: EncryptedLedgerSecretInfo,
}

/// Recovers every ledger secret of a ledger from its latest one: `links` are all the writes of
/// the chain map, in ledger order; `latest` is the secret the recovery shares wrapped.
pub fn walk_chain(links: &[ChainLink], latest: LedgerSecret) -> Result<LedgerSecrets, String> {
    let last = links
        .last()
        .ok_or("the ledger has no chain of ledger secrets")?;
    let mut from = last.info.next_version.unwrap_or(last.seqno + 1);
    let mut found = vec![(from, latest)];
    for link in links.iter().rev() {
        let Some(prev) = &link.info.previous_ledger_secret else {
            break;
        };
        let key = found.last().map(|(_, s)| *s.raw()).ok_or("empty chain")?;
        let raw = aead::open_blob(&key, &prev.encrypted_data).map_err(|_| {
            format!(
                "the ledger secret recorded at seqno {} does not decrypt",
                link.seqno
            )
        })?;
        let raw: [u8; 32] = raw[..]
            .try_into()
            .map_err(|_| "a ledger secret of the wrong length".to_string())?;
        if prev.version >= from {
            return Err(format!(
                "the chain of secrets goes forward at seqno {}",
                link.seqno
            ));
        }
        from = prev.version;
        found.push((from, LedgerSecret::from_bytes(raw)));
    }
    let mut out = LedgerSecrets::default();
    for (from, s) in found.into_iter().rev() {
        out.push(from, s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_gives_back_every_secret_from_the_latest() {
        let s1 = LedgerSecret::from_bytes([1; 32]);
        let s2 = LedgerSecret::from_bytes([2; 32]);
        let s3 = LedgerSecret::from_bytes([3; 32]);
        let link =
            |seqno: u64, prev: &LedgerSecret, under: &LedgerSecret, version: u64| ChainLink {
                seqno,
                info: EncryptedLedgerSecretInfo {
                    previous_ledger_secret: Some(PreviousLedgerSecretInfo {
                        encrypted_data: aead::seal_blob(under.raw(), prev.raw()).unwrap(),
                        version,
                        previous_secret_stored_version: None,
                    }),
                    next_version: None,
                },
            };
        let links = vec![
            ChainLink {
                seqno: 1,
                info: EncryptedLedgerSecretInfo {
                    previous_ledger_secret: None,
                    next_version: Some(1),
                },
            },
            link(10, &s1, &s2, 1),
            link(20, &s2, &s3, 11),
        ];
        let all = walk_chain(&links, LedgerSecret::from_bytes([3; 32])).unwrap();
        assert_eq!(all.for_seqno(5).unwrap().raw(), &[1; 32]);
        assert_eq!(all.for_seqno(11).unwrap().raw(), &[2; 32]);
        assert_eq!(all.for_seqno(21).unwrap().raw(), &[3; 32]);
        assert_eq!(all.len(), 3);
        assert!(walk_chain(&links, LedgerSecret::from_bytes([4; 32])).is_err());
    }
}
