//! Deterministic simulation of ccl's replication (consensus and ledger) under message loss,
//! delay, partitions and crashes, checked for linearizability.
//!
//! # What runs
//!
//! [turmoil] simulates hosts, time and a TCP network on one thread. Each run (a *seed*) has 3 or
//! 5 replicas and 2 to 4 clients, each on its own host:
//!
//! * A replica ([`node`]) is the real thing minus TLS: a `ccl_engine::Engine` in its own data
//!   directory, `ccl_consensus::log::Replica` (the Raft log storage and state machine over the
//!   engine and the side log), a real openraft `Raft` with ccl's configuration, and the real
//!   proposer (`ccl_consensus::proposer::run`). Raft's RPCs are the postcard-encoded requests and
//!   answers of `ccl_consensus::net`, framed over turmoil's TCP ([`net`]).
//! * Bootstrapping: replica 0 creates the service (`Engine::create`: genesis and a signature) and
//!   initializes Raft with every replica as a voter. The other replicas start from an *empty*
//!   data directory (`Engine::open` on nothing, no `raft/base`): they receive the whole ledger,
//!   genesis included, through Raft's log and `Engine::append_replicated`. This exercises the
//!   real storage code from Raft index 0 on; it does not exercise the join protocol (snapshot
//!   plus `Replica::write_base`), which needs the node's HTTP API. A copy of replica 0's
//!   directory would not do: every copy would hold genesis outside the Raft log.
//! * Identities: one service key and certificate, a node key and endorsed certificate per
//!   replica, on P-256 rather than ccl's P-384 (`world::identities` says why; `CCL_SIM_P384=1`
//!   uses P-384).
//! * A crash drops the host's whole runtime (the engine too: what the ledger had buffered and not
//!   written is lost, as in a killed process; what was written survives, as the page cache does
//!   — power loss is not simulated). A restart runs the replica's software again on its data
//!   directory: `Engine::open`, `Replica::open`, `Raft::new`.
//! * Clients ([`client`]) write and read keys of `public:sim.kv` through the replica they
//!   believe is primary. A write commits a transaction in the primary's engine and is answered
//!   when `tx_status` says Committed (ok), Invalid (failed: not in the history) or after a
//!   timeout (unknown: pending in the history). A read checks the primary role, calls
//!   `Raft::ensure_linearizable`, reads the store and is answered once the transaction it read at
//!   has committed. Invocations and responses are ordered by one logical clock (the simulation is
//!   single-threaded, so this is their real order).
//! * Faults, drawn from the seed during the workload: partitions between replicas and between
//!   clients and replicas, held (delayed) links, message loss (turmoil's random link failures,
//!   which drop TCP segments: the connection stalls and the RPC times out), latency changes,
//!   crashes of one replica, a minority or all of them, restarts. Then the network heals, every
//!   replica restarts, the cluster must quiesce (one primary, every replica's ledger committed to
//!   the same seqno) and a last client reads every key.
//!
//! # What is checked
//!
//! * The history (with the final reads) is linearizable (`ccl_lincheck::check`).
//! * At every step, for every replica: its committed seqno never goes back while it runs, and the
//!   bytes of every entry it has committed equal those any replica ever committed at that seqno
//!   (no committed transaction is rolled back or replaced, and replicas agree).
//! * At the end, every replica's committed ledger is byte-identical.
//! * No task panicked; the cluster quiesced after healing (liveness).
//!
//! # Determinism
//!
//! Everything random comes from the seed: turmoil's RNG (latencies, losses), the parameters, the
//! fault schedule, the clients' choices. Simulated time is turmoil's (tokio's paused clock, one
//! millisecond per step). What else could make two runs of a seed differ, and how it is handled:
//!
//! * openraft draws election timeouts from `rand::thread_rng()`: each replica gets
//!   `election_timeout_max = min + 1` with `min` drawn from the seed.
//! * The engine times signatures with `std::time::Instant` (real time): its
//!   `signature_interval` is set to an hour and a task signs every `signature_every` of
//!   simulated time instead (`Engine::maybe_emit_signature`).
//! * tokio's `select!` starts at a random branch (a thread-local RNG that only
//!   `--cfg tokio_unstable` lets turmoil seed). openraft has two unbiased `select!`s: the metrics
//!   `wait` (used by `ensure_linearizable` with no timeout: its other branch never fires) and the
//!   replication backoff after an `Unreachable` error. The simulated network reports every
//!   failure as a network error, never `Unreachable`, so that backoff never runs (the real
//!   network does use it); instead a failed RPC is reported at its deadline (turmoil refuses a
//!   connection to a cut-off host at once, and openraft retries a failed append at once). The
//!   simulation's own code has no `select!`.
//! * tokio drops a runtime's tasks in an order that depends on their task ids, which come from a
//!   process-wide counter; dropping a connection sends a FIN, which draws from turmoil's RNG. So
//!   every connection belongs to a task of the host's `LocalSet` (dropped in spawn order), none
//!   to a task of openraft's ([`net::SimNet`]).
//! * COSE signatures (ring) use random nonces, and certificates hold their creation time and
//!   random keys, so the bytes of signature transactions (and of what signs over them) and of
//!   genesis differ between runs, and so do their sizes by a few bytes (DER signatures). Sizes
//!   matter in one place: where a ledger chunk ends, hence what a restarted replica finds
//!   committed on disk. The chunk size is 1 (every signature ends a chunk) or 1 GiB (none does),
//!   never in between. The simulated network does not model bandwidth.
//!
//! The run's digest covers, at every step where it changed, every replica's Raft state (term,
//! role, leader, last log index, last applied) and engine state (last and committed seqno); every
//! committed entry's transaction id, the maps it writes and its `public:sim.kv` writes; and the
//! history with its clock. [`a_seed_replays_exactly`] runs seeds twice in one process and
//! compares digests; `CCL_SIM_SEED=<n>` prints the digest (to compare across processes and
//! builds: debug and release give the same); `CCL_SIM_DIGESTS` compares whole sweeps.
//! `CCL_SIM_TRACE=<prefix>` writes the per-step trace as text, to find where two runs part.
//!
//! # Running
//!
//! * `cargo test -p ccl-consensus --test sim`: [`DEFAULT_SEEDS`] seeds from 0, in parallel.
//! * `CCL_SIM_SEEDS=<count>`, `CCL_SIM_FIRST_SEED=<n>`, `CCL_SIM_THREADS=<n>`: other seeds.
//! * `CCL_SIM_SEED=<n> cargo test -p ccl-consensus --test sim simulated_seeds -- --nocapture`:
//!   replays one seed and prints its faults, statistics and digest.
//! * `CCL_SIM_DIGESTS=<file>`: appends `<seed> <digest>` for every seed that passes (to compare
//!   two sweeps: the digests do not depend on what else runs in the process).
//! * `CCL_SIM_WORKLOAD_MS` (default [`DEFAULT_WORKLOAD_MS`]): simulated time of faults and
//!   operations per seed. `CCL_SIM_DIR`: where data directories go (default `/dev/shm` when it
//!   exists: replicas fsync a lot).

#[path = "sim/client.rs"]
mod client;
#[path = "sim/net.rs"]
mod net;
#[path = "sim/node.rs"]
mod node;
#[path = "sim/world.rs"]
mod world;

use ccl_consensus::openraft::ServerState;
use ccl_consensus::proposer::is_primary;
use ccl_lincheck::{Op, OpKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};
use world::{MAP, Params, World, client_name, node_name};

/// Seeds run by default.
pub const DEFAULT_SEEDS: u64 = 500;
/// Simulated time of the workload (faults and client operations) per seed, by default.
pub const DEFAULT_WORKLOAD_MS: u64 = 3000;
/// After healing, the cluster must quiesce within this much simulated time.
pub const QUIESCE_WITHIN: Duration = Duration::from_secs(20);
/// The final reads must all succeed within this much simulated time.
pub const FINAL_READS_WITHIN: Duration = Duration::from_secs(10);
/// Seeds the replay test runs twice.
pub const REPLAY_SEEDS: [u64; 3] = [1, 4, 11];

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
    )
}

fn workload_ms() -> u64 {
    env_u64("CCL_SIM_WORKLOAD_MS").unwrap_or(DEFAULT_WORKLOAD_MS)
}

fn data_root() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("CCL_SIM_DIR") {
        return d.into();
    }
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        return shm.into();
    }
    std::env::temp_dir()
}

// Panics in any task of a run (tokio catches those of spawned tasks) fail the run.
thread_local! {
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.borrow_mut().push(info.to_string()));
            prev(info);
        }));
    });
}

/// A running SHA-256 over a sequence of records.
struct Digest([u8; 32]);

impl Digest {
    fn add(&mut self, bytes: &[u8]) {
        self.0 = ccl_crypto::sha256_parts(&[&self.0, bytes]);
    }
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub nodes: usize,
    pub clients: usize,
    pub sim_ms: u64,
    pub ops: usize,
    pub writes_ok: usize,
    pub reads_ok: usize,
    pub pending_writes: usize,
    pub crashes: usize,
    pub partitions: usize,
    pub last_term: u64,
    pub committed_seqno: u64,
}

pub struct Outcome {
    pub digest: [u8; 32],
    pub stats: Stats,
    pub faults: Vec<String>,
}

enum Restore {
    Repair(String, String),
    Release(String, String),
    Restart(usize),
}

/// The fault schedule, drawn from the seed as the run goes.
struct Faults {
    rng: ChaCha8Rng,
    next_at: u64,
    restore: BTreeMap<u64, Vec<Restore>>,
    down: BTreeSet<usize>,
    log: Vec<String>,
    crashes: usize,
    partitions: usize,
}

impl Faults {
    fn new(seed: u64) -> Faults {
        Faults {
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xFA17_5EED_0000_0000),
            next_at: 200,
            restore: BTreeMap::new(),
            down: BTreeSet::new(),
            log: Vec::new(),
            crashes: 0,
            partitions: 0,
        }
    }

    fn later(&mut self, now: u64, lo: u64, hi: u64, r: Restore) {
        let at = now + self.rng.random_range(lo..=hi);
        self.restore.entry(at).or_default().push(r);
    }

    fn crash(&mut self, sim: &mut turmoil::Sim<'_>, w: &World, i: usize, now: u64) {
        w.unregister(i);
        sim.crash(node_name(i));
        self.down.insert(i);
        self.crashes += 1;
        self.log.push(format!("{now}ms crash n{i}"));
    }

    fn restart(&mut self, sim: &mut turmoil::Sim<'_>, i: usize, now: u64) {
        if self.down.remove(&i) {
            sim.bounce(node_name(i));
            self.log.push(format!("{now}ms restart n{i}"));
        }
    }

    fn step(&mut self, sim: &mut turmoil::Sim<'_>, w: &World, now: u64) {
        while let Some(e) = self.restore.first_entry() {
            if *e.key() > now {
                break;
            }
            for r in e.remove() {
                match r {
                    Restore::Repair(a, b) => {
                        sim.repair(a.as_str(), b.as_str());
                        self.log.push(format!("{now}ms repair {a}-{b}"));
                    }
                    Restore::Release(a, b) => {
                        sim.release(a.as_str(), b.as_str());
                        self.log.push(format!("{now}ms release {a}-{b}"));
                    }
                    Restore::Restart(i) => self.restart(sim, i, now),
                }
            }
        }
        if now < self.next_at {
            return;
        }
        self.next_at = now + self.rng.random_range(50..=600);
        let n = w.params.nodes;
        let up: Vec<usize> = (0..n).filter(|i| !self.down.contains(i)).collect();
        match self.rng.random_range(0..100) {
            // A partition of the replicas into two sides.
            0..=24 => {
                let mask = self.rng.random_range(1..(1u32 << n) - 1);
                let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| mask & (1 << i) != 0);
                for &x in &a {
                    for &y in &b {
                        sim.partition(node_name(x).as_str(), node_name(y).as_str());
                        self.later(now, 100, 3000, Restore::Repair(node_name(x), node_name(y)));
                    }
                }
                self.partitions += 1;
                self.log.push(format!("{now}ms partition {a:?} | {b:?}"));
            }
            // A client cut off from a replica.
            25..=32 => {
                let c = client_name(self.rng.random_range(0..w.params.clients));
                let x = node_name(self.rng.random_range(0..n));
                sim.partition(c.as_str(), x.as_str());
                self.log.push(format!("{now}ms partition {c}-{x}"));
                self.later(now, 100, 2000, Restore::Repair(c, x));
            }
            // A crash, restarted later. Mostly a minority stays up; sometimes not.
            33..=49 => {
                if up.is_empty() {
                    return;
                }
                let i = up[self.rng.random_range(0..up.len())];
                if self.down.len() < (n - 1) / 2 || self.rng.random_bool(0.2) {
                    self.crash(sim, w, i, now);
                    self.later(now, 10, 2500, Restore::Restart(i));
                }
            }
            // A crash and immediate restart.
            50..=57 => {
                if up.is_empty() {
                    return;
                }
                let i = up[self.rng.random_range(0..up.len())];
                w.unregister(i);
                sim.bounce(node_name(i));
                self.crashes += 1;
                self.log.push(format!("{now}ms bounce n{i}"));
            }
            // Every replica crashes.
            58..=60 => {
                for i in up {
                    self.crash(sim, w, i, now);
                    self.later(now, 10, 1500, Restore::Restart(i));
                }
            }
            // A link holds its messages for a while (delay).
            61..=74 => {
                let x = self.rng.random_range(0..n);
                let y = (x + self.rng.random_range(1..n)) % n;
                let (a, b) = (node_name(x), node_name(y));
                sim.hold(a.as_str(), b.as_str());
                self.log.push(format!("{now}ms hold {a}-{b}"));
                self.later(now, 20, 1500, Restore::Release(a, b));
            }
            // Message loss.
            75..=87 => {
                let rate = [0.0, 0.0, 0.001, 0.005, 0.02][self.rng.random_range(0..5)];
                sim.set_fail_rate(rate);
                self.log.push(format!("{now}ms loss {rate}"));
            }
            // Latency.
            _ => {
                let ms = self.rng.random_range(1..=200);
                sim.set_max_message_latency(Duration::from_millis(ms));
                self.log.push(format!("{now}ms latency <= {ms}ms"));
            }
        }
    }

    /// Ends every fault: links repaired and released, no loss, crashed replicas restarted.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>, w: &World, now: u64) {
        let mut hosts: Vec<String> = (0..w.params.nodes).map(node_name).collect();
        hosts.extend((0..w.params.clients).map(client_name));
        for (i, a) in hosts.iter().enumerate() {
            for b in &hosts[i + 1..] {
                sim.release(a.as_str(), b.as_str());
                sim.repair(a.as_str(), b.as_str());
            }
        }
        sim.set_fail_rate(0.0);
        sim.set_max_message_latency(w.params.max_latency);
        self.restore.clear();
        for i in self.down.clone() {
            self.restart(sim, i, now);
        }
        self.log.push(format!("{now}ms heal"));
    }
}

/// Per-step invariants and the run's trace digest.
struct Checker {
    /// sha256 of the bytes of every entry any replica committed, by seqno.
    committed: BTreeMap<u64, [u8; 32]>,
    /// Per replica: (generation, committed seqno checked so far).
    checked: Vec<(u64, u64)>,
    /// Per replica: what was last folded into the trace.
    last: Vec<Vec<u8>>,
    trace: Digest,
    last_term: u64,
    /// `CCL_SIM_TRACE=<prefix>`: the trace as text, written to `<prefix>-<seed>-<run>` at the end
    /// (to compare runs).
    dump: Option<String>,
}

impl Checker {
    fn new(n: usize) -> Checker {
        Checker {
            committed: BTreeMap::new(),
            checked: vec![(0, 0); n],
            last: vec![Vec::new(); n],
            trace: Digest([0; 32]),
            last_term: 0,
            dump: std::env::var_os("CCL_SIM_TRACE").map(|_| String::new()),
        }
    }

    fn observe(&mut self, w: &World, now: u64) -> Result<(), String> {
        let live = w.live.borrow();
        for (i, l) in live.iter().enumerate() {
            let obs = match l {
                None => vec![0xff],
                Some(l) => {
                    let c = l.handle.committed_seqno();
                    let (gen_, upto) = &mut self.checked[i];
                    if *gen_ != l.generation {
                        *gen_ = l.generation;
                        *upto = 0;
                    }
                    if c < *upto {
                        return Err(format!(
                            "{now}ms: n{i}'s committed seqno went back from {upto} to {c}"
                        ));
                    }
                    for s in *upto + 1..=c {
                        let bytes = l.handle.raw_entry(s).map_err(|e| {
                            format!("{now}ms: n{i} cannot read committed entry {s}: {e}")
                        })?;
                        let d = ccl_crypto::sha256(&bytes);
                        if let Some(prev) = self.committed.insert(s, d)
                            && prev != d
                        {
                            return Err(format!(
                                "{now}ms: n{i} committed seqno {s} with other bytes than were \
                                 committed there before (a committed transaction was replaced)"
                            ));
                        }
                    }
                    *upto = c;
                    let m = l.raft.metrics().borrow().clone();
                    self.last_term = self.last_term.max(m.current_term);
                    let state = match m.state {
                        ServerState::Leader => 1u8,
                        ServerState::Candidate => 2,
                        ServerState::Follower => 3,
                        ServerState::Learner => 4,
                        ServerState::Shutdown => 5,
                    };
                    let mut o = vec![state];
                    for v in [
                        l.generation,
                        m.current_term,
                        m.current_leader.unwrap_or(0),
                        m.last_log_index.unwrap_or(u64::MAX),
                        m.last_applied.map_or(u64::MAX, |a| a.index),
                        l.handle.last_seqno(),
                        c,
                    ] {
                        o.extend_from_slice(&v.to_le_bytes());
                    }
                    o
                }
            };
            if obs != self.last[i] {
                if let Some(dump) = &mut self.dump {
                    let _ = writeln!(dump, "{now} n{i} {}", hex::encode(&obs));
                }
                self.trace.add(&now.to_le_bytes());
                self.trace.add(&[i as u8]);
                self.trace.add(&obs);
                self.last[i] = obs;
            }
        }
        Ok(())
    }
}

/// Whether every replica runs, follows one primary, and has committed everything it holds, the
/// same seqno everywhere.
fn quiescent(w: &World) -> bool {
    let live = w.live.borrow();
    let Some(first) = live.first().and_then(|l| l.as_ref()) else {
        return false;
    };
    let Some(leader) = first.raft.metrics().borrow().current_leader else {
        return false;
    };
    let Some(Some(l)) = live.get(leader as usize - 1) else {
        return false;
    };
    let Some(replica) = l.replica.upgrade() else {
        return false;
    };
    if !is_primary(&replica, &l.raft, leader) {
        return false;
    }
    let last = l.handle.last_seqno();
    live.iter().all(|x| {
        x.as_ref().is_some_and(|x| {
            x.raft.metrics().borrow().current_leader == Some(leader)
                && x.handle.last_seqno() == last
                && x.handle.committed_seqno() == last
        })
    })
}

enum Phase {
    Workload,
    Healing { since: u64 },
    FinalReads { since: u64 },
    Settling { since: u64 },
}

fn describe_violation(w: &World, v: &ccl_lincheck::Violation) -> String {
    let mut out = format!("{v:?}\n");
    let key = match v {
        ccl_lincheck::Violation::NotLinearizable { key, .. }
        | ccl_lincheck::Violation::UnwrittenValue { key, .. }
        | ccl_lincheck::Violation::TooLarge { key, .. }
        | ccl_lincheck::Violation::BudgetExhausted { key, .. } => Some(*key),
        ccl_lincheck::Violation::Malformed { .. } => None,
    };
    let times = w.tick_times.borrow();
    let ms = |t: u64| times.get(&t).copied().unwrap_or(0);
    let history = w.history.borrow();
    let mut ops: Vec<(usize, &Op)> = history
        .iter()
        .enumerate()
        .filter(|(_, o)| key.is_none_or(|k| o.key == k))
        .collect();
    ops.sort_by_key(|(_, o)| o.call);
    let _ = writeln!(out, "ops of key {key:?} ({}), by invocation:", ops.len());
    for (i, o) in ops.iter().take(400) {
        let _ = writeln!(
            out,
            "  #{i} client {} {:?} call {} ({}ms) ret {:?} ({}ms)",
            o.client,
            o.kind,
            o.call,
            ms(o.call),
            o.ret,
            o.ret.map_or(0, ms)
        );
    }
    out
}

/// Runs seed `seed` to the end and checks it.
pub fn run_seed(seed: u64, workload_ms: u64) -> Result<Outcome, String> {
    install_panic_hook();
    PANICS.with(|p| p.borrow_mut().clear());
    let p = Params::from_seed(seed, workload_ms);
    let root = tempfile::Builder::new()
        .prefix(&format!("ccl-sim-{seed}-"))
        .tempdir_in(data_root())
        .map_err(|e| format!("temporary directory: {e}"))?;
    let dirs = (0..p.nodes)
        .map(|i| root.path().join(node_name(i)))
        .collect();
    let w = Rc::new(World::new(p.clone(), dirs));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_750_000_000))
        .simulation_duration(Duration::from_secs(24 * 3600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::ZERO)
        .max_message_latency(p.max_latency)
        // Connections waiting to be accepted and segments waiting to be read, per socket: a
        // held link releases many at once.
        .tcp_capacity(1 << 16)
        .build();
    for i in 0..p.nodes {
        let w = w.clone();
        sim.host(node_name(i), move || node::node_main(w.clone(), i));
    }
    for k in 0..p.clients {
        sim.client(client_name(k), client::client_main(w.clone(), k));
    }
    let mut faults = Faults::new(seed);
    let mut checker = Checker::new(p.nodes);
    let mut phase = Phase::Workload;
    let mut finished = false;
    let end = p.workload.as_millis() as u64;
    let panicked = || PANICS.with(|p| p.borrow().first().cloned());
    let result = loop {
        let now = sim.elapsed().as_millis() as u64;
        match phase {
            Phase::Workload if now >= end => {
                faults.heal(&mut sim, &w, now);
                w.stopping.set(true);
                phase = Phase::Healing { since: now };
            }
            Phase::Workload => faults.step(&mut sim, &w, now),
            Phase::Healing { since } => {
                if finished && quiescent(&w) {
                    sim.client("final", client::final_reader(w.clone(), FINAL_READS_WITHIN));
                    phase = Phase::FinalReads { since: now };
                } else if now - since > QUIESCE_WITHIN.as_millis() as u64 {
                    break Err(format!(
                        "liveness: no quiescence within {QUIESCE_WITHIN:?} of healing"
                    ));
                }
            }
            Phase::FinalReads { since } => {
                if finished {
                    phase = Phase::Settling { since: now };
                } else if now - since > 2 * FINAL_READS_WITHIN.as_millis() as u64 {
                    break Err("liveness: the final reads did not finish".into());
                }
            }
            Phase::Settling { since } => {
                if quiescent(&w) {
                    break Ok(());
                } else if now - since > QUIESCE_WITHIN.as_millis() as u64 {
                    break Err(format!(
                        "liveness: no quiescence within {QUIESCE_WITHIN:?} of the final reads"
                    ));
                }
            }
        }
        match sim.step() {
            Ok(f) => finished = f,
            Err(e) => break Err(format!("simulation: {e}")),
        }
        if let Err(e) = checker.observe(&w, now) {
            break Err(e);
        }
        if let Some(p) = panicked() {
            break Err(format!("a task panicked: {p}"));
        }
    };
    let stats_of = |w: &World, checker: &Checker, faults: &Faults, sim_ms| {
        let h = w.history.borrow();
        Stats {
            nodes: w.params.nodes,
            clients: w.params.clients,
            sim_ms,
            ops: h.len(),
            writes_ok: h
                .iter()
                .filter(|o| matches!(o.kind, OpKind::Write(_)) && o.ret.is_some())
                .count(),
            reads_ok: h
                .iter()
                .filter(|o| matches!(o.kind, OpKind::Read(_)))
                .count(),
            pending_writes: h.iter().filter(|o| o.ret.is_none()).count(),
            crashes: faults.crashes,
            partitions: faults.partitions,
            last_term: checker.last_term,
            committed_seqno: checker.committed.keys().next_back().copied().unwrap_or(0),
        }
    };
    let fail = |msg: String, w: &World, faults: &Faults| {
        let mut out = format!("seed {seed}: {msg}\nparameters: {:?}\nfaults:\n", w.params);
        for f in faults.log.iter().rev().take(60).rev() {
            let _ = writeln!(out, "  {f}");
        }
        let _ = write!(
            out,
            "replay: CCL_SIM_SEED={seed} CCL_SIM_WORKLOAD_MS={workload_ms} cargo test -p \
             ccl-consensus --test sim simulated_seeds -- --nocapture"
        );
        out
    };
    if let Err(e) = result {
        return Err(fail(e, &w, &faults));
    }
    let sim_ms = sim.elapsed().as_millis() as u64;
    // Every replica's committed ledger, byte for byte.
    let mut digest = Digest(checker.trace.0);
    {
        let live = w.live.borrow();
        let live: Vec<_> = live
            .iter()
            .map(|l| l.as_ref().expect("quiescent"))
            .collect();
        let c = live[0].handle.committed_seqno();
        for s in 1..=c {
            let bytes = live[0].handle.raw_entry(s).map_err(|e| e.to_string())?;
            for (j, l) in live.iter().enumerate().skip(1) {
                let other = l.handle.raw_entry(s).map_err(|e| e.to_string())?;
                if other != bytes {
                    return Err(fail(
                        format!("committed entry {s} differs between n0 and n{j}"),
                        &w,
                        &faults,
                    ));
                }
            }
            if checker.committed.get(&s) != Some(&ccl_crypto::sha256(&bytes)) {
                return Err(fail(
                    format!("committed entry {s} differs from what was committed earlier"),
                    &w,
                    &faults,
                ));
            }
            let tx = live[0]
                .handle
                .read_transaction(s)
                .map_err(|e| e.to_string())?;
            digest.add(&tx.txid.view.to_le_bytes());
            digest.add(&tx.txid.seqno.to_le_bytes());
            if let Some(dump) = &mut checker.dump {
                let names: Vec<&str> = tx.maps.iter().map(|m| m.name.as_str()).collect();
                let _ = writeln!(dump, "E {} {names:?}", tx.txid);
            }
            for m in &tx.maps {
                digest.add(m.name.as_bytes());
                if m.name == MAP {
                    for (k, v) in &m.writes {
                        digest.add(k);
                        digest.add(v);
                    }
                }
            }
        }
    }
    let history = w.history.borrow().clone();
    for o in &history {
        if let Some(dump) = &mut checker.dump {
            let _ = writeln!(dump, "H {o:?}");
        }
        let kind = match o.kind {
            OpKind::Write(v) => [0, v],
            OpKind::Read(v) => [1 + u64::from(v.is_some()), v.unwrap_or(0)],
            OpKind::Cas { .. } => [3, 0],
        };
        for x in [
            o.client,
            o.key,
            kind[0],
            kind[1],
            o.call,
            o.ret.unwrap_or(u64::MAX),
        ] {
            digest.add(&x.to_le_bytes());
        }
    }
    if let (Some(path), Some(dump)) = (std::env::var_os("CCL_SIM_TRACE"), &checker.dump) {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let mut path = std::path::PathBuf::from(path).into_os_string();
        path.push(format!("-{seed}-{run}"));
        let _ = std::fs::write(path, dump);
    }
    if let Err(v) = ccl_lincheck::check(&history) {
        return Err(fail(
            format!(
                "the history is not linearizable: {}",
                describe_violation(&w, &v)
            ),
            &w,
            &faults,
        ));
    }
    let stats = stats_of(&w, &checker, &faults, sim_ms);
    let faults_log = std::mem::take(&mut faults.log);
    // Stop every replica before the directories go.
    drop(sim);
    drop(w);
    Ok(Outcome {
        digest: digest.0,
        stats,
        faults: faults_log,
    })
}

/// Runs `seed` on a thread of its own (a large stack: the futures are deep), turning panics
/// into errors.
fn run_isolated(seed: u64, workload_ms: u64) -> Result<Outcome, String> {
    std::thread::Builder::new()
        .name(format!("sim-{seed}"))
        .stack_size(256 << 20)
        .spawn(move || run_seed(seed, workload_ms))
        .expect("thread")
        .join()
        .unwrap_or_else(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!(
                "seed {seed}: panicked: {msg}\nreplay: CCL_SIM_SEED={seed} cargo test -p \
                 ccl-consensus --test sim simulated_seeds -- --nocapture"
            ))
        })
}

#[test]
fn simulated_seeds() {
    let workload = workload_ms();
    if let Some(seed) = env_u64("CCL_SIM_SEED") {
        let t = Instant::now();
        let r = run_isolated(seed, workload);
        let wall = t.elapsed();
        match r {
            Ok(o) => {
                println!(
                    "seed {seed}: parameters {:?}",
                    Params::from_seed(seed, workload)
                );
                for f in &o.faults {
                    println!("  {f}");
                }
                println!("seed {seed}: {:?}", o.stats);
                println!("seed {seed}: digest {}", hex::encode(o.digest));
                println!("seed {seed}: ok in {wall:?}");
            }
            Err(e) => panic!("{e}"),
        }
        return;
    }
    let count = env_u64("CCL_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("CCL_SIM_FIRST_SEED").unwrap_or(0);
    let threads = env_u64("CCL_SIM_THREADS")
        .map(|t| t as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(first));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let totals = Arc::new(Mutex::new(Stats::default()));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, failures, totals) = (next.clone(), failures.clone(), totals.clone());
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        return;
                    }
                    match run_isolated(seed, workload) {
                        Ok(o) => {
                            if let Some(path) = std::env::var_os("CCL_SIM_DIGESTS") {
                                use std::io::Write as _;
                                let line = format!("{seed} {}\n", hex::encode(o.digest));
                                std::fs::OpenOptions::new()
                                    .create(true)
                                    .append(true)
                                    .open(path)
                                    .and_then(|mut f| f.write_all(line.as_bytes()))
                                    .expect("CCL_SIM_DIGESTS");
                            }
                            let mut t = totals.lock().unwrap();
                            t.sim_ms += o.stats.sim_ms;
                            t.ops += o.stats.ops;
                            t.writes_ok += o.stats.writes_ok;
                            t.reads_ok += o.stats.reads_ok;
                            t.pending_writes += o.stats.pending_writes;
                            t.crashes += o.stats.crashes;
                            t.partitions += o.stats.partitions;
                        }
                        Err(e) => {
                            eprintln!("{e}\n");
                            failures.lock().unwrap().push((seed, e));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let failures = failures.lock().unwrap();
    println!(
        "{count} seeds from {first} ({workload} ms of workload each) on {threads} threads in \
         {:?}: {:?}",
        t.elapsed(),
        totals.lock().unwrap()
    );
    if !failures.is_empty() {
        let seeds: Vec<u64> = failures.iter().map(|f| f.0).collect();
        panic!(
            "{} of {count} seeds failed: {seeds:?}\nfirst failure:\n{}",
            failures.len(),
            failures[0].1
        );
    }
}

/// A seed run twice gives the same digest: the same schedule, Raft and engine states at every
/// step, committed transactions and history.
#[test]
fn a_seed_replays_exactly() {
    let workload = workload_ms().min(DEFAULT_WORKLOAD_MS);
    for seed in REPLAY_SEEDS {
        let a = run_isolated(seed, workload).unwrap_or_else(|e| panic!("{e}"));
        let b = run_isolated(seed, workload).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            hex::encode(a.digest),
            hex::encode(b.digest),
            "seed {seed} did not replay exactly: {:?} then {:?}",
            a.stats,
            b.stats
        );
        assert!(
            a.stats.ops > 0,
            "seed {seed} did no operation: {:?}",
            a.stats
        );
    }
}
