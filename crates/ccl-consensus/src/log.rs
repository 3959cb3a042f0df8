//! Raft's log storage and state machine over the engine.
//!
//! The side log (`raft/log`) holds one line per Raft index: a checksum and a small JSON record
//! (term; the seqnos of a batch, or a membership). Lines are appended after the ledger entries
//! they point to are durable, and fsynced before Raft hears they are; a torn last line is cut on
//! open. `raft/vote` holds the vote (replaced atomically). `raft/base` names where the log starts
//! for a node that joined from a snapshot.

use crate::{Batch, Entry, LogId, Membership, StoredMembership, TypeConfig};
use ccl_engine::{Engine, EngineEvent, EngineHandle};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, Vote,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Subdirectory of the data directory with Raft's state.
pub const RAFT_DIR: &str = "raft";
/// Recent batches kept in memory, so that replication rarely reads the ledger back.
pub const BATCH_CACHE: usize = 512;

type SResult<T> = Result<T, StorageError<u64>>;

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl ToString) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())),
    }
}

fn log_error(e: impl ToString) -> StorageError<u64> {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// One line of the side log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Raft index.
    pub i: u64,
    /// Raft term.
    pub t: u64,
    /// First and last seqno of a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<(u64, u64)>,
    /// A membership change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<Membership>,
}

impl Record {
    pub fn log_id(&self) -> LogId {
        LogId::new(openraft::CommittedLeaderId::new(self.t, 0), self.i)
    }
}

/// Records of the side log taken in and still to write (see [`SideLog::stage`]).
struct SideWrite {
    file: Arc<std::fs::File>,
    buf: Vec<u8>,
}

impl SideWrite {
    fn write(self) -> std::io::Result<()> {
        (&*self.file).write_all(&self.buf)?;
        self.file.sync_data()
    }
}

/// Where the log of a node that joined from a snapshot starts: the Raft entry (already applied,
/// through the snapshot and the ledger suffix handed over with it) and the membership then.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Base {
    pub log_id: LogId,
    /// The last seqno that entry covers.
    pub seqno: u64,
    pub membership: StoredMembership,
}

/// The side log: records in memory, and the file.
struct SideLog {
    file: Arc<std::fs::File>,
    base: Option<Base>,
    /// Records from the first index after the base, consecutive.
    records: Vec<Record>,
    /// Byte offset of each record's line.
    offsets: Vec<u64>,
    len: u64,
}

fn line(r: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(r).expect("records serialise");
    let mut out = hex::encode(&ccl_crypto::sha256(&json)[..8]).into_bytes();
    out.push(b' ');
    out.extend_from_slice(&json);
    out.push(b'\n');
    out
}

impl SideLog {
    fn open(dir: &Path) -> std::io::Result<SideLog> {
        std::fs::create_dir_all(dir)?;
        let base = match std::fs::read(dir.join("base")) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(std::io::Error::other)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let path = dir.join("log");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        let mut offsets = Vec::new();
        let mut pos = 0usize;
        while let Some(nl) = bytes[pos..].iter().position(|b| *b == b'\n') {
            let l = &bytes[pos..pos + nl];
            let Some((sum, json)) = l
                .split_first_chunk::<16>()
                .and_then(|(s, rest)| rest.strip_prefix(b" ").map(|j| (s, j)))
            else {
                break;
            };
            if hex::encode(&ccl_crypto::sha256(json)[..8]).as_bytes() != sum {
                break;
            }
            let Ok(r) = serde_json::from_slice::<Record>(json) else {
                break;
            };
            let expected = records
                .last()
                .map(|l: &Record| l.i + 1)
                .or(base.as_ref().map(|b: &Base| b.log_id.index + 1))
                .unwrap_or(r.i);
            if r.i != expected {
                break;
            }
            offsets.push(pos as u64);
            records.push(r);
            pos += nl + 1;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        if (pos as u64) < bytes.len() as u64 {
            tracing::warn!(cut = bytes.len() - pos, "Raft side log: torn tail cut");
            file.set_len(pos as u64)?;
            file.sync_all()?;
        }
        Ok(SideLog {
            file: Arc::new(file),
            base,
            records,
            offsets,
            len: pos as u64,
        })
    }

    fn next_index(&self) -> u64 {
        self.records
            .last()
            .map(|r| r.i + 1)
            .or(self.base.as_ref().map(|b| b.log_id.index + 1))
            .unwrap_or(0)
    }

    fn get(&self, index: u64) -> Option<&Record> {
        let first = self.records.first()?.i;
        self.records.get(index.checked_sub(first)? as usize)
    }

    /// The last seqno covered by the records up to `index` (inclusive).
    fn seqno_at(&self, index: u64) -> u64 {
        if let Some(first) = self.records.first().map(|r| r.i)
            && index >= first
        {
            let upto = ((index - first) as usize).min(self.records.len() - 1);
            if let Some(s) = self.records[..=upto].iter().rev().find_map(|r| r.s) {
                return s.1;
            }
        }
        self.base.as_ref().map_or(0, |b| b.seqno)
    }

    fn last_seqno(&self) -> u64 {
        self.seqno_at(u64::MAX)
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.records
            .last()
            .map(Record::log_id)
            .or(self.base.as_ref().map(|b| b.log_id))
    }

    /// The membership in force at `index` (the last one at or before it).
    fn membership_at(&self, index: u64) -> StoredMembership {
        for r in self.records.iter().rev() {
            if r.i <= index
                && let Some(m) = &r.m
            {
                return StoredMembership::new(Some(r.log_id()), m.clone());
            }
        }
        self.base
            .as_ref()
            .map(|b| b.membership.clone())
            .unwrap_or_default()
    }

    /// Writes `new` records and fsyncs.
    #[cfg(test)]
    fn append(&mut self, new: Vec<Record>) -> std::io::Result<()> {
        self.stage(new).write()
    }

    /// Takes `new` records into the log (readable at once) and gives their write, to run without
    /// the log's lock: its fsync then overlaps the ledger's, and readers do not wait for it.
    /// Writes run one at a time, in order (Raft appends one batch at a time), and a truncation
    /// comes only after the write before it completed.
    fn stage(&mut self, new: Vec<Record>) -> SideWrite {
        let mut buf = Vec::new();
        for r in &new {
            self.offsets.push(self.len + buf.len() as u64);
            buf.extend_from_slice(&line(r));
        }
        self.len += buf.len() as u64;
        self.records.extend(new);
        SideWrite {
            file: self.file.clone(),
            buf,
        }
    }

    fn truncate(&mut self, index: u64) -> std::io::Result<()> {
        let Some(first) = self.records.first().map(|r| r.i) else {
            return Ok(());
        };
        let keep = index.saturating_sub(first) as usize;
        if keep >= self.records.len() {
            return Ok(());
        }
        let off = self.offsets[keep];
        self.file.set_len(off)?;
        self.file.sync_all()?;
        self.len = off;
        self.records.truncate(keep);
        self.offsets.truncate(keep);
        Ok(())
    }
}

/// What Raft's log and state machine share: the engine and the side log.
pub struct Replica {
    pub engine: Arc<Mutex<Engine>>,
    handle: EngineHandle,
    dir: PathBuf,
    side: Mutex<SideLog>,
    cache: Mutex<BTreeMap<u64, Arc<Batch>>>,
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    /// The term in which this node last took up the primary role (0: never).
    pub primary_term: AtomicU64,
    /// Wakes the proposer: the engine has entries to propose or committed some, or the log
    /// grew.
    pub(crate) wake: tokio::sync::Notify,
    /// The last seqno the proposer handed to Raft in this node's current primary term (0:
    /// none yet).
    pub(crate) proposed: AtomicU64,
    /// The engine's committed seqno.
    commit: tokio::sync::watch::Sender<u64>,
    /// The last seqno replicated into this node's engine (readable here; durable once the
    /// log's fsync that follows is done), as it grows.
    appended: tokio::sync::watch::Sender<u64>,
    /// The last seqno of the last append that completed (durable in the ledger and the side
    /// log).
    durable: AtomicU64,
}

impl Replica {
    /// Opens Raft's state in `data_dir/raft` beside the engine's. Entries in the engine beyond
    /// what the log holds (executed, never proposed) are rolled back.
    pub fn open(engine: Arc<Mutex<Engine>>, data_dir: &Path) -> std::io::Result<Arc<Replica>> {
        let dir = data_dir.join(RAFT_DIR);
        let mut side = SideLog::open(&dir)?;
        let handle = {
            let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
            // An append fsyncs the ledger and the side log side by side, so after a power loss
            // the side log may name entries whose ledger bytes did not survive. Such an append
            // never completed (it completes once both are durable): no node counted it, and it
            // is cut here, with every record after it.
            if let Some(cut) = side
                .records
                .iter()
                .find(|r| r.s.is_some_and(|(_, last)| last > e.last_seqno()))
                .map(|r| r.i)
            {
                tracing::warn!(
                    from_index = cut,
                    ledger_ends = e.last_seqno(),
                    "Raft side log: records beyond the ledger cut (an append that never completed)"
                );
                side.truncate(cut)?;
            }
            let logged = side.last_seqno();
            let pending_genesis = side.records.is_empty() && side.base.is_none();
            if !pending_genesis {
                roll_back_beyond(&mut e, logged, "entries never handed to consensus")
                    .map_err(std::io::Error::other)?;
            }
            if pending_genesis && e.last_seqno() > 0 && !e.outbox_follows(0) {
                e.requeue_after(0).map_err(std::io::Error::other)?;
            }
            if e.last_seqno() < logged {
                return Err(std::io::Error::other(format!(
                    "the Raft log covers seqno {logged} but the ledger ends at {}",
                    e.last_seqno()
                )));
            }
            e.handle()
        };
        // Applied: the last index whose seqnos the engine has committed.
        let committed = handle.committed_seqno();
        let mut applied = side.base.as_ref().map(|b| b.log_id);
        for r in &side.records {
            match r.s {
                Some((_, last)) if last > committed => break,
                Some(_) => applied = Some(r.log_id()),
                // A blank or membership entry after the last committed batch may not be
                // committed (a leader's blank entry that never reached a majority): claiming it
                // applied would make Raft take it as committed, and accept a leader's different
                // entry at its index as matching. Claimed only once a later batch is.
                None => {}
            }
        }
        // Never claim entries applied beyond the last batch the engine committed through.
        if let Some(a) = applied
            && side.seqno_at(a.index) > committed
        {
            applied = side.base.as_ref().map(|b| b.log_id);
        }
        let membership = applied.map_or_else(
            || {
                side.base
                    .as_ref()
                    .map(|b| b.membership.clone())
                    .unwrap_or_default()
            },
            |a| side.membership_at(a.index),
        );
        let (commit, _) = tokio::sync::watch::channel(handle.committed_seqno());
        let logged = side.last_seqno();
        let (appended, _) = tokio::sync::watch::channel(logged);
        let replica = Arc::new(Replica {
            engine,
            handle,
            dir,
            side: Mutex::new(side),
            cache: Mutex::new(BTreeMap::new()),
            applied: Mutex::new((applied, membership)),
            primary_term: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            proposed: AtomicU64::new(0),
            durable: AtomicU64::new(logged),
            commit,
            appended,
        });
        // Weak: the engine (inside the replica) must not keep the replica alive.
        let weak = Arc::downgrade(&replica);
        replica.engine().set_listener(Arc::new(move |event| {
            let Some(r) = weak.upgrade() else { return };
            if let EngineEvent::Committed(seqno) = event {
                r.commit.send_replace(seqno);
            }
            // New entries to propose, or a commit that may make a signature due.
            r.wake.notify_one();
        }));
        Ok(replica)
    }

    /// The committed seqno, as it changes (for waiting on a commit without polling).
    pub fn watch_commit(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commit.subscribe()
    }

    /// The last seqno replicated into this node's engine, as it grows (for waiting on a write
    /// to be readable here: it is, before the log's fsync).
    pub fn watch_appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Starts the log of a node that joined from a snapshot at `base` (written before Raft
    /// starts on this directory).
    pub fn write_base(data_dir: &Path, base: &Base) -> std::io::Result<()> {
        let dir = data_dir.join(RAFT_DIR);
        std::fs::create_dir_all(&dir)?;
        write_atomic(
            &dir.join("base"),
            &serde_json::to_vec(base).map_err(std::io::Error::other)?,
        )
    }

    /// Writes Raft's vote for `node` in `term` before Raft starts on `data_dir` (a recovered
    /// service's first node: its terms, which are the ledger's views, start after the views of the
    /// ledger it recovers).
    pub fn write_vote(data_dir: &Path, term: u64, node: u64) -> std::io::Result<()> {
        let dir = data_dir.join(RAFT_DIR);
        std::fs::create_dir_all(&dir)?;
        let vote = Vote::new(term, node);
        write_atomic(
            &dir.join("vote"),
            &serde_json::to_vec(&vote).map_err(std::io::Error::other)?,
        )
    }

    /// Whether this is a new service's first node that Raft has not started on yet: no log and
    /// no base (a joining node always has a base).
    pub fn is_new_service(&self) -> bool {
        let side = self.side();
        side.records.is_empty() && side.base.is_none()
    }

    /// The last seqno the log holds.
    pub fn logged_seqno(&self) -> u64 {
        self.side().last_seqno()
    }

    /// The last seqno the log holds durably: appends up to it completed.
    pub fn durable_seqno(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The log id of the last entry that is applied (committed) and the last seqno it covers,
    /// with the membership then: what a joining node starts from.
    pub fn applied_base(&self, at_least_seqno: u64) -> Option<Base> {
        let applied = self.applied.lock().unwrap_or_else(|p| p.into_inner()).0?;
        let side = self.side();
        // The first applied batch that reaches `at_least_seqno`.
        let rec = side
            .records
            .iter()
            .take_while(|r| r.i <= applied.index)
            .find(|r| r.s.is_some_and(|s| s.1 >= at_least_seqno))?;
        Some(Base {
            log_id: rec.log_id(),
            seqno: rec.s.map_or(0, |s| s.1),
            membership: side.membership_at(rec.i),
        })
    }

    /// The membership of the last applied entry.
    pub fn applied_membership(&self) -> StoredMembership {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    fn side(&self) -> std::sync::MutexGuard<'_, SideLog> {
        self.side.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    // openraft's own error type, as its storage traits return it.
    #[allow(clippy::result_large_err)]
    fn batch(&self, index: u64, first: u64, last: u64) -> SResult<Arc<Batch>> {
        if let Some(b) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
        {
            return Ok(b.clone());
        }
        let mut entries = Vec::with_capacity((last + 1 - first) as usize);
        for s in first..=last {
            let bytes = self
                .handle
                .raw_entry(s)
                .map_err(|e| io_error(ErrorSubject::Log(LogId::default()), ErrorVerb::Read, e))?;
            entries.push(serde_bytes::ByteBuf::from(bytes));
        }
        Ok(Arc::new(Batch {
            first_seqno: first,
            entries: Arc::new(entries),
        }))
    }

    fn cache_batch(&self, index: u64, batch: Arc<Batch>) {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.insert(index, batch);
        while c.len() > BATCH_CACHE {
            c.pop_first();
        }
    }

    // openraft's own error type, as its storage traits return it.
    #[allow(clippy::result_large_err)]
    fn entries(&self, start: u64, end: u64) -> SResult<Vec<Entry>> {
        let records: Vec<Record> = {
            let side = self.side();
            (start..end).filter_map(|i| side.get(i).cloned()).collect()
        };
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let payload = match (&r.s, &r.m) {
                (Some((a, b)), _) => EntryPayload::Normal(Batch::clone(&*self.batch(r.i, *a, *b)?)),
                (None, Some(m)) => EntryPayload::Membership(m.clone()),
                (None, None) => EntryPayload::Blank,
            };
            out.push(Entry {
                log_id: r.log_id(),
                payload,
            });
        }
        Ok(out)
    }

    /// Removes the log from `index` on: its side records, and the engine's entries beyond what
    /// the rest names (`what` they are, for the log: a conflicting suffix, an append that
    /// failed).
    // openraft's own error type, as its storage traits return it.
    #[allow(clippy::result_large_err)]
    fn cut_from(&self, index: u64, what: &str) -> SResult<()> {
        let mut e = self.engine();
        let mut side = self.side();
        side.truncate(index).map_err(log_error)?;
        let keep = side.last_seqno();
        drop(side);
        self.durable.fetch_min(keep, Ordering::AcqRel);
        self.appended.send_if_modified(|a| {
            let before = *a;
            *a = before.min(keep);
            *a != before
        });
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|i, _| *i < index);
        roll_back_beyond(&mut e, keep, what).map_err(log_error)
    }

    /// Writes `entries` (in order, from the next index) to the engine and the side log, durably.
    async fn append_entries(self: &Arc<Self>, entries: Vec<Entry>) -> SResult<()> {
        let mut records = Vec::with_capacity(entries.len());
        // The ECDSA checks of replicated signatures, run while the entries are written.
        let mut checks = Vec::new();
        let (sync, side_write, appended, first) = {
            let mut e = self.engine();
            let side = self.side();
            let first = side.next_index();
            let mut logged = side.last_seqno();
            drop(side);
            for (next, entry) in (first..).zip(entries) {
                if entry.log_id.index != next {
                    return Err(log_error(format!(
                        "append at index {} but the log ends before {next}",
                        entry.log_id.index
                    )));
                }
                let term = entry.log_id.leader_id.term;
                let mut rec = Record {
                    i: next,
                    t: term,
                    s: None,
                    m: None,
                };
                match entry.payload {
                    EntryPayload::Normal(batch) => {
                        if batch.entries.is_empty() || batch.first_seqno != logged + 1 {
                            return Err(log_error(format!(
                                "batch from seqno {} does not follow seqno {logged}",
                                batch.first_seqno
                            )));
                        }
                        let last = batch.last_seqno();
                        let ours = self.primary_term.load(Ordering::Acquire) == term
                            && e.view() == term
                            && e.last_seqno() >= last;
                        if !ours {
                            roll_back_beyond(&mut e, logged, "an uncommitted suffix")
                                .map_err(log_error)?;
                            for bytes in batch.entries.iter() {
                                let (_, check) =
                                    e.append_replicated_unverified(bytes).map_err(log_error)?;
                                checks.extend(check);
                            }
                        }
                        rec.s = Some((batch.first_seqno, last));
                        logged = last;
                        self.cache_batch(next, Arc::new(batch));
                    }
                    EntryPayload::Membership(m) => rec.m = Some(m),
                    EntryPayload::Blank => {}
                }
                records.push(rec);
            }
            // The ledger's bytes reach the file (the page cache) before the side log's
            // record: a killed process never leaves the side log ahead of the ledger.
            let sync = e.sync_handle().map_err(log_error)?;
            (sync, self.side().stage(records), logged, first)
        };
        self.appended.send_replace(appended);
        // The two fsyncs (the ledger's, and the side log's naming what it holds) block: on a
        // multi-threaded runtime they run side by side on blocking threads, so that neither
        // waits for the other and the async workers go on serving requests meanwhile (Raft
        // itself waits, as it must). On a current-thread runtime (the deterministic
        // simulation) they run here, one after the other.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let verified = if multi_thread {
            let ledger = tokio::task::spawn_blocking(move || sync.sync());
            let side = tokio::task::spawn_blocking(move || side_write.write());
            // Meanwhile, here: the signatures' checks.
            let verified = verify_all(&checks);
            let (ledger, side) = tokio::join!(ledger, side);
            ledger.map_err(log_error)?.map_err(log_error)?;
            side.map_err(log_error)?.map_err(log_error)?;
            verified
        } else {
            let verified = verify_all(&checks);
            sync.sync().map_err(log_error)?;
            side_write.write().map_err(log_error)?;
            verified
        };
        if let Err(e) = verified {
            // Nothing of this append is acknowledged: its records and entries go again.
            tracing::error!(error = %e, "a replicated signature does not verify");
            self.cut_from(first, "an append whose signature does not verify")?;
            return Err(log_error(e));
        }
        self.durable.store(appended, Ordering::Release);
        // The proposer may be holding entries until this write was done.
        self.wake.notify_one();
        Ok(())
    }
}

/// Rolls the engine back to `keep` if it holds entries beyond it (`what` they are, for the log),
/// and drops them from what the proposer would hand Raft.
fn roll_back_beyond(e: &mut Engine, keep: u64, what: &str) -> Result<(), ccl_engine::EngineError> {
    if e.last_seqno() > keep {
        tracing::info!(from = keep + 1, to = e.last_seqno(), "rolling back {what}");
        e.rollback(keep)?;
        e.take_outbox();
    }
    Ok(())
}

/// Runs every check; the first failure.
fn verify_all(checks: &[ccl_engine::SignatureCheck]) -> Result<(), ccl_engine::EngineError> {
    checks.iter().try_for_each(|c| c.verify())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Raft's log storage (and log reader).
#[derive(Clone)]
pub struct LogStore(pub Arc<Replica>);

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e + 1,
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        let end = end.min(self.0.side().next_index());
        if start >= end {
            return Ok(Vec::new());
        }
        self.0.entries(start, end)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let side = self.0.side();
        Ok(LogState {
            last_purged_log_id: side.base.as_ref().map(|b| b.log_id),
            last_log_id: side.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> SResult<()> {
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        write_atomic(&self.0.dir.join("vote"), &bytes)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<u64>>> {
        match std::fs::read(self.0.dir.join("vote")) {
            // Read back as not committed: a node that was leader does not take the role up again
            // in the same term after a restart (openraft would), since the entries it executed
            // but never logged are rolled back and their transaction ids must never be reused for
            // other transactions. It wins a new term instead (CCF: a restart is a new view).
            Ok(b) => serde_json::from_slice::<Vote<u64>>(&b)
                .map(|v| match v.leader_id().voted_for() {
                    Some(n) if v.is_committed() => Some(Vote::new(v.leader_id().get_term(), n)),
                    _ => Some(v),
                })
                .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(ErrorSubject::Vote, ErrorVerb::Read, e)),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let r = self.0.append_entries(entries).await;
        match &r {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        r
    }

    async fn truncate(&mut self, log_id: LogId) -> SResult<()> {
        self.0.cut_from(log_id.index, "a conflicting suffix")
    }

    async fn purge(&mut self, _log_id: LogId) -> SResult<()> {
        // The ledger is the audit trail: it is never purged.
        Ok(())
    }
}

/// Raft's state machine: applying committed entries commits them in the engine.
#[derive(Clone)]
pub struct StateMachine(pub Arc<Replica>);

/// Raft never builds snapshots (see [`crate::raft_config`]).
pub struct NoSnapshots;

impl RaftSnapshotBuilder<TypeConfig> for NoSnapshots {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        Err(io_error(
            ErrorSubject::None,
            ErrorVerb::Write,
            "ccl's Raft does not snapshot: joining nodes start from the engine's snapshots",
        ))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = NoSnapshots;

    async fn applied_state(&mut self) -> SResult<(Option<LogId>, StoredMembership)> {
        Ok(self
            .0
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<()>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut n = 0;
        let mut last = None;
        let mut membership = None;
        for e in entries {
            n += 1;
            if let EntryPayload::Membership(m) = &e.payload {
                membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
            }
            last = Some(e.log_id);
        }
        if let Some(last) = last {
            let seqno = self.0.side().seqno_at(last.index);
            if seqno > 0 {
                self.0
                    .engine()
                    .commit_up_to(seqno)
                    .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
            }
            let mut a = self.0.applied.lock().unwrap_or_else(|p| p.into_inner());
            a.0 = Some(last);
            if let Some(m) = membership {
                a.1 = m;
            }
        }
        Ok(vec![(); n])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        NoSnapshots
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<std::io::Cursor<Vec<u8>>>> {
        Ok(Box::new(std::io::Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<u64, crate::NodeAddr>,
        _snapshot: Box<std::io::Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        Err(io_error(
            ErrorSubject::None,
            ErrorVerb::Write,
            "ccl's Raft does not install snapshots: a lagging node rejoins",
        ))
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        // A node that joined from an engine snapshot: Raft's log starts after the base, and Raft
        // must see a snapshot covering what came before it. Its data stays with the engine.
        let base = self.0.side().base.clone();
        Ok(base.map(|b| Snapshot {
            meta: SnapshotMeta {
                last_log_id: Some(b.log_id),
                last_membership: b.membership,
                snapshot_id: format!("engine-{}", b.seqno),
            },
            snapshot: Box::new(std::io::Cursor::new(Vec::new())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, t: u64, s: Option<(u64, u64)>) -> Record {
        Record { i, t, s, m: None }
    }

    #[test]
    fn the_side_log_survives_reopening_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SideLog::open(dir.path()).unwrap();
        log.append(vec![rec(0, 0, None), rec(1, 1, Some((1, 4)))])
            .unwrap();
        log.append(vec![rec(2, 1, None), rec(3, 2, Some((5, 5)))])
            .unwrap();
        assert_eq!(log.last_seqno(), 5);
        assert_eq!(log.seqno_at(2), 4);
        assert_eq!(log.seqno_at(0), 0);
        drop(log);
        // A torn last line is cut.
        let path = dir.path().join("log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"0123456789abcdef {\"i\":4");
        std::fs::write(&path, &bytes).unwrap();
        let mut log = SideLog::open(dir.path()).unwrap();
        assert_eq!(log.records.len(), 4);
        assert_eq!(log.next_index(), 4);
        // A corrupted line ends the log there.
        log.truncate(2).unwrap();
        assert_eq!(log.last_seqno(), 4);
        assert_eq!(log.next_index(), 2);
        log.append(vec![rec(2, 3, Some((5, 7)))]).unwrap();
        drop(log);
        let log = SideLog::open(dir.path()).unwrap();
        assert_eq!(log.records.len(), 3);
        assert_eq!(log.last_seqno(), 7);
        assert_eq!(log.last_log_id().unwrap().leader_id.term, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let log = SideLog::open(dir.path()).unwrap();
        assert_eq!(log.records.len(), 2, "a line whose checksum fails is cut");
    }

    /// After a power loss the side log may be ahead of the ledger (their fsyncs run side by
    /// side): reopening cuts the records whose entries the ledger lacks, and every record after
    /// them, and keeps those the ledger covers.
    #[test]
    fn reopening_cuts_side_records_beyond_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ccl_engine::EngineConfig {
            presigned_nonces: 0,
            ..Default::default()
        };
        let identity = ccl_engine::identity::Identity::generate(&["n0".into()]).unwrap();
        let engine = Engine::create(
            dir.path(),
            cfg,
            identity,
            ccl_ledger::secrets::LedgerSecret::from_bytes([7u8; 32]),
            |_| Ok(()),
        )
        .unwrap();
        let last = engine.last_seqno();
        assert!(last >= 1);
        {
            let mut side = SideLog::open(&dir.path().join(RAFT_DIR)).unwrap();
            side.append(vec![
                rec(0, 0, None),
                rec(1, 1, Some((1, last))),
                rec(2, 1, None),
                rec(3, 1, Some((last + 1, last + 3))),
                rec(4, 1, None),
            ])
            .unwrap();
        }
        let replica = Replica::open(Arc::new(Mutex::new(engine)), dir.path()).unwrap();
        assert_eq!(replica.logged_seqno(), last);
        assert_eq!(replica.durable_seqno(), last);
        assert_eq!(replica.side().next_index(), 3, "records 3 and 4 are cut");
        drop(replica);
        // The cut is on disk.
        let side = SideLog::open(&dir.path().join(RAFT_DIR)).unwrap();
        assert_eq!(side.next_index(), 3);
        assert_eq!(side.last_seqno(), last);
    }

    /// An append whose replicated signature does not verify (a primary signing with a key
    /// other than its certificate's) fails and leaves nothing of itself: neither side records
    /// nor engine entries; the genuine primary's entries are appended after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_whose_signature_does_not_verify_leaves_nothing() {
        use ccl_engine::identity::Identity;
        let cfg = || ccl_engine::EngineConfig {
            presigned_nonces: 0,
            ..Default::default()
        };
        let secret = || ccl_ledger::secrets::LedgerSecret::from_bytes([7u8; 32]);
        let (pdir, wdir, bdir) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let id = Identity::generate(&["n0".into()]).unwrap();
        let wrong = Identity {
            node_key: ccl_crypto::SigningKey::generate(ccl_crypto::Curve::P384).unwrap(),
            ..id.clone()
        };
        let raw = |e: &Engine| -> Vec<serde_bytes::ByteBuf> {
            (1..=e.last_seqno())
                .map(|s| serde_bytes::ByteBuf::from(e.handle().raw_entry(s).unwrap()))
                .collect()
        };
        let mut genuine =
            Engine::create(pdir.path(), cfg(), id.clone(), secret(), |_| Ok(())).unwrap();
        genuine.finish().unwrap();
        let mut forged = Engine::create(wdir.path(), cfg(), wrong, secret(), |_| Ok(())).unwrap();
        forged.finish().unwrap();

        let b = Engine::open(
            bdir.path(),
            cfg(),
            id.new_node(&[]).unwrap(),
            ccl_ledger::secrets::LedgerSecrets::new(secret()),
        )
        .unwrap();
        let replica = Arc::new(Replica::open(Arc::new(Mutex::new(b)), bdir.path()).unwrap());
        let first = replica.side().next_index();
        let entry = |entries| Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), first),
            payload: EntryPayload::Normal(Batch {
                first_seqno: 1,
                entries: Arc::new(entries),
            }),
        };
        let err = replica
            .append_entries(vec![entry(raw(&forged))])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        assert_eq!(replica.side().next_index(), first);
        assert_eq!(replica.engine().last_seqno(), 0);
        assert_eq!(replica.durable_seqno(), 0);

        replica
            .append_entries(vec![entry(raw(&genuine))])
            .await
            .unwrap();
        assert_eq!(replica.side().next_index(), first + 1);
        assert_eq!(replica.engine().last_seqno(), genuine.last_seqno());
        assert_eq!(replica.durable_seqno(), genuine.last_seqno());
        assert_eq!(replica.engine().root(), genuine.root());
    }
}
