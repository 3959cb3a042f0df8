//! The replica engine of ccl.
//!
//! An [`Engine`] owns a node's store, ledger and Merkle tree, and keeps them in step: every
//! committed transaction becomes one ledger entry (public maps in the clear, private maps
//! encrypted under the ledger secret) and one Merkle leaf; every `signature_interval_txs`
//! transactions or `signature_interval` the engine writes a signature transaction (node signature
//! and service COSE signature over the root, and the tree's frontier); every
//! `snapshot_interval_txs` it writes a snapshot and its evidence.
//!
//! The engine is synchronous and single-writer (`&mut self`): callers serialise commits (the node
//! holds it in a mutex). Reads that must not wait for the writer (receipts, historical reads, tx
//! status) go through an [`EngineHandle`].
//!
//! Commit rule (CCF's): a transaction is committed once a signature transaction after it is
//! committed. The engine learns what is durable or replicated from its caller
//! ([`Engine::commit_up_to`]).

mod handle;
pub mod identity;
mod recovery;

pub use handle::{EngineHandle, HistoricalTx, ReceiptData, TxStatus};
pub use identity::Identity;

use ccl_crypto::{Digest32, cose, sha256};
use ccl_ledger::entry::{Entry, MapWrites, TxMeta, decode_maps, encode_transaction};
use ccl_ledger::ledger::{Ledger, LedgerError, SyncHandle};
use ccl_ledger::merkle::MerkleError;
use ccl_ledger::secrets::{LedgerSecret, LedgerSecrets};
use ccl_ledger::snapshot::{SnapshotName, encode_snapshot};
use ccl_ledger::tables::{
    self, NodeInfo, NodeStatus, PrimarySignature, ServiceInfo, ServiceStatus, SnapshotEvidence,
};
use ccl_ledger::txid::TxId;
use ccl_store::{Store, Tx, TxError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Default: a signature transaction at least every this many transactions...
pub const DEFAULT_SIGNATURE_INTERVAL_TXS: u64 = 5000;
/// ...and at least this often while there are unsigned transactions.
pub const DEFAULT_SIGNATURE_INTERVAL: Duration = Duration::from_millis(100);
/// Default: sooner, as soon as the previous signature is committed, but no more often than this
/// (adaptive signatures: light load commits in a few milliseconds, heavy load batches more
/// transactions under each signature). Between this and twice this, a signature also waits until
/// as many transactions as the previous one covered have come: clients that each wait for their
/// last write's commit before the next all write again after a commit, those on a backup a
/// forwarding hop later than those on the primary, and one signature then covers them all
/// instead of leaving the later ones for the next.
pub const DEFAULT_SIGNATURE_MIN_INTERVAL: Duration = Duration::from_millis(4);
/// An early signature waits the whole minimum interval once it covers this many transactions;
/// covering fewer, it waits that share of it (one transaction: 1/64 of it). The interval
/// amortizes a signature's cost (two ECDSA signatures on the primary, a check on each backup)
/// over the transactions it covers; under light load there are few to amortize over and CPU to
/// spare, and a lone write should not wait for the interval: it commits in one Raft round.
pub const SIGNATURE_FULL_TXS: u64 = 64;
/// Default: a snapshot at the first signature after this many transactions (0: never).
pub const DEFAULT_SNAPSHOT_INTERVAL_TXS: u64 = 100_000;
/// P-384 nonces an engine keeps precomputed: a signature transaction takes two, and early
/// signatures come at most one per commit (a Raft round, 1.5 ms or more on a network), so 16
/// cover a burst of 8 while the pool's thread (about 0.17 ms a nonce) refills.
pub const DEFAULT_PRESIGNED_NONCES: usize = 16;

/// Subdirectories of a node's data directory.
pub const LEDGER_DIR: &str = "ledger";
pub const SNAPSHOTS_DIR: &str = "snapshots";
pub const MERKLE_DIR: &str = "merkle";

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub signature_interval_txs: u64,
    pub signature_interval: Duration,
    /// Sign before `signature_interval` once the previous signature is committed and this
    /// long has passed since it (`>= signature_interval`: never early), and either as many
    /// transactions as the previous signature covered have come or twice this long has passed.
    pub signature_min_interval: Duration,
    pub chunk_size: u64,
    pub snapshot_interval_txs: u64,
    /// Pages (4 KiB) of Merkle tree nodes cached in memory.
    pub merkle_cache_pages: usize,
    /// Whether snapshots are encoded on threads of their own (the default) or at once, in the
    /// signature's transaction (so that a deterministic simulation replays exactly).
    pub snapshots_in_background: bool,
    /// P-384 nonces kept precomputed on a thread (0: none), so that signing a root costs
    /// microseconds under the engine's lock instead of about 1 ms (see
    /// [`ccl_crypto::presign`]).
    pub presigned_nonces: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            signature_interval_txs: DEFAULT_SIGNATURE_INTERVAL_TXS,
            signature_interval: DEFAULT_SIGNATURE_INTERVAL,
            signature_min_interval: DEFAULT_SIGNATURE_MIN_INTERVAL,
            chunk_size: ccl_ledger::ledger::DEFAULT_CHUNK_SIZE,
            snapshot_interval_txs: DEFAULT_SNAPSHOT_INTERVAL_TXS,
            merkle_cache_pages: ccl_ledger::merkle::DEFAULT_CACHE_PAGES,
            snapshots_in_background: true,
            presigned_nonces: DEFAULT_PRESIGNED_NONCES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Tx(#[from] TxError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    #[error("cryptography: {0}")]
    Crypto(#[from] ccl_crypto::CryptoError),
    #[error("transaction {0} is not committed yet")]
    NotCommitted(u64),
    #[error("no transaction at seqno {0}")]
    NotFound(u64),
    #[error("{0}")]
    Corrupt(String),
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A snapshot waiting for its evidence to be committed.
struct PendingSnapshot {
    seqno: u64,
    evidence_seqno: u64,
    bytes: Vec<u8>,
}

/// What encoding a snapshot needs, taken from the engine at once (the state is a persistent
/// map: copying it is cheap), so that the encoding itself can run on another thread.
struct SnapshotJob {
    txid: TxId,
    leaf: Digest32,
    view_history: Vec<u64>,
    state: ccl_store::State,
    secret: LedgerSecret,
}

impl SnapshotJob {
    fn encode(&self) -> Vec<u8> {
        encode_snapshot(
            self.txid,
            &self.leaf,
            &self.view_history,
            &self.state.snapshot_maps(),
            self.secret.aead(),
        )
    }
}

/// A snapshot encoded in the background.
struct SnapshotDone {
    generation: u64,
    seqno: u64,
    bytes: Vec<u8>,
}

/// A snapshot encoded, waiting for its evidence.
struct EncodedSnapshot {
    seqno: u64,
    bytes: Vec<u8>,
    /// Hex SHA-256 of `bytes`, as in the evidence.
    hash: String,
}

/// Snapshots encoded on threads of their own, from a copy of the state at a signature (see
/// `maybe_snapshot`), and what they wait for: a primary writes their evidence once they are
/// encoded; a backup keeps one if the primary's evidence for its seqno has its hash.
struct SnapshotsInFlight {
    tx: std::sync::mpsc::Sender<SnapshotDone>,
    rx: std::sync::mpsc::Receiver<SnapshotDone>,
    /// Seqnos of the snapshots still being encoded.
    seqnos: Vec<u64>,
    /// Bumped when a rollback drops a seqno being encoded: results of older jobs are ignored.
    generation: u64,
    /// Encoded, waiting for evidence (at most [`MAX_SNAPSHOTS_WAITING`], oldest dropped).
    encoded: Vec<EncodedSnapshot>,
    /// Evidence a backup applied for a snapshot still being encoded, with its seqno.
    evidence: Vec<(SnapshotEvidence, u64)>,
}

impl SnapshotsInFlight {
    /// Keeps the encoded snapshot at `seqno` until its evidence (see `Engine::collect_snapshots`
    /// for what is dropped).
    fn push_encoded(&mut self, seqno: u64, bytes: Vec<u8>) {
        let hash = hex::encode(sha256(&bytes));
        self.encoded.push(EncodedSnapshot { seqno, bytes, hash });
        self.encoded.sort_by_key(|s| s.seqno);
    }

    /// Whether the snapshot at `seqno` is being encoded or waits for its evidence.
    fn has(&self, seqno: u64) -> bool {
        self.seqnos.contains(&seqno) || self.encoded.iter().any(|s| s.seqno == seqno)
    }
}

/// Most snapshots encoded and waiting for evidence that one that never comes (a primary with
/// another snapshot interval, a lost term) holds in memory.
pub const MAX_SNAPSHOTS_WAITING: usize = 2;

impl Default for SnapshotsInFlight {
    fn default() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        SnapshotsInFlight {
            tx,
            rx,
            seqnos: Vec::new(),
            generation: 0,
            encoded: Vec::new(),
            evidence: Vec::new(),
        }
    }
}

/// The writer side of a replica: see the crate documentation.
pub struct Engine {
    cfg: EngineConfig,
    dir: PathBuf,
    store: Arc<Store>,
    ledger: Ledger,
    shared: Arc<handle::Shared>,
    identity: Arc<Identity>,
    view: u64,
    last_sig_seqno: u64,
    last_sig_at: Instant,
    /// Transactions the last signature covered (besides itself).
    last_sig_txs: u64,
    txs_since_sig: u64,
    buf: Vec<u8>,
    pending_snapshots: Vec<PendingSnapshot>,
    snapshots_in_flight: SnapshotsInFlight,
    last_snapshot_seqno: u64,
    /// Entries this node executed (as primary) that consensus has not taken yet: the first
    /// one's seqno, and their bytes, in order.
    outbox_first: u64,
    outbox: Vec<Vec<u8>>,
    /// The last node certificate whose service endorsement a replicated signature was checked
    /// against (see `check_signature`).
    endorsed_signer: Option<EndorsedSigner>,
}

/// The ECDSA check of a replicated signature transaction, its other checks made: see
/// [`Engine::append_replicated_unverified`].
#[derive(Debug)]
pub struct SignatureCheck {
    txid: TxId,
    key: ccl_crypto::keys::VerifyingKey,
    root: Digest32,
    /// The root's preimage (the hashes of its two children), when the tree has one.
    preimage: Option<[u8; 64]>,
    sig: Vec<u8>,
}

impl SignatureCheck {
    /// The signature transaction it checks.
    pub fn txid(&self) -> TxId {
        self.txid
    }

    /// Whether the node's signature over the root verifies.
    pub fn verify(&self) -> Result<(), EngineError> {
        // With the root's preimage (the usual case) SHA-256(preimage) = root is checked as
        // part of the signature's check.
        match &self.preimage {
            Some(p) => self.key.verify_der_sha256(p, &self.sig),
            None => self.key.verify_prehashed(&self.root, &self.sig),
        }
        .map_err(|_| {
            EngineError::Invalid(format!(
                "signature transaction {}: node signature does not verify",
                self.txid
            ))
        })
    }
}

/// A node certificate found endorsed by a service certificate, and its key.
struct EndorsedSigner {
    node_cert: String,
    /// The service certificate recorded in the store when the endorsement was checked (`None`:
    /// none recorded, this node's own service certificate was used).
    service_pem: Option<String>,
    key: ccl_crypto::keys::VerifyingKey,
}

/// What the engine tells its listener (consensus), from the thread that holds the engine: the
/// listener must return at once (wake a task, publish a value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// The outbox was empty and now holds an entry this node executed.
    Appended,
    /// Every transaction up to this seqno is committed.
    Committed(u64),
}

/// A callback for [`EngineEvent`]s.
pub type Listener = Arc<dyn Fn(EngineEvent) + Send + Sync>;

/// Entry header flag (CCF's `FORCE_LEDGER_CHUNK_AFTER`): the ledger chunk ends after this
/// entry, on every replica.
pub const FLAG_FORCE_CHUNK_AFTER: u8 = 0x01;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.dir)
            .field("last_seqno", &self.last_seqno())
            .finish()
    }
}

impl Engine {
    /// Creates a new service in the empty data directory `dir`: the genesis transaction (service
    /// info with status Opening and the service certificate, this node Trusted with its endorsed
    /// certificate, plus whatever `genesis` writes), then a signature.
    pub fn create(
        dir: &Path,
        cfg: EngineConfig,
        identity: Identity,
        secret: LedgerSecret,
        genesis: impl FnOnce(&mut Tx) -> Result<(), TxError>,
    ) -> Result<Engine, EngineError> {
        let ledger_dir = dir.join(LEDGER_DIR);
        if ledger_dir.exists()
            && std::fs::read_dir(&ledger_dir)
                .map_err(io_err(&ledger_dir))?
                .next()
                .is_some()
        {
            return Err(EngineError::Invalid(format!(
                "{} already holds a ledger",
                ledger_dir.display()
            )));
        }
        let mut engine = recovery::open(dir, cfg, identity, LedgerSecrets::new(secret), false)?;
        engine.view = 1;
        engine.shared.current_view.store(1, Ordering::Release);
        let id = engine.identity.clone();
        let node_id = id.node_id();
        let mut tx = engine.store.begin();
        let info = ServiceInfo {
            status: ServiceStatus::Opening,
            cert: id.service_cert.pem(),
            previous_service_identity_version: None,
            recovery_count: 0,
            service_data: serde_json::Value::Null,
            current_service_create_txid: TxId::new(1, 1).to_string(),
        };
        tx.put(tables::SERVICE_INFO, &tables::SINGLETON_KEY, &json(&info))?;
        let node = NodeInfo {
            status: NodeStatus::Trusted,
            public_key: id.node_key.verifying_key().to_pem(),
            quote_info: serde_json::Value::Null,
            rpc_address: String::new(),
            node_data: serde_json::Value::Null,
            retired_committed: false,
            ledger_secret_seqno: 1,
        };
        tx.put(tables::NODES, node_id.as_bytes(), &json(&node))?;
        tx.put(
            tables::ENDORSED_CERTIFICATES,
            node_id.as_bytes(),
            id.node_cert.pem().as_bytes(),
        )?;
        genesis(&mut tx)?;
        engine.commit(tx, None)?;
        engine.emit_signature()?;
        Ok(engine)
    }

    /// Opens an existing data directory: cuts a torn ledger tail, rebuilds the store (latest
    /// snapshot, then the ledger after it) and the Merkle tree, and checks the tree against the
    /// last signature. `secrets` must hold every ledger secret the ledger was written with.
    pub fn open(
        dir: &Path,
        cfg: EngineConfig,
        identity: Identity,
        secrets: LedgerSecrets,
    ) -> Result<Engine, EngineError> {
        recovery::open(dir, cfg, identity, secrets, false)
    }

    /// Opens a ledger of which only the public domain can be read before the first secret in
    /// `secrets` applies (disaster recovery: the old service's secrets come back later, from the
    /// members' shares, through [`Engine::recover_private`]). Entries with no secret are replayed
    /// public maps only.
    pub fn open_public_only(
        dir: &Path,
        cfg: EngineConfig,
        identity: Identity,
        secrets: LedgerSecrets,
    ) -> Result<Engine, EngineError> {
        recovery::open(dir, cfg, identity, secrets, true)
    }

    /// Disaster recovery, once the old service's ledger secrets are back: adds them, decrypts the
    /// private domain of every entry before the first secret this engine had (each must
    /// authenticate under its secret), and restores the private maps as they were at the end of
    /// the old ledger. Returns how many private maps were restored.
    pub fn recover_private(&mut self, old: LedgerSecrets) -> Result<usize, EngineError> {
        // Checked on a copy: wrong secrets change nothing.
        let mut merged = self.ledger_secrets();
        let first_new = merged.iter().next().map_or(1, |(from, _)| from);
        for (from, s) in old.iter() {
            if from < first_new {
                merged.insert(from, LedgerSecret::from_bytes(*s.raw()));
            }
        }
        let mut private = ccl_store::State::default();
        for seqno in self.shared.first_seqno..first_new {
            let bytes = self.shared.reader.read_entry(seqno)?;
            let corrupt = |m: &str| EngineError::Invalid(format!("recovering entry {seqno}: {m}"));
            let (e, _) = Entry::parse(&bytes).map_err(|e| corrupt(&e.to_string()))?;
            let secret = merged
                .for_seqno(seqno)
                .ok_or_else(|| corrupt("no ledger secret for it"))?;
            let plain = e
                .decrypt_private(secret.aead())
                .map_err(|_| corrupt("does not decrypt with the recovered ledger secrets"))?;
            let maps = decode_maps(&plain).map_err(|e| corrupt(&e.to_string()))?;
            private.apply(seqno, &maps);
        }
        *self
            .shared
            .secrets
            .write()
            .unwrap_or_else(|p| p.into_inner()) = merged;
        Ok(self.store.restore_maps(&private))
    }

    /// A cloneable, thread-safe handle for reads.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            shared: self.shared.clone(),
            store: self.store.clone(),
        }
    }

    /// The store, to begin transactions.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    pub fn view(&self) -> u64 {
        self.view
    }

    pub fn last_seqno(&self) -> u64 {
        self.ledger.last_seqno()
    }

    pub fn committed_seqno(&self) -> u64 {
        self.shared.committed.load(Ordering::Acquire)
    }

    pub fn last_signature_seqno(&self) -> u64 {
        self.last_sig_seqno
    }

    /// Moves to a new view (a new term: after an election). A view may go back only after a
    /// rollback, never below the view of the last transaction kept.
    pub fn set_view(&mut self, view: u64) {
        let last_view = self.shared.view_of(self.last_seqno()).unwrap_or(0);
        assert!(view >= last_view && view <= ccl_ledger::txid::MAX_VIEW);
        self.view = view;
        self.shared.current_view.store(view, Ordering::Release);
    }

    /// Takes the entries executed here since the last call: the first one's seqno and their
    /// bytes (consensus replicates them).
    pub fn take_outbox(&mut self) -> Option<(u64, Vec<Vec<u8>>)> {
        if self.outbox.is_empty() {
            return None;
        }
        let first = self.outbox_first;
        let entries = std::mem::take(&mut self.outbox);
        self.outbox_first = first + entries.len() as u64;
        Some((first, entries))
    }

    /// Whether the outbox holds exactly the entries after `seqno` (none were taken and lost).
    pub fn outbox_follows(&self, seqno: u64) -> bool {
        self.outbox_first == seqno + 1
            && self.outbox_first + self.outbox.len() as u64 == self.last_seqno() + 1
    }

    /// Puts the entries after `seqno` back in the outbox (from the ledger), for a node whose
    /// consensus log never took them (a new service restarted before its first proposal).
    pub fn requeue_after(&mut self, seqno: u64) -> Result<(), EngineError> {
        self.ledger.sync()?;
        let reader = self.handle();
        let mut out = Vec::new();
        for s in seqno + 1..=self.last_seqno() {
            out.push(reader.raw_entry(s)?);
        }
        self.outbox_first = seqno + 1;
        self.outbox = out;
        Ok(())
    }

    /// Appends an entry that another replica (the primary) executed: checks that it follows
    /// the last one, decrypts it, applies its writes to the store, writes its bytes unchanged to
    /// the ledger and its leaf to the Merkle tree. A signature transaction must sign the root this
    /// replica computed, with the key of a node certificate the service endorsed.
    pub fn append_replicated(&mut self, bytes: &[u8]) -> Result<TxId, EngineError> {
        self.append_replicated_inner(bytes, false)
            .map(|(txid, _)| txid)
    }

    /// [`Engine::append_replicated`], except that a signature transaction's ECDSA check (about
    /// 0.3 ms) is left to the caller: every other check (the root it signs is this replica's,
    /// the service endorsed its node certificate) is made here, and the entry is applied. The
    /// caller runs the returned check while the entry is written to disk, and if it fails rolls
    /// the entry back (`rollback(txid.seqno - 1)`) before acknowledging anything.
    pub fn append_replicated_unverified(
        &mut self,
        bytes: &[u8],
    ) -> Result<(TxId, Option<SignatureCheck>), EngineError> {
        self.append_replicated_inner(bytes, true)
    }

    fn append_replicated_inner(
        &mut self,
        bytes: &[u8],
        defer: bool,
    ) -> Result<(TxId, Option<SignatureCheck>), EngineError> {
        let seqno = self.last_seqno() + 1;
        let bad = |m: String| EngineError::Invalid(format!("replicated entry {seqno}: {m}"));
        let (e, len) = Entry::parse(bytes).map_err(|e| bad(e.to_string()))?;
        if len != bytes.len() {
            return Err(bad("trailing bytes after the entry".into()));
        }
        let last_view = self.shared.view_of(self.last_seqno()).unwrap_or(0);
        if e.txid.seqno != seqno || e.txid.view < last_view || e.is_snapshot {
            return Err(bad(format!(
                "has transaction id {} after {}.{}",
                e.txid,
                last_view,
                seqno - 1
            )));
        }
        let pd = e.public_domain().map_err(|e| bad(e.to_string()))?;
        let mut maps = Vec::new();
        let mut signature = None;
        let mut evidence = None;
        for m in pd.map_iter() {
            let m = m.map_err(|e| bad(e.to_string()))?;
            if m.name == tables::SNAPSHOT_EVIDENCE
                && let Some((_, v)) = m.writes.first()
            {
                evidence = serde_json::from_slice::<SnapshotEvidence>(v).ok();
            }
            if m.name == tables::SIGNATURES {
                let (_, v) = m
                    .writes
                    .first()
                    .ok_or_else(|| bad("empty signatures map".into()))?;
                let ps: PrimarySignature =
                    serde_json::from_slice(v).map_err(|e| bad(e.to_string()))?;
                signature = Some(ps);
            }
            maps.push(m);
        }
        let plain = self
            .shared
            .with_secret(seqno, |s| e.decrypt_private(s.aead()))
            .ok_or_else(|| bad("no ledger secret for it".into()))?
            .map_err(|_| bad("fails its integrity check".into()))?;
        maps.extend(decode_maps(&plain).map_err(|e| bad(e.to_string()))?);
        let mut check = match &signature {
            Some(ps) => Some(self.signature_check(ps, e.txid)?),
            None => None,
        };
        if !defer && let Some(c) = check.take() {
            c.verify()?;
        }
        if e.txid.view != self.view {
            self.set_view(e.txid.view);
        }
        // Snapshot evidence of the primary: this replica makes the same snapshot (its encoding is
        // deterministic; it started at the signature, by the same interval rule as the
        // primary's) and keeps it if it hashes to the evidence, so that every node has
        // snapshots to restart from. A snapshot taken outside the rule (`snapshot_now`) has its
        // evidence right after its signature: the state is still that of the signature, and
        // is taken now. Encodings run on other threads: this entry (and the acknowledgement
        // the primary waits for) is not held up by them.
        if let Some(ev) = &evidence
            && ev.version == seqno - 1
            && ev.version == self.last_sig_seqno
            && !self.snapshots_in_flight.has(ev.version)
        {
            let job = self.snapshot_job(ev.version)?;
            self.encode_in_background(job)?;
        }
        self.store.apply(seqno, &maps);
        let leaf = pd.leaf(&e.write_set_digest());
        let end_chunk = e.flags & FLAG_FORCE_CHUNK_AFTER != 0;
        self.record_entry(seqno, bytes, leaf, signature.is_some().then_some(end_chunk))?;
        if signature.is_some() && !end_chunk {
            self.maybe_snapshot()?;
        }
        if let Some(ev) = evidence {
            self.last_snapshot_seqno = self.last_snapshot_seqno.max(ev.version);
            self.snapshots_in_flight.evidence.push((ev, seqno));
            self.collect_snapshots(false);
        }
        learn_secrets(&self.shared, &self.identity, seqno, &maps)?;
        Ok((e.txid, check))
    }

    /// A replicated signature must sign this replica's root, by a node the service endorsed:
    /// checks both, and gives the ECDSA check that remains.
    fn signature_check(
        &mut self,
        ps: &PrimarySignature,
        txid: TxId,
    ) -> Result<SignatureCheck, EngineError> {
        let bad = |m: &str| EngineError::Invalid(format!("signature transaction {txid}: {m}"));
        if ps.seqno != txid.seqno || ps.view != txid.view {
            return Err(bad("names another transaction"));
        }
        let (root, preimage) = {
            let tree = self.shared.tree.lock().unwrap_or_else(|p| p.into_inner());
            tree.frontier()
                .root_with_preimage()
                .expect("leaf 0 is always present")
        };
        if ps.root != hex::encode(root) {
            return Err(bad(
                "signs a Merkle root other than this replica's: the replicas diverge",
            ));
        }
        // The service of that point of the ledger: before a disaster recovery, the previous one.
        let recorded_pem = self
            .store
            .get(tables::SERVICE_INFO, &tables::SINGLETON_KEY)
            .and_then(|v| serde_json::from_slice::<ServiceInfo>(&v.value).ok())
            .map(|i| i.cert);
        // The primary signs with the same certificate until it changes: its endorsement is
        // checked once per (node certificate, service certificate) pair, and the certificates
        // are parsed only then.
        let key = match &self.endorsed_signer {
            Some(e) if e.node_cert == ps.cert && e.service_pem == recorded_pem => e.key.clone(),
            _ => {
                let recorded = recorded_pem
                    .as_deref()
                    .and_then(|p| ccl_crypto::cert::Certificate::from_pem(p).ok());
                let service = recorded.as_ref().unwrap_or(&self.identity.service_cert);
                let cert = ccl_crypto::cert::Certificate::from_pem(&ps.cert)
                    .map_err(|_| bad("node certificate does not parse"))?;
                cert.verify_issued_by(service)
                    .map_err(|_| bad("node certificate is not endorsed by the service"))?;
                let key = cert
                    .public_key()
                    .map_err(|_| bad("node certificate has no usable key"))?;
                self.endorsed_signer = Some(EndorsedSigner {
                    node_cert: ps.cert.clone(),
                    service_pem: recorded_pem,
                    key: key.clone(),
                });
                key
            }
        };
        let sig = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &ps.sig)
            .map_err(|_| bad("signature is not base64"))?;
        Ok(SignatureCheck {
            txid,
            key,
            root,
            preimage,
            sig,
        })
    }

    /// Commits a transaction: validates it, assigns it the next seqno, writes its ledger entry and
    /// Merkle leaf. `claims_digest` binds application claims to the transaction's receipt.
    pub fn commit(&mut self, tx: Tx, claims_digest: Option<Digest32>) -> Result<TxId, EngineError> {
        if !tx.has_writes() {
            return Err(EngineError::Invalid(
                "a transaction with no writes is not recorded".into(),
            ));
        }
        let (seqno, ws) = self.store.commit(tx)?;
        let maps = ws.map_writes();
        let r = self.append_write_set(seqno, &maps, claims_digest.unwrap_or([0u8; 32]), None);
        if r.is_err() {
            // The store moved but the ledger did not: undo the store, or nothing is consistent.
            let _ = self.store.rollback(seqno - 1);
            return r;
        }
        learn_secrets(&self.shared, &self.identity, seqno, &maps)?;
        r
    }

    fn append_write_set(
        &mut self,
        seqno: u64,
        maps: &[MapWrites<'_>],
        claims_digest: Digest32,
        signature: Option<bool>,
    ) -> Result<TxId, EngineError> {
        let txid = TxId::new(self.view, seqno);
        let secrets = self
            .shared
            .secrets
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let secret = secrets
            .latest()
            .ok_or_else(|| EngineError::Invalid("no ledger secret".into()))?;
        let meta = TxMeta {
            txid,
            claims_digest,
            commit_evidence_digest: secret.commit_evidence_digest(txid),
            max_conflict_version: seqno as i64 - 1,
            flags: if signature == Some(true) {
                FLAG_FORCE_CHUNK_AFTER
            } else {
                0
            },
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_transaction(&mut buf, &meta, maps, secret.aead());
        drop(secrets);
        let ws = sha256(&buf);
        let leaf = ccl_crypto::sha256_parts(&[&ws, &meta.commit_evidence_digest, &claims_digest]);
        let r = self.record_entry(seqno, &buf, leaf, signature);
        if r.is_ok() {
            let was_empty = self.outbox.is_empty();
            if was_empty {
                self.outbox_first = seqno;
            }
            self.outbox.push(buf.clone());
            if was_empty {
                self.shared.tell(EngineEvent::Appended);
            }
        }
        self.buf = buf;
        r.map(|()| txid)
    }

    /// Writes an entry's bytes to the ledger and its leaf to the tree, and notes its view and
    /// whether it is a signature (`Some(end_chunk)`).
    fn record_entry(
        &mut self,
        seqno: u64,
        bytes: &[u8],
        leaf: Digest32,
        signature: Option<bool>,
    ) -> Result<(), EngineError> {
        self.ledger
            .append(seqno, bytes, signature.is_some(), signature == Some(true))?;
        self.shared
            .tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(leaf)?;
        self.shared.last_seqno.store(seqno, Ordering::Release);
        let noted = self.shared.note_view(self.view, seqno);
        assert!(noted, "views and seqnos only grow");
        if signature.is_some() {
            self.shared.add_signature(seqno);
            self.last_sig_seqno = seqno;
            self.last_sig_at = Instant::now();
            self.last_sig_txs = self.txs_since_sig;
            self.txs_since_sig = 0;
        } else {
            self.txs_since_sig += 1;
        }
        Ok(())
    }

    /// Whether a signature is due (enough transactions, or enough time with unsigned ones).
    pub fn signature_due(&self, now: Instant) -> bool {
        if self.txs_since_sig == 0 {
            return false;
        }
        let since = now.duration_since(self.last_sig_at);
        // The minimum interval, for a signature covering fewer than SIGNATURE_FULL_TXS
        // transactions, scaled down to the share it covers.
        let floor = self
            .cfg
            .signature_min_interval
            .mul_f64(self.txs_since_sig.min(SIGNATURE_FULL_TXS) as f64 / SIGNATURE_FULL_TXS as f64);
        self.txs_since_sig >= self.cfg.signature_interval_txs
            || since >= self.cfg.signature_interval
            || (self.cfg.signature_min_interval < self.cfg.signature_interval
                && since >= floor
                && self.committed_seqno() >= self.last_sig_seqno
                && (self.txs_since_sig >= self.last_sig_txs
                    || since >= self.cfg.signature_min_interval * 2))
    }

    /// Writes the evidence of snapshots encoded since the last call, then a signature
    /// transaction if one is due; returns the signature's id. Called by the primary.
    pub fn maybe_emit_signature(&mut self, now: Instant) -> Result<Option<TxId>, EngineError> {
        self.write_snapshot_evidence()?;
        if self.signature_due(now) {
            self.emit_signature().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The Merkle root over every transaction so far (CCF's state digest).
    pub fn root(&self) -> ccl_crypto::Digest32 {
        let tree = self.shared.tree.lock().unwrap_or_else(|p| p.into_inner());
        tree.root().expect("leaf 0 is always present")
    }

    /// Writes a signature transaction over the root of every transaction before it.
    pub fn emit_signature(&mut self) -> Result<TxId, EngineError> {
        self.signature(false)
    }

    /// Writes a signature transaction that also ends the current ledger chunk, so that everything
    /// so far can become `.committed` files (at shutdown, say).
    pub fn emit_signature_ending_chunk(&mut self) -> Result<TxId, EngineError> {
        self.signature(true)
    }

    fn signature(&mut self, end_chunk: bool) -> Result<TxId, EngineError> {
        let seqno = self.last_seqno() + 1;
        let root = {
            let tree = self.shared.tree.lock().unwrap_or_else(|p| p.into_inner());
            assert_eq!(
                tree.len(),
                seqno,
                "the tree holds a leaf for every seqno before the signature"
            );
            tree.root().expect("leaf 0 is always present")
        };
        let txid = TxId::new(self.view, seqno);
        let id = self.identity.clone();
        let committed = self.committed_seqno();
        let sig = PrimarySignature {
            seqno,
            view: self.view,
            commit_seqno: committed,
            commit_view: self.shared.view_of(committed).unwrap_or(0),
            node: id.node_id(),
            root: hex::encode(root),
            sig: b64(&id.node_key.sign_prehashed(&root)?),
            cert: id.node_cert.pem(),
        };
        let cose_sig = cose::sign1(
            &id.service_key,
            &id.service_kid(),
            vec![
                // Verifiable data structure: CCF ledger, SHA-256 (draft-ietf-cose-merkle-tree-proofs).
                (coset::Label::Int(395), cose::Value::Integer(2.into())),
                (
                    coset::Label::Text("ccf.v1".into()),
                    cose::Value::Map(vec![(
                        cose::Value::Text("txid".into()),
                        cose::Value::Text(txid.to_string()),
                    )]),
                ),
            ],
            &root,
            true,
        )?;
        let frontier = self
            .shared
            .tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .frontier()
            .to_bytes();
        let cose_value = json(&b64(&cose_sig));
        let sig_value = json(&sig);
        let maps = [
            MapWrites {
                name: tables::COSE_SIGNATURES,
                read_version: seqno - 1,
                writes: vec![(&tables::SINGLETON_KEY, &cose_value)],
                removes: vec![],
            },
            MapWrites {
                name: tables::SIGNATURES,
                read_version: seqno - 1,
                writes: vec![(&tables::SINGLETON_KEY, &sig_value)],
                removes: vec![],
            },
            MapWrites {
                name: tables::TREE,
                read_version: seqno - 1,
                writes: vec![(&tables::SINGLETON_KEY, &frontier)],
                removes: vec![],
            },
        ];
        self.store.apply(seqno, &maps);
        let txid = self.append_write_set(seqno, &maps, [0u8; 32], Some(end_chunk))?;
        // A chunk ends at a signature when the node stops: no snapshot is started then.
        if !end_chunk {
            self.maybe_snapshot()?;
        }
        Ok(txid)
    }

    /// At a signature (the last transaction), starts encoding a snapshot of the state if one is
    /// due: the first signature `snapshot_interval_txs` after the last snapshot. Primary and
    /// backups follow the same rule; the primary writes the evidence (the snapshot's hash) once
    /// the encoding is done, and backups keep theirs if it hashes to that evidence. Nothing
    /// waits for the encoding, under the engine's lock or elsewhere.
    fn maybe_snapshot(&mut self) -> Result<(), EngineError> {
        let seqno = self.last_seqno();
        debug_assert_eq!(seqno, self.last_sig_seqno);
        if self.cfg.snapshot_interval_txs == 0
            || seqno - self.last_snapshot_seqno < self.cfg.snapshot_interval_txs
        {
            return Ok(());
        }
        let job = self.snapshot_job(seqno)?;
        self.encode_in_background(job)
    }

    /// Commits the evidence of every snapshot encoded and waiting (a primary's).
    fn write_snapshot_evidence(&mut self) -> Result<(), EngineError> {
        self.collect_snapshots(false);
        // Evidence goes into the ledger in seqno order: a snapshot whose elder is still being
        // encoded waits for it, so that a backup can drop what is older than an evidence.
        let flight = &mut self.snapshots_in_flight;
        let running = flight.seqnos.iter().min().copied().unwrap_or(u64::MAX);
        // (`encoded` is kept in seqno order.)
        let ready = flight.encoded.partition_point(|s| s.seqno < running);
        for snap in flight.encoded.drain(..ready).collect::<Vec<_>>() {
            let mut tx = self.store.begin();
            let ev = SnapshotEvidence {
                hash: snap.hash,
                version: snap.seqno,
            };
            tx.put(
                tables::SNAPSHOT_EVIDENCE,
                &tables::SINGLETON_KEY,
                &json(&ev),
            )?;
            let evidence = self.commit(tx, Some(sha256(&snap.bytes)))?;
            self.pending_snapshots.push(PendingSnapshot {
                seqno: snap.seqno,
                evidence_seqno: evidence.seqno,
                bytes: snap.bytes,
            });
        }
        Ok(())
    }

    /// Writes a snapshot of the state at the last transaction, which must be a signature.
    pub fn snapshot_now(&mut self) -> Result<(), EngineError> {
        let seqno = self.last_seqno();
        if seqno != self.last_sig_seqno {
            return Err(EngineError::Invalid(
                "snapshots are taken at signature transactions".into(),
            ));
        }
        let bytes = self.encode_snapshot(seqno)?;
        let digest = sha256(&bytes);
        let mut tx = self.store.begin();
        let ev = SnapshotEvidence {
            hash: hex::encode(digest),
            version: seqno,
        };
        tx.put(
            tables::SNAPSHOT_EVIDENCE,
            &tables::SINGLETON_KEY,
            &json(&ev),
        )?;
        let evidence = self.commit(tx, Some(digest))?;
        self.pending_snapshots.push(PendingSnapshot {
            seqno,
            evidence_seqno: evidence.seqno,
            bytes,
        });
        self.last_snapshot_seqno = seqno;
        Ok(())
    }

    /// The snapshot of the current state, which is the state at `seqno` (the last transaction).
    /// Deterministic: every replica encodes the same bytes for the same seqno.
    fn encode_snapshot(&self, seqno: u64) -> Result<Vec<u8>, EngineError> {
        Ok(self.snapshot_job(seqno)?.encode())
    }

    /// What encoding the snapshot of the current state (at `seqno`, the last transaction) needs.
    fn snapshot_job(&self, seqno: u64) -> Result<SnapshotJob, EngineError> {
        debug_assert_eq!(seqno, self.last_seqno());
        let leaf = self
            .shared
            .tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leaf(seqno)?;
        let secret = self
            .shared
            .with_secret(seqno, |s| LedgerSecret::from_bytes(*s.raw()))
            .ok_or_else(|| EngineError::Invalid("no ledger secret".into()))?;
        Ok(SnapshotJob {
            txid: TxId::new(self.shared.view_of(seqno).unwrap_or(self.view), seqno),
            leaf,
            view_history: self.shared.view_history(),
            state: self.store.state(),
            secret,
        })
    }

    /// Encodes the snapshot of `job` on a thread of its own (see [`SnapshotsInFlight`]).
    fn encode_in_background(&mut self, job: SnapshotJob) -> Result<(), EngineError> {
        self.last_snapshot_seqno = self.last_snapshot_seqno.max(job.txid.seqno);
        if !self.cfg.snapshots_in_background {
            let bytes = job.encode();
            self.snapshots_in_flight.push_encoded(job.txid.seqno, bytes);
            return Ok(());
        }
        let flight = &mut self.snapshots_in_flight;
        let (tx, generation, seqno) = (flight.tx.clone(), flight.generation, job.txid.seqno);
        std::thread::Builder::new()
            .name("ccl-snapshot".into())
            .spawn(move || {
                let bytes = job.encode();
                // The engine may be gone (closed meanwhile): then the snapshot is not needed.
                let _ = tx.send(SnapshotDone {
                    generation,
                    seqno,
                    bytes,
                });
            })
            .map_err(|e| EngineError::Invalid(format!("cannot start a snapshot thread: {e}")))?;
        flight.seqnos.push(seqno);
        Ok(())
    }

    /// Takes the snapshots encoded in the background so far (all of them, waiting, with
    /// `wait`), and matches them with the evidence applied: a snapshot whose hash is that of
    /// its evidence becomes pending (written once the evidence is committed).
    fn collect_snapshots(&mut self, wait: bool) {
        let flight = &mut self.snapshots_in_flight;
        while !flight.seqnos.is_empty() {
            let done = if wait {
                match flight.rx.recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            } else {
                match flight.rx.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            if done.generation != flight.generation {
                continue;
            }
            flight.seqnos.retain(|s| *s != done.seqno);
            flight.push_encoded(done.seqno, done.bytes);
        }
        let mut newest_evidence = 0;
        for (ev, evidence_seqno) in std::mem::take(&mut flight.evidence) {
            newest_evidence = newest_evidence.max(ev.version);
            if let Some(i) = flight.encoded.iter().position(|s| s.seqno == ev.version) {
                let snap = flight.encoded.remove(i);
                if snap.hash == ev.hash {
                    self.pending_snapshots.push(PendingSnapshot {
                        seqno: snap.seqno,
                        evidence_seqno,
                        bytes: snap.bytes,
                    });
                } else {
                    tracing::warn!(
                        seqno = ev.version,
                        "this replica's snapshot differs from the primary's evidence: not kept"
                    );
                }
            } else if flight.seqnos.contains(&ev.version) {
                flight.evidence.push((ev, evidence_seqno));
            } else {
                tracing::info!(
                    seqno = ev.version,
                    "no snapshot of this replica's for the primary's evidence"
                );
            }
        }
        // The primary writes evidence in seqno order: an older snapshot gets none any more.
        // Beyond that, the oldest go first, so that a primary that never writes evidence for
        // this replica's snapshots (another interval) costs a bounded amount of memory.
        flight.encoded.retain(|s| s.seqno > newest_evidence);
        let excess = flight.encoded.len().saturating_sub(MAX_SNAPSHOTS_WAITING);
        flight.encoded.drain(..excess);
    }

    /// Waits for the snapshots being encoded in the background and writes those whose evidence
    /// is committed (before closing, say).
    pub fn finish_snapshots(&mut self) -> Result<(), EngineError> {
        self.collect_snapshots(true);
        self.write_committed_snapshots()
    }

    /// Writes out what was appended and returns a handle to fsync it outside any lock (group
    /// commit: many transactions share one fsync).
    pub fn sync_handle(&mut self) -> Result<SyncHandle, EngineError> {
        Ok(self.ledger.sync_handle()?)
    }

    /// Writes out and fsyncs.
    pub fn sync(&mut self) -> Result<u64, EngineError> {
        Ok(self.ledger.sync()?)
    }

    /// Records that every entry up to `seqno` is durable on a majority: commits up to the last
    /// signature at or before it. Returns the new commit seqno.
    pub fn commit_up_to(&mut self, seqno: u64) -> Result<u64, EngineError> {
        let sig = self.shared.last_signature_at_or_before(seqno);
        if sig <= self.committed_seqno() {
            return Ok(self.committed_seqno());
        }
        self.ledger.commit(sig)?;
        self.store.compact(sig);
        self.shared.committed.store(sig, Ordering::Release);
        // The tree's node files are a cache of the ledger: they are written when a level's
        // buffer fills and at close, not at every commit (tens of small writes, under the lock).
        self.write_committed_snapshots()?;
        self.shared.tell(EngineEvent::Committed(sig));
        Ok(sig)
    }

    /// Sets the callback told of appends and commits (replacing any earlier one).
    pub fn set_listener(&self, listener: Listener) {
        *self
            .shared
            .listener
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    fn write_committed_snapshots(&mut self) -> Result<(), EngineError> {
        self.collect_snapshots(false);
        let committed = self.committed_seqno();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_snapshots)
            .into_iter()
            .partition(|p| p.evidence_seqno < committed);
        self.pending_snapshots = waiting;
        for p in ready {
            let receipt = self.handle().receipt(p.evidence_seqno)?;
            let mut bytes = p.bytes;
            bytes.extend_from_slice(receipt.to_receipt().to_ccf_json().to_string().as_bytes());
            let dir = self.dir.join(SNAPSHOTS_DIR);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let name = SnapshotName {
                seqno: p.seqno,
                evidence_seqno: p.evidence_seqno,
                committed: true,
            };
            let path = dir.join(name.file_name());
            let tmp = dir.join(format!(".{}.tmp", name.file_name()));
            std::fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&dir))?;
            tracing::info!(snapshot = %path.display(), "snapshot committed");
        }
        Ok(())
    }

    /// Rolls back every transaction after `seqno` (an uncommitted suffix).
    pub fn rollback(&mut self, seqno: u64) -> Result<(), EngineError> {
        if seqno < self.committed_seqno() {
            return Err(EngineError::Invalid(format!(
                "cannot roll back committed seqno {seqno}"
            )));
        }
        self.ledger.truncate(seqno)?;
        self.store.rollback(seqno).map_err(EngineError::Corrupt)?;
        self.shared
            .tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .truncate(seqno + 1)?;
        self.shared.truncate(seqno);
        // A secret from `s` was handed out by the rekey at `s - 1`: gone with it.
        self.shared
            .secrets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .truncate_after(seqno + 1);
        self.last_sig_seqno = self.shared.last_signature_at_or_before(seqno);
        let flight = &mut self.snapshots_in_flight;
        if flight.seqnos.iter().any(|s| *s > seqno) {
            // Snapshots being encoded of states that are gone: their results are ignored.
            flight.generation += 1;
            flight.seqnos.clear();
        }
        flight.encoded.retain(|s| s.seqno <= seqno);
        // A snapshot whose evidence is gone but whose state is not waits for evidence again
        // (the next primary's log may well hold the same).
        for p in std::mem::take(&mut self.pending_snapshots) {
            if p.evidence_seqno <= seqno {
                self.pending_snapshots.push(p);
            } else if p.seqno <= seqno {
                flight.push_encoded(p.seqno, p.bytes);
            }
        }
        flight.evidence.retain(|(_, e)| *e <= seqno);
        self.last_snapshot_seqno = self.last_snapshot_seqno.min(seqno);
        self.txs_since_sig = seqno - self.last_sig_seqno;
        // What the signature now last covered: the transactions since the one before it.
        let before = self
            .shared
            .last_signature_at_or_before(self.last_sig_seqno.saturating_sub(1));
        self.last_sig_txs = self.last_sig_seqno.saturating_sub(before + 1);
        let keep = (seqno + 1).saturating_sub(self.outbox_first) as usize;
        self.outbox.truncate(keep);
        Ok(())
    }

    /// A copy of every ledger secret, by starting seqno (to seal them).
    pub fn ledger_secrets(&self) -> LedgerSecrets {
        let secrets = self
            .shared
            .secrets
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut out = LedgerSecrets::default();
        for (from, s) in secrets.iter() {
            out.push(from, LedgerSecret::from_bytes(*s.raw()));
        }
        out
    }

    /// Starts a new ledger secret for transactions from the next seqno on (rekey).
    pub fn rekey(&mut self, secret: LedgerSecret) {
        let next = self.last_seqno() + 1;
        self.shared
            .secrets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(next, secret);
    }

    /// Ends the ledger cleanly: a final signature that completes the chunk, everything fsynced.
    /// Returns the last seqno; the caller commits it (a single node: at once).
    pub fn finish(&mut self) -> Result<u64, EngineError> {
        // Snapshots being encoded get their evidence, which the final signature covers.
        self.collect_snapshots(true);
        self.write_snapshot_evidence()?;
        if self.ledger.has_open_chunk() {
            self.emit_signature_ending_chunk()?;
        }
        self.finish_snapshots()?;
        let last = self.sync()?;
        self.shared
            .tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()?;
        Ok(last)
    }
}

/// Learns the ledger secrets the entry at `seqno` hands to this node (a rekey or a recovery
/// writes them, sealed to each node's key, in [`tables::ENCRYPTED_LEDGER_SECRETS`]): each applies
/// from its `version`, or from the next seqno. The ledger is where a node's later secrets come
/// from, on every replica and on every replay, so they need no other copy on disk.
pub(crate) fn learn_secrets(
    shared: &handle::Shared,
    identity: &Identity,
    seqno: u64,
    maps: &[MapWrites<'_>],
) -> Result<usize, EngineError> {
    if !maps
        .iter()
        .any(|m| m.name == tables::ENCRYPTED_LEDGER_SECRETS)
    {
        return Ok(0);
    }
    let mut secrets = shared.secrets.write().unwrap_or_else(|p| p.into_inner());
    learn_secrets_into(&mut secrets, identity, seqno, maps)
}

/// [`learn_secrets`] into `secrets`.
pub(crate) fn learn_secrets_into(
    secrets: &mut LedgerSecrets,
    identity: &Identity,
    seqno: u64,
    maps: &[MapWrites<'_>],
) -> Result<usize, EngineError> {
    let Some(m) = maps
        .iter()
        .find(|m| m.name == tables::ENCRYPTED_LEDGER_SECRETS)
    else {
        return Ok(0);
    };
    let bad = |m: String| EngineError::Invalid(format!("ledger secrets at seqno {seqno}: {m}"));
    let Some((_, v)) = m.writes.first() else {
        return Ok(0);
    };
    let all: tables::LedgerSecretsForNodes =
        serde_json::from_slice(v).map_err(|e| bad(e.to_string()))?;
    let Some(mine) = all.get(&identity.node_id()) else {
        return Ok(0);
    };
    let mut learned = 0;
    for s in mine {
        let raw = ccl_crypto::ecies::open_with(
            &identity.node_key,
            tables::LEDGER_SECRET_ECIES_INFO,
            &s.encrypted_secret,
        )
        .map_err(|_| bad("this node's copy does not decrypt with its key".into()))?;
        let raw: [u8; ccl_ledger::secrets::LEDGER_SECRET_LEN] = raw[..]
            .try_into()
            .map_err(|_| bad("a ledger secret of the wrong length".into()))?;
        let from = s.version.unwrap_or(seqno + 1);
        if secrets.insert(from, LedgerSecret::from_bytes(raw)) {
            learned += 1;
            tracing::info!(from, "ledger secret learned from the ledger");
        }
    }
    Ok(learned)
}

/// The latest committed snapshot file in the data directory `dir`: its name and bytes (the
/// snapshot and its receipt).
pub fn latest_committed_snapshot(
    dir: &Path,
) -> Result<Option<(SnapshotName, Vec<u8>)>, EngineError> {
    handle::latest_snapshot(&dir.join(SNAPSHOTS_DIR), u64::MAX)
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialising plain data to JSON cannot fail")
}

pub(crate) fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests;
