//! What one simulated run shares: its parameters (all drawn from the seed), the replicas' data
//! directories and identities, the live replicas (for the checker), the history of client
//! operations and the logical clock that orders it.

use ccl_consensus::log::Replica;
use ccl_consensus::{NodeAddr, Raft};
use ccl_engine::{EngineConfig, EngineHandle, Identity};
use ccl_lincheck::Op;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// The map the workload reads and writes: key = u64 big-endian, value = u64 big-endian.
pub const MAP: &str = "public:sim.kv";
/// Every run uses this ledger secret (entries are then byte-for-byte reproducible).
pub const SECRET: [u8; 32] = [0x5e; 32];
/// Most replicas in a run.
pub const MAX_NODES: usize = 5;

/// Turmoil host name of replica `i`.
pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// Turmoil host name of client `k`.
pub fn client_name(k: usize) -> String {
    format!("c{k}")
}

/// Raft id of replica `i`.
pub fn raft_id(i: usize) -> u64 {
    i as u64 + 1
}

/// Everything about a run that the seed decides (besides the fault schedule and the clients'
/// choices, drawn from their own seeded streams).
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub keys: u64,
    /// Faults and client operations happen during this much simulated time; then the network
    /// heals, crashed replicas restart and the cluster must quiesce.
    pub workload: Duration,
    pub signature_interval_txs: u64,
    pub chunk_size: u64,
    pub snapshot_interval_txs: u64,
    /// The primary signs this often while it has unsigned transactions (simulated time).
    pub signature_every: Duration,
    /// Per replica: its election timeout (openraft draws it from `[min, max)` with an unseeded
    /// RNG, so `max = min + 1` pins it).
    pub election_timeout_ms: Vec<u64>,
    pub max_latency: Duration,
    /// Most think time of a client between two operations.
    pub think_ms: u64,
    /// Probability that a client operation is a write.
    pub write_ratio: f64,
}

impl Params {
    pub fn from_seed(seed: u64, workload_ms: u64) -> Params {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nodes = if rng.random_bool(0.25) { 5 } else { 3 };
        let base = ccl_consensus::ELECTION_TIMEOUT_MIN_MS;
        let spread = ccl_consensus::ELECTION_TIMEOUT_MAX_MS - base;
        Params {
            seed,
            nodes,
            clients: rng.random_range(2..=4),
            keys: rng.random_range(1..=3),
            workload: Duration::from_millis(workload_ms),
            signature_interval_txs: [1, 1, 2, 3, 8][rng.random_range(0..5)],
            // Where a ledger chunk ends decides what a restarted replica finds committed on disk.
            // With a size in between, it would depend on entry sizes, which vary from run to run
            // (DER signatures over Merkle roots that depend on COSE signatures' random nonces).
            // 1: every signature ends a chunk; 1 GiB: no chunk ever ends.
            chunk_size: [1, 1, 1 << 30][rng.random_range(0..3)],
            // `CCL_SIM_NO_SNAPSHOTS=1`: never (drawn all the same, to keep the other draws).
            snapshot_interval_txs: [0, 0, 10, 40][rng.random_range(0..4)]
                * u64::from(std::env::var_os("CCL_SIM_NO_SNAPSHOTS").is_none()),
            signature_every: Duration::from_millis(rng.random_range(5..=100)),
            election_timeout_ms: (0..nodes)
                .map(|_| base + rng.random_range(0..spread))
                .collect(),
            max_latency: Duration::from_millis(rng.random_range(1..=60)),
            think_ms: rng.random_range(0..=30),
            write_ratio: rng.random_range(0.3..0.7),
        }
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            signature_interval_txs: self.signature_interval_txs,
            // Signatures by time are the simulation's job (`signature_every`, on the simulated
            // clock): the engine's own timer reads the real clock.
            signature_interval: Duration::from_secs(3600),
            signature_min_interval: Duration::from_secs(3600),
            chunk_size: self.chunk_size,
            snapshot_interval_txs: self.snapshot_interval_txs,
            merkle_cache_pages: 4,
            // Threads would make the evidence's place in the ledger depend on real time.
            snapshots_in_background: false,
            // A thread per replica computing nonces would only cost CPU across 500 seeds.
            presigned_nonces: 0,
        }
    }

    /// ccl's Raft configuration (`ccl_consensus::raft_config`), with replica `i`'s election
    /// timeout pinned.
    pub fn raft_config(&self, i: usize) -> Arc<ccl_consensus::openraft::Config> {
        let mut cfg = (*ccl_consensus::raft_config()).clone();
        cfg.election_timeout_min = self.election_timeout_ms[i];
        cfg.election_timeout_max = self.election_timeout_ms[i] + 1;
        Arc::new(cfg.validate().expect("valid Raft configuration"))
    }
}

/// One service identity and a node identity per replica, endorsed by it. Generated once per
/// process: keys and certificates (their validity dates, ECDSA nonces) come from the OS, which is
/// why the run's digest leaves the genesis transaction's bytes out.
///
/// The keys are P-256, not P-384 as `Identity::generate` makes them: in the unoptimised test
/// profile a P-384 verification costs about 30 ms (its field arithmetic is inlined into
/// ccl-crypto, a workspace member built at opt-level 0) against under 1 ms for P-256, and every
/// replicated signature transaction is verified twice by every backup. The curve is not what the
/// simulation is about; `CCL_SIM_P384=1` uses P-384 all the same.
pub fn identities() -> &'static [Identity] {
    use ccl_crypto::cert::{self, CertKind, CertSpec};
    static IDS: OnceLock<Vec<Identity>> = OnceLock::new();
    IDS.get_or_init(|| {
        let curve = if std::env::var_os("CCL_SIM_P384").is_some() {
            ccl_crypto::Curve::P384
        } else {
            ccl_crypto::Curve::P256
        };
        let service_key = ccl_crypto::SigningKey::generate(curve).expect("key");
        let service_cert = cert::self_signed(
            &service_key,
            &CertSpec {
                common_name: "ccl service".into(),
                subject_alt_names: vec![],
                not_before: cert::now_unix() - 60,
                validity_days: ccl_engine::identity::DEFAULT_CERT_VALIDITY_DAYS,
                kind: CertKind::Ca,
            },
        )
        .expect("service certificate");
        (0..MAX_NODES)
            .map(|i| {
                let node_key = ccl_crypto::SigningKey::generate(curve).expect("key");
                let node_cert = Identity::endorse_node(
                    &node_key.verifying_key(),
                    &[node_name(i)],
                    &service_key,
                    &service_cert,
                )
                .expect("endorse");
                Identity {
                    node_key,
                    node_cert,
                    service_key: service_key.clone(),
                    service_cert: service_cert.clone(),
                }
            })
            .collect()
    })
}

/// A running replica, as the checker sees it.
pub struct Live {
    /// Bumped at every (re)start of the replica.
    pub generation: u64,
    pub replica: Weak<Replica>,
    pub raft: Raft,
    pub handle: EngineHandle,
}

pub struct World {
    pub params: Params,
    pub dirs: Vec<PathBuf>,
    pub live: RefCell<Vec<Option<Live>>>,
    generations: Cell<u64>,
    /// Logical clock of the history: every invocation and response takes the next tick. The
    /// simulation runs on one thread, so this order is the real order of events (finer than the
    /// simulated clock, which does not move within a step).
    clock: Cell<u64>,
    pub history: RefCell<Vec<Op>>,
    next_client: Cell<u64>,
    /// Set when the workload is over: clients finish their current operation and stop.
    pub stopping: Cell<bool>,
    /// Simulated milliseconds of each history tick (for reports).
    pub tick_times: RefCell<BTreeMap<u64, u64>>,
}

impl World {
    pub fn new(params: Params, dirs: Vec<PathBuf>) -> World {
        let n = params.nodes;
        let clients = params.clients as u64;
        World {
            params,
            dirs,
            live: RefCell::new((0..n).map(|_| None).collect()),
            generations: Cell::new(0),
            clock: Cell::new(0),
            history: RefCell::new(Vec::new()),
            next_client: Cell::new(clients),
            stopping: Cell::new(false),
            tick_times: RefCell::new(BTreeMap::new()),
        }
    }

    pub fn members(&self) -> BTreeMap<u64, NodeAddr> {
        (0..self.params.nodes)
            .map(|j| {
                (
                    raft_id(j),
                    NodeAddr {
                        rpc_address: format!("{}:{}", node_name(j), crate::net::PORT),
                        node_id: identities()[j].node_id(),
                    },
                )
            })
            .collect()
    }

    /// The next tick of the history's clock.
    pub fn now(&self) -> u64 {
        let t = self.clock.get() + 1;
        self.clock.set(t);
        if let Some(e) = turmoil::sim_elapsed() {
            self.tick_times.borrow_mut().insert(t, e.as_millis() as u64);
        }
        t
    }

    /// A fresh client id for the history (a client whose last operation's outcome is unknown
    /// continues under a new id, so that every id's operations are sequential).
    pub fn fresh_client(&self) -> u64 {
        let c = self.next_client.get();
        self.next_client.set(c + 1);
        c
    }

    pub fn record(&self, op: Op) {
        self.history.borrow_mut().push(op);
    }

    pub fn register(&self, i: usize, replica: &Arc<Replica>, raft: &Raft, handle: EngineHandle) {
        let g = self.generations.get() + 1;
        self.generations.set(g);
        self.live.borrow_mut()[i] = Some(Live {
            generation: g,
            replica: Arc::downgrade(replica),
            raft: raft.clone(),
            handle,
        });
    }

    /// Forgets replica `i` (before the simulation crashes it: nothing here may keep its engine
    /// alive).
    pub fn unregister(&self, i: usize) {
        self.live.borrow_mut()[i] = None;
    }
}
