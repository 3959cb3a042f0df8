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
