//! Network faults for tests of real processes: when the environment variable
//! [`PARTITION_FILE_ENV`] names a file, this node neither sends to nor accepts node-to-node
//! traffic from the nodes listed in it (hex node ids, one per line), as if the network between
//! them were cut. The file is re-read at most every [`REREAD`]. Without the variable nothing is
//! ever blocked; a production node has no reason to set it.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const PARTITION_FILE_ENV: &str = "CCL_TEST_PARTITION_FILE";
/// Tests only: every node with this variable gets exactly this election timeout (ms), so that
/// voters time out together and split their votes (see `ccl_node::replication`'s
/// `unstick_elections`).
pub const FIXED_ELECTION_TIMEOUT_ENV: &str = "CCL_TEST_ELECTION_TIMEOUT_MS";

/// The election timeout [`FIXED_ELECTION_TIMEOUT_ENV`] fixes, if any.
pub fn fixed_election_timeout() -> Option<u64> {
    std::env::var(FIXED_ELECTION_TIMEOUT_ENV)
        .ok()?
        .parse()
        .ok()
        .filter(|ms| *ms > HEARTBEAT_FLOOR_MS)
}

/// A fixed election timeout must stay above the heartbeat interval.
const HEARTBEAT_FLOOR_MS: u64 = crate::HEARTBEAT_INTERVAL_MS;
pub const REREAD: Duration = Duration::from_millis(50);

struct Cache {
    read_at: Option<Instant>,
    blocked: BTreeSet<u64>,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    read_at: None,
    blocked: BTreeSet::new(),
});

/// Whether traffic with the node of Raft id `raft_id` is cut.
pub fn blocked(raft_id: u64) -> bool {
    let Some(path) = std::env::var_os(PARTITION_FILE_ENV) else {
        return false;
    };
    let mut c = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if c.read_at.is_none_or(|t| t.elapsed() >= REREAD) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        c.blocked = text
            .lines()
            .filter_map(|l| crate::raft_id(l.trim()))
            .collect();
        c.read_at = Some(Instant::now());
    }
    c.blocked.contains(&raft_id)
}
