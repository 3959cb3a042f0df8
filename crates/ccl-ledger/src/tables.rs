//! Names and JSON shapes of the internal and governance maps that CCF's ledger validator reads.
//! Keeping every piece of service state in maps of the store means that replaying the ledger is a
//! complete audit.

use serde::{Deserialize, Serialize};

/// Root signatures by the node: key [`SINGLETON_KEY`], value [`PrimarySignature`] JSON.
pub const SIGNATURES: &str = "public:ccf.internal.signatures";
/// Root signatures by the service key: key [`SINGLETON_KEY`], value a JSON string holding the
/// base64 of a COSE Sign1 with detached payload (the root).
pub const COSE_SIGNATURES: &str = "public:ccf.internal.cose_signatures";
/// The Merkle tree's frontier at the signature: key [`SINGLETON_KEY`], value
/// [`crate::merkle::Frontier::to_bytes`].
pub const TREE: &str = "public:ccf.internal.tree";
/// Snapshot evidence: key [`SINGLETON_KEY`], value [`SnapshotEvidence`] JSON.
pub const SNAPSHOT_EVIDENCE: &str = "public:ccf.internal.snapshot_evidence";
/// Nodes: key node id (hex), value [`NodeInfo`] JSON.
pub const NODES: &str = "public:ccf.gov.nodes.info";
/// Node certificates endorsed by the service: key node id, value PEM.
pub const ENDORSED_CERTIFICATES: &str = "public:ccf.gov.nodes.endorsed_certificates";
/// The service: key [`SINGLETON_KEY`], value [`ServiceInfo`] JSON.
pub const SERVICE_INFO: &str = "public:ccf.gov.service.info";

/// Ledger secrets handed to nodes through the ledger (CCF's name and shape): key
/// [`SINGLETON_KEY`], value [`LedgerSecretsForNodes`] JSON. Written by a rekey (the new secret,
/// ECIES-sealed to each Trusted node's key, applying from the next seqno) and by a recovery.
pub const ENCRYPTED_LEDGER_SECRETS: &str = "public:ccf.internal.encrypted_ledger_secrets";
/// The chain of ledger secrets (CCF's name and shape): key [`SINGLETON_KEY`], value
/// [`EncryptedLedgerSecretInfo`] JSON; each rekey records the previous secret encrypted under the
/// new one, so the latest secret recovers every older one. CCF's
/// `verify_ledger_secrets_chain.py` checks it.
pub const HISTORICAL_ENCRYPTED_LEDGER_SECRET: &str =
    "public:ccf.internal.historical_encrypted_ledger_secret";
/// Recovery shares (CCF's name and shape): key [`SINGLETON_KEY`], value [`RecoverySharesInfo`]
/// JSON.
pub const RECOVERY_SHARES: &str = "public:ccf.internal.recovery_shares";
/// The X.509 endorsements of earlier service identities by the current one, oldest first: key
/// [`SINGLETON_KEY`], value a JSON array of [`ServiceEndorsement`] (receipts'
/// `serviceEndorsements`).
pub const SERVICE_ENDORSEMENTS: &str = "public:ccl.internal.service_endorsements";

/// One earlier service identity, endorsed by its successor: a certificate for the earlier
/// service key issued by the next service key, and the last seqno the earlier service signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndorsement {
    pub cert: String,
    pub to_seqno: u64,
}

/// ECIES `info` of a ledger secret sealed to a node's key.
pub const LEDGER_SECRET_ECIES_INFO: &[u8] = b"ccl ledger secret for a node v1";

/// Base64, as CCF's JSON holds byte vectors.
mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// One ledger secret sealed to one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedLedgerSecret {
    /// Seqno the secret applies from; `None`: from the seqno after the transaction that wrote it.
    pub version: Option<u64>,
    /// ECIES to the node's key ([`LEDGER_SECRET_ECIES_INFO`]).
    #[serde(with = "b64")]
    pub encrypted_secret: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_stored_version: Option<u64>,
}

/// Node id -> the secrets sealed to it.
pub type LedgerSecretsForNodes = std::collections::BTreeMap<String, Vec<EncryptedLedgerSecret>>;

/// A ledger secret encrypted under its successor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousLedgerSecretInfo {
    /// AES-GCM blob (`tag ‖ IV ‖ ciphertext`) under the next secret.
    #[serde(with = "b64")]
    pub encrypted_data: Vec<u8>,
    /// Seqno the encrypted secret applies from.
    pub version: u64,
    /// Seqno of the previous write of this map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_stored_version: Option<u64>,
}

/// One link of the chain of ledger secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedLedgerSecretInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_ledger_secret: Option<PreviousLedgerSecretInfo>,
    /// Seqno the latest secret applies from, when it is not the one after this transaction
    /// (genesis, recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_version: Option<u64>,
}

/// The latest ledger secret, wrapped, and the shares of the wrapping key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverySharesInfo {
    /// The latest ledger secret, AES-GCM blob under the wrapping key.
    #[serde(with = "b64")]
    pub wrapped_latest_ledger_secret: Vec<u8>,
    /// Member id -> base64 of the member's share, RSA-OAEP-SHA256 to its encryption key.
    pub encrypted_shares: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_stored_version: Option<u64>,
    /// ccl: member id -> hex SHA-256 of the member's share, so that a wrong share is refused
    /// when it is submitted rather than when shares are combined.
    #[serde(default)]
    pub share_digests: std::collections::BTreeMap<String, String>,
    /// ccl: shares needed.
    #[serde(default)]
    pub threshold: usize,
}

/// Key of single-entry maps (CCF's well-known singleton key).
pub const SINGLETON_KEY: [u8; 8] = [0u8; 8];

/// A node's signature over the Merkle root of every transaction before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimarySignature {
    pub seqno: u64,
    pub view: u64,
    pub commit_seqno: u64,
    pub commit_view: u64,
    /// Signing node id (hex SHA-256 of its public key).
    pub node: String,
    /// Merkle root, hex.
    pub root: String,
    /// DER ECDSA signature over the root as a pre-hashed digest, base64.
    pub sig: String,
    /// The signing node's certificate, PEM.
    pub cert: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Pending,
    Trusted,
    Retired,
}

/// What the service records about a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub status: NodeStatus,
    /// The node's public key, PEM.
    pub public_key: String,
    /// Attestation evidence the node joined with.
    #[serde(default)]
    pub quote_info: serde_json::Value,
    /// Address other nodes and clients reach it at.
    #[serde(default)]
    pub rpc_address: String,
    #[serde(default)]
    pub node_data: serde_json::Value,
    #[serde(default)]
    pub retired_committed: bool,
    /// Seqno from which the node holds the ledger secrets.
    #[serde(default)]
    pub ledger_secret_seqno: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceStatus {
    Opening,
    Open,
    Recovering,
    WaitingForRecoveryShares,
}

/// The service's identity and status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub status: ServiceStatus,
    /// Service certificate, PEM.
    pub cert: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_service_identity_version: Option<u64>,
    #[serde(default)]
    pub recovery_count: u64,
    #[serde(default)]
    pub service_data: serde_json::Value,
    /// Transaction id at which this service identity was created.
    #[serde(default)]
    pub current_service_create_txid: String,
}

impl ServiceStatus {
    /// Whether the ledger may move from `from` to `self` (what CCF's validator accepts).
    pub fn may_follow(self, from: Option<ServiceStatus>) -> bool {
        use ServiceStatus::*;
        match (from, self) {
            (_, Opening) => true,
            (Some(a), b) if a == b => true,
            (None, _) => true,
            (Some(Opening), Open | WaitingForRecoveryShares) => true,
            (Some(Recovering), WaitingForRecoveryShares) => true,
            (Some(WaitingForRecoveryShares), Open) => true,
            (Some(Open), Recovering) => true,
            _ => false,
        }
    }
}

/// Records a snapshot in the ledger. The evidence transaction's claims digest is also the
/// snapshot's SHA-256, so the snapshot's receipt alone proves the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEvidence {
    /// SHA-256 of the snapshot entry, hex.
    pub hash: String,
    /// Seqno the snapshot captures.
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_status_transitions() {
        use ServiceStatus::*;
        assert!(Opening.may_follow(None));
        assert!(Open.may_follow(Some(Opening)));
        assert!(!Recovering.may_follow(Some(Opening)));
        assert!(!Open.may_follow(Some(Recovering)));
        assert!(Recovering.may_follow(Some(Open)));
        assert!(WaitingForRecoveryShares.may_follow(Some(Recovering)));
        assert!(Open.may_follow(Some(WaitingForRecoveryShares)));
        assert!(Opening.may_follow(Some(Open)));
    }

    #[test]
    fn json_shapes() {
        let s = ServiceInfo {
            status: ServiceStatus::Open,
            cert: "PEM".into(),
            previous_service_identity_version: None,
            recovery_count: 0,
            service_data: serde_json::Value::Null,
            current_service_create_txid: "1.1".into(),
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["status"], "Open");
        assert_eq!(j["cert"], "PEM");
        let n: NodeInfo = serde_json::from_str(r#"{"status":"Trusted","public_key":"k"}"#).unwrap();
        assert_eq!(n.status, NodeStatus::Trusted);
    }
}
