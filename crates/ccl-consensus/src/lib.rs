//! Replication for ccl: Raft through openraft (pinned to one exact version), with the ledger as
//! the log.
//!
//! **The log is the ledger.** The primary executes transactions in its engine (seqnos assigned
//! there, bytes written once to its ledger) and a proposer task hands each run of new entries to
//! Raft as one [`Batch`]. Every replica writes a batch's entries, byte for byte, to its own ledger
//! chunk files ([`ccl_engine::Engine::append_replicated`]: backups apply write sets, they do not
//! re-execute). Raft's own entries — the blank entry a new leader writes, membership changes —
//! carry no transaction; a small side log (`raft/log` in the data directory) records, for every
//! Raft index, its term and either the seqnos of its batch or its membership. A batch's bytes are
//! never stored twice: the side log points into the ledger.
//!
//! **Commit (CCF's rule).** Raft commits an index once a majority has it durable; the engine then
//! commits up to the last signature transaction at or before the last seqno of that index
//! ([`ccl_engine::Engine::commit_up_to`]). A transaction is committed only once a signature
//! after it is. Entries beyond what the log holds — executed by a primary that lost its term
//! before proposing them, or an uncommitted suffix that a new leader overwrites — are rolled back
//! ([`ccl_engine::Engine::rollback`]) and never get a receipt.
//!
//! **Network.** [`net`] sends Raft's RPCs over HTTPS with the node's service-endorsed certificate
//! as client certificate, trusting only the service certificate; the node serves them at
//! [`RPC_APPEND`] and [`RPC_VOTE`] to callers that present a trusted node's certificate.

pub mod faults;
pub mod log;
pub mod net;
pub mod proposer;

pub use openraft;

use serde::{Deserialize, Serialize};
use std::fmt;

openraft::declare_raft_types!(
    /// ccl's Raft types: node ids are u64 (from CCF's hex node ids), application data is a
    /// [`Batch`] of ledger entries.
    pub TypeConfig:
        D = Batch,
        R = (),
        NodeId = u64,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Membership = openraft::Membership<u64, NodeAddr>;
pub type StoredMembership = openraft::StoredMembership<u64, NodeAddr>;

/// The id of Raft entry `index` of term `term`.
pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(openraft::CommittedLeaderId::new(term, 0), index)
}
pub type Entry = openraft::Entry<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<u64, NodeAddr>;

/// Path of the append RPC on every node.
pub const RPC_APPEND: &str = "/internal/raft/append";
/// Path of the vote RPC on every node.
pub const RPC_VOTE: &str = "/internal/raft/vote";

/// Heartbeats from the primary this often (ms). openraft also gives up on an append RPC after
/// this long, so it bounds how long a backup may take to store one RPC's entries.
pub const HEARTBEAT_INTERVAL_MS: u64 = 150;
/// A backup calls an election when it has heard nothing from the primary for openraft's leader
/// lease (the maximum below) plus its own random timeout between these (ms): 1.5–2 s after the
/// primary's last heartbeat, so that a dead primary is replaced within about 2 s. (With
/// 750–1500 ms that was 2.25–3 s, and failover often took more than 3 s.)
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 500;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 1000;
/// Most Raft entries (batches) sent in one append RPC.
pub const MAX_ENTRIES_PER_RPC: u64 = 4;
/// Most bytes of ledger entries in one batch: with [`MAX_ENTRIES_PER_RPC`] this bounds an
/// append RPC at 4 MiB (small enough to be stored well within a heartbeat interval).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Largest RPC body a node accepts.
pub const MAX_RPC_BYTES: usize = 8 << 20;
/// First pause before retrying an unreachable node; it doubles up to [`MAX_BACKOFF_MS`].
pub const MIN_BACKOFF_MS: u64 = 20;
pub const MAX_BACKOFF_MS: u64 = 500;

/// Where a node is and who it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// `host:port` of its HTTPS endpoint (clients and nodes alike).
    pub rpc_address: String,
    /// Its CCF node id: hex SHA-256 of its public key.
    pub node_id: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", short(&self.node_id), self.rpc_address)
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A run of consecutive ledger entries, as the primary executed them. Cloned whenever Raft reads
/// its log (to replicate, to apply): the entries are shared, not copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub first_seqno: u64,
    pub entries: std::sync::Arc<Vec<serde_bytes::ByteBuf>>,
}

impl Batch {
    pub fn last_seqno(&self) -> u64 {
        self.first_seqno + self.entries.len() as u64 - 1
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch[{}..={}]",
            self.first_seqno,
            self.first_seqno + self.entries.len() as u64 - 1
        )
    }
}

/// Raft's node id for a CCF node id (hex SHA-256): its first 8 bytes, big-endian.
pub fn raft_id(node_id_hex: &str) -> Option<u64> {
    let b = hex::decode(node_id_hex.get(..16)?).ok()?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// openraft's configuration with ccl's timeouts and limits.
pub fn raft_config() -> std::sync::Arc<openraft::Config> {
    let (min, max) = match faults::fixed_election_timeout() {
        Some(ms) => (ms, ms + 1),
        None => (ELECTION_TIMEOUT_MIN_MS, ELECTION_TIMEOUT_MAX_MS),
    };
    let cfg = openraft::Config {
        cluster_name: "ccl".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: min,
        election_timeout_max: max,
        max_payload_entries: MAX_ENTRIES_PER_RPC,
        // The ledger is never purged (it is the audit trail) and a joining node starts from the
        // engine's snapshot, handed over by the join protocol: Raft itself never snapshots.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        ..Default::default()
    };
    std::sync::Arc::new(cfg.validate().expect("ccl's Raft configuration is valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_come_from_node_ids() {
        let id = "00000000000000ffaaaa";
        assert_eq!(raft_id(id), Some(255));
        assert_eq!(raft_id("xyz"), None);
        assert_eq!(raft_id("0123456789abcdeg"), None);
        raft_config();
    }
}
