//! Read side of the engine: transaction status, receipts, historical transactions and states.
//! Usable from any thread while the engine commits.

use crate::{EngineError, SNAPSHOTS_DIR};
use ccl_crypto::{Digest32, sha256};
use ccl_ledger::entry::{Entry, OwnedMapWrites, decode_maps};
use ccl_ledger::ledger::LedgerReader;
use ccl_ledger::merkle::{MerkleTree, ProofStep};
use ccl_ledger::secrets::LedgerSecrets;
use ccl_ledger::snapshot::{SnapshotMapIter, SnapshotName, split_snapshot_file};
use ccl_ledger::tables::{self, PrimarySignature};
use ccl_ledger::txid::TxId;
use ccl_store::{State, Store};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Signature records kept in memory for receipts.
const SIGNATURE_CACHE: usize = 4096;

/// A signature transaction, as receipts need it.
#[derive(Debug)]
pub(crate) struct SigInfo {
    pub node_id: String,
    pub cert: String,
    pub sig: Vec<u8>,
}

pub(crate) struct Shared {
    pub reader: LedgerReader,
    pub tree: Mutex<MerkleTree>,
    pub secrets: RwLock<LedgerSecrets>,
    /// Seqnos of signature transactions, ascending.
    pub sigs: RwLock<Vec<u64>>,
    pub sig_cache: Mutex<lru::LruCache<u64, Arc<SigInfo>>>,
    /// (view, first seqno in it), ascending.
    pub views: RwLock<Vec<(u64, u64)>>,
    pub last_noted_view: AtomicU64,
    pub committed: AtomicU64,
    pub last_seqno: AtomicU64,
    pub current_view: AtomicU64,
    pub first_seqno: u64,
    pub dir: PathBuf,
    /// Told of appends and commits (see [`crate::EngineEvent`]).
    pub listener: RwLock<Option<crate::Listener>>,
}

impl Shared {
    /// Runs `f` with the ledger secret that applies to `seqno` (`None`: no secret covers it).
    pub fn with_secret<R>(
        &self,
        seqno: u64,
        f: impl FnOnce(&ccl_ledger::secrets::LedgerSecret) -> R,
    ) -> Option<R> {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        secrets.for_seqno(seqno).map(f)
    }

    pub fn new(
        reader: LedgerReader,
        tree: MerkleTree,
        secrets: LedgerSecrets,
        first_seqno: u64,
        dir: PathBuf,
    ) -> Self {
        Shared {
            reader,
            tree: Mutex::new(tree),
            secrets: RwLock::new(secrets),
            sigs: RwLock::new(Vec::new()),
            sig_cache: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(SIGNATURE_CACHE).expect("non-zero"),
            )),
            views: RwLock::new(Vec::new()),
            last_noted_view: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            last_seqno: AtomicU64::new(0),
            current_view: AtomicU64::new(0),
            first_seqno,
            dir,
            listener: RwLock::new(None),
        }
    }

    /// Tells the listener, if any, of `event`.
    pub fn tell(&self, event: crate::EngineEvent) {
        if let Some(l) = &*self.listener.read().unwrap_or_else(|p| p.into_inner()) {
            l(event);
        }
    }

    /// Records that `seqno` is in `view`. Returns false when that contradicts the history already
    /// known (a view going backwards, or a seqno the history places in another view).
    #[must_use]
    pub fn note_view(&self, view: u64, seqno: u64) -> bool {
        if self.last_noted_view.load(Ordering::Relaxed) == view {
            return true;
        }
        let mut v = self.views.write().unwrap_or_else(|p| p.into_inner());
        match v.last() {
            Some(l) if l.0 == view => {}
            // Already covered (a snapshot's view history, then the ledger it summarises):
            // only check that the two agree.
            Some(l) if l.0 > view => {
                let i = v.partition_point(|(_, s)| *s <= seqno);
                return i.checked_sub(1).is_some_and(|i| v[i].0 == view);
            }
            Some(l) if l.1 >= seqno => return false,
            _ => v.push((view, seqno)),
        }
        self.last_noted_view.store(view, Ordering::Relaxed);
        true
    }

    /// The view of the transaction at `seqno` (if it exists).
    pub fn view_of(&self, seqno: u64) -> Option<u64> {
        if seqno == 0 || seqno > self.last_seqno.load(Ordering::Acquire) {
            return None;
        }
        let v = self.views.read().unwrap_or_else(|p| p.into_inner());
        let i = v.partition_point(|(_, s)| *s <= seqno);
        i.checked_sub(1).map(|i| v[i].0)
    }

    /// CCF's view history: element `v` is the first seqno of view `v` (or of the next view that
    /// has transactions).
    pub fn view_history(&self) -> Vec<u64> {
        let v = self.views.read().unwrap_or_else(|p| p.into_inner());
        let Some(&(max, _)) = v.last() else {
            return Vec::new();
        };
        (0..=max)
            .map(|view| v.iter().find(|(w, _)| *w >= view).map_or(0, |(_, s)| *s))
            .collect()
    }

    pub fn set_view_history(&self, history: &[u64]) {
        let mut v = self.views.write().unwrap_or_else(|p| p.into_inner());
        v.clear();
        for (view, start) in history.iter().enumerate() {
            if *start == 0 {
                continue;
            }
            // Views without transactions share the next view's start: keep the last of them.
            if v.last().is_some_and(|l: &(u64, u64)| l.1 == *start) {
                v.pop();
            }
            v.push((view as u64, *start));
        }
        if let Some(l) = v.last() {
            self.last_noted_view.store(l.0, Ordering::Relaxed);
        }
    }

    pub fn add_signature(&self, seqno: u64) {
        self.sigs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(seqno);
    }

    pub fn last_signature_at_or_before(&self, seqno: u64) -> u64 {
        let s = self.sigs.read().unwrap_or_else(|p| p.into_inner());
        let i = s.partition_point(|x| *x <= seqno);
        i.checked_sub(1).map_or(0, |i| s[i])
    }

    fn first_signature_after(&self, seqno: u64) -> Option<u64> {
        let s = self.sigs.read().unwrap_or_else(|p| p.into_inner());
        s.get(s.partition_point(|x| *x <= seqno)).copied()
    }

    /// Forgets everything after `seqno` (rollback).
    pub fn truncate(&self, seqno: u64) {
        self.sigs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| *s <= seqno);
        let mut v = self.views.write().unwrap_or_else(|p| p.into_inner());
        v.retain(|(_, s)| *s <= seqno);
        self.last_noted_view
            .store(v.last().map_or(0, |l| l.0), Ordering::Relaxed);
        self.last_seqno.store(seqno, Ordering::Release);
        let mut cache = self.sig_cache.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<u64> = cache
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| *k > seqno)
            .collect();
        for k in stale {
            cache.pop(&k);
        }
    }

    fn signature(&self, seqno: u64) -> Result<Arc<SigInfo>, EngineError> {
        if let Some(s) = self
            .sig_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&seqno)
        {
            return Ok(s.clone());
        }
        let bytes = self.reader.read_entry(seqno)?;
        let corrupt = |m: &str| EngineError::Corrupt(format!("signature transaction {seqno}: {m}"));
        let (e, _) = Entry::parse(&bytes).map_err(|e| corrupt(&e.to_string()))?;
        let pd = e.public_domain().map_err(|e| corrupt(&e.to_string()))?;
        for m in pd.map_iter() {
            let m = m.map_err(|e| corrupt(&e.to_string()))?;
            if m.name != tables::SIGNATURES {
                continue;
            }
            let (_, v) = m
                .writes
                .first()
                .ok_or_else(|| corrupt("empty signatures map"))?;
            let ps: PrimarySignature =
                serde_json::from_slice(v).map_err(|e| corrupt(&e.to_string()))?;
            use base64::Engine as _;
            let sig = base64::engine::general_purpose::STANDARD
                .decode(&ps.sig)
                .map_err(|e| corrupt(&e.to_string()))?;
            let info = Arc::new(SigInfo {
                node_id: ps.node,
                cert: ps.cert,
                sig,
            });
            self.sig_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(seqno, info.clone());
            return Ok(info);
        }
        Err(corrupt("no signature in it"))
    }
}

/// The status of a transaction id, as CCF and Azure report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// Not known to this node (yet).
    Unknown,
    /// In the ledger, not committed yet.
    Pending,
    Committed,
    /// Never will be: another transaction holds its seqno, or it was rolled back.
    Invalid,
}

impl TxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TxStatus::Unknown => "Unknown",
            TxStatus::Pending => "Pending",
            TxStatus::Committed => "Committed",
            TxStatus::Invalid => "Invalid",
        }
    }
}

/// Everything a receipt for one transaction holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptData {
    pub txid: TxId,
    /// Signing node's certificate, PEM.
    pub cert: String,
    pub node_id: String,
    pub write_set_digest: Digest32,
    pub commit_evidence: String,
    pub claims_digest: Digest32,
    pub proof: Vec<ProofStep>,
    /// DER ECDSA signature over the root.
    pub signature: Vec<u8>,
    /// Seqno of the signature transaction that covers the transaction.
    pub signature_seqno: u64,
    /// Certificates that chain the signing service identity to the current one (a transaction
    /// from before a disaster recovery), oldest first.
    pub service_endorsements: Vec<String>,
}

impl ReceiptData {
    pub fn leaf(&self) -> Digest32 {
        ccl_crypto::sha256_parts(&[
            &self.write_set_digest,
            &sha256(self.commit_evidence.as_bytes()),
            &self.claims_digest,
        ])
    }

    pub fn root(&self) -> Digest32 {
        ccl_ledger::merkle::root_from_proof(&self.leaf(), &self.proof)
    }

    /// The receipt, to serialise in either shape or verify.
    pub fn to_receipt(&self) -> ccl_receipt::Receipt {
        ccl_receipt::Receipt {
            txid: Some(self.txid.to_string()),
            cert: self.cert.clone(),
            node_id: self.node_id.clone(),
            signature: self.signature.clone(),
            proof: self
                .proof
                .iter()
                .map(|p| match p {
                    ProofStep::Left(d) => ccl_receipt::ProofStep::Left(*d),
                    ProofStep::Right(d) => ccl_receipt::ProofStep::Right(*d),
                })
                .collect(),
            leaf: ccl_receipt::LeafComponents {
                write_set_digest: self.write_set_digest,
                commit_evidence: self.commit_evidence.clone(),
                claims_digest: self.claims_digest,
            },
            is_signature_transaction: false,
            service_endorsements: self.service_endorsements.clone(),
        }
    }
}

/// A transaction read back from the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoricalTx {
    pub txid: TxId,
    pub claims_digest: Option<Digest32>,
    pub write_set_digest: Digest32,
    /// Public maps, then private maps (decrypted).
    pub maps: Vec<OwnedMapWrites>,
}

impl HistoricalTx {
    /// The value written to `key` of `map` by this transaction, if any.
    pub fn written(&self, map: &str, key: &[u8]) -> Option<&[u8]> {
        self.maps
            .iter()
            .filter(|m| m.name == map)
            .flat_map(|m| m.writes.iter())
            .find(|(k, _)| k == key)
            .map(|(_, v)| &v[..])
    }
}

/// Cloneable, thread-safe reads of an engine.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) store: Arc<Store>,
}

impl EngineHandle {
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn committed_seqno(&self) -> u64 {
        self.shared.committed.load(Ordering::Acquire)
    }

    pub fn last_seqno(&self) -> u64 {
        self.shared.last_seqno.load(Ordering::Acquire)
    }

    pub fn current_view(&self) -> u64 {
        self.shared.current_view.load(Ordering::Acquire)
    }

    /// The id of the last committed transaction.
    pub fn committed_txid(&self) -> TxId {
        let s = self.committed_seqno();
        TxId::new(self.shared.view_of(s).unwrap_or(0), s)
    }

    pub fn view_of(&self, seqno: u64) -> Option<u64> {
        self.shared.view_of(seqno)
    }

    pub fn tx_status(&self, txid: TxId) -> TxStatus {
        if txid.seqno == 0 {
            return TxStatus::Invalid;
        }
        match self.shared.view_of(txid.seqno) {
            Some(v) if v == txid.view => {
                if txid.seqno <= self.committed_seqno() {
                    TxStatus::Committed
                } else {
                    TxStatus::Pending
                }
            }
            Some(v) if v > txid.view => TxStatus::Invalid,
            Some(_) => TxStatus::Unknown,
            None if txid.view < self.current_view() => TxStatus::Invalid,
            None => TxStatus::Unknown,
        }
    }

    /// The receipt of the committed transaction at `seqno`.
    pub fn receipt(&self, seqno: u64) -> Result<ReceiptData, EngineError> {
        if seqno == 0 || seqno < self.shared.first_seqno {
            return Err(EngineError::NotFound(seqno));
        }
        if seqno > self.committed_seqno() {
            return Err(EngineError::NotCommitted(seqno));
        }
        let sig_seqno = self
            .shared
            .first_signature_after(seqno)
            .filter(|s| *s <= self.committed_seqno())
            .ok_or(EngineError::NotCommitted(seqno))?;
        let sig = self.shared.signature(sig_seqno)?;
        let bytes = self.shared.reader.read_entry(seqno)?;
        let corrupt = |m: String| EngineError::Corrupt(format!("transaction {seqno}: {m}"));
        let (e, _) = Entry::parse(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let pd = e.public_domain().map_err(|e| corrupt(e.to_string()))?;
        let commit_evidence = self
            .shared
            .with_secret(seqno, |s| s.commit_evidence(e.txid))
            .ok_or_else(|| corrupt("no ledger secret for it".into()))?;
        if pd.commit_evidence_digest != Some(sha256(commit_evidence.as_bytes())) {
            return Err(corrupt(
                "commit evidence does not match the ledger secret".into(),
            ));
        }
        let proof = self
            .shared
            .tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .proof(seqno, sig_seqno)?;
        Ok(ReceiptData {
            txid: e.txid,
            cert: sig.cert.clone(),
            node_id: sig.node_id.clone(),
            write_set_digest: e.write_set_digest(),
            commit_evidence,
            claims_digest: pd.claims_digest.unwrap_or([0u8; 32]),
            proof,
            signature: sig.sig.clone(),
            signature_seqno: sig_seqno,
            service_endorsements: self.service_endorsements(seqno),
        })
    }

    /// The public maps a transaction wrote (no ledger secret needed: a recovering service reads
    /// the old ledger's public domain).
    pub fn read_public(&self, seqno: u64) -> Result<HistoricalTx, EngineError> {
        if seqno == 0 || seqno > self.last_seqno() || seqno < self.shared.first_seqno {
            return Err(EngineError::NotFound(seqno));
        }
        let bytes = self.shared.reader.read_entry(seqno)?;
        let corrupt = |m: String| EngineError::Corrupt(format!("ledger entry {seqno}: {m}"));
        let (e, _) = Entry::parse(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let pd = e.public_domain().map_err(|e| corrupt(e.to_string()))?;
        let mut maps = Vec::new();
        for m in pd.map_iter() {
            maps.push(m.map_err(|e| corrupt(e.to_string()))?.to_owned());
        }
        Ok(HistoricalTx {
            txid: e.txid,
            claims_digest: pd.claims_digest,
            write_set_digest: e.write_set_digest(),
            maps,
        })
    }

    /// The endorsements a receipt for `seqno` needs: those of every service identity from the
    /// one that signed it on, oldest first (none for the current service's transactions).
    pub fn service_endorsements(&self, seqno: u64) -> Vec<String> {
        let state = self.store.state();
        let Some(v) = state.get(tables::SERVICE_ENDORSEMENTS, &tables::SINGLETON_KEY) else {
            return Vec::new();
        };
        let mut all: Vec<tables::ServiceEndorsement> =
            serde_json::from_slice(&v.value).unwrap_or_default();
        all.sort_by_key(|e| e.to_seqno);
        all.into_iter()
            .filter(|e| e.to_seqno >= seqno)
            .map(|e| e.cert)
            .collect()
    }

    /// Reads back the transaction at `seqno` from the ledger, private maps decrypted.
    /// The bytes of ledger entry `seqno`, as written (consensus ships them to other replicas).
    pub fn raw_entry(&self, seqno: u64) -> Result<Vec<u8>, EngineError> {
        Ok(self.shared.reader.read_entry(seqno)?)
    }

    pub fn read_transaction(&self, seqno: u64) -> Result<HistoricalTx, EngineError> {
        if seqno == 0 || seqno > self.last_seqno() || seqno < self.shared.first_seqno {
            return Err(EngineError::NotFound(seqno));
        }
        let bytes = self.shared.reader.read_entry(seqno)?;
        let secrets = self
            .shared
            .secrets
            .read()
            .unwrap_or_else(|p| p.into_inner());
        decode_transaction(&bytes, &secrets)
    }

    /// The state of every map as of `seqno`: from the store if it still holds it, else rebuilt
    /// from the latest snapshot at or before `seqno` and the ledger after it.
    pub fn state_at(&self, seqno: u64) -> Result<State, EngineError> {
        if seqno > self.last_seqno() {
            return Err(EngineError::NotFound(seqno));
        }
        if let Some(s) = self.store.state_at(seqno) {
            return Ok(s);
        }
        let secrets = self
            .shared
            .secrets
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let (mut state, from) = match latest_snapshot(&self.shared.dir.join(SNAPSHOTS_DIR), seqno)?
        {
            Some((name, bytes)) => (load_snapshot(&bytes, &secrets)?, name.seqno + 1),
            None if self.shared.first_seqno == 1 => (State::default(), 1),
            None => return Err(EngineError::NotFound(seqno)),
        };
        for s in from..=seqno {
            let bytes = self.shared.reader.read_entry(s)?;
            let tx = decode_transaction(&bytes, &secrets)?;
            let maps: Vec<_> = tx.maps.iter().map(|m| m.borrow()).collect();
            state.apply(s, &maps);
        }
        Ok(state)
    }
}

/// Decodes a ledger entry: public maps, and private maps decrypted with the secret of its seqno.
pub(crate) fn decode_transaction(
    bytes: &[u8],
    secrets: &LedgerSecrets,
) -> Result<HistoricalTx, EngineError> {
    let corrupt = |m: String| EngineError::Corrupt(format!("ledger entry: {m}"));
    let (e, _) = Entry::parse(bytes).map_err(|e| corrupt(e.to_string()))?;
    let pd = e.public_domain().map_err(|e| corrupt(e.to_string()))?;
    let mut maps: Vec<OwnedMapWrites> = Vec::new();
    for m in pd.map_iter() {
        maps.push(m.map_err(|e| corrupt(e.to_string()))?.to_owned());
    }
    let secret = secrets
        .for_seqno(e.txid.seqno)
        .ok_or_else(|| corrupt(format!("no ledger secret for seqno {}", e.txid.seqno)))?;
    let plain = e
        .decrypt_private(secret.aead())
        .map_err(|_| corrupt(format!("entry {} fails its integrity check", e.txid)))?;
    for m in decode_maps(&plain).map_err(|e| corrupt(e.to_string()))? {
        maps.push(m.to_owned());
    }
    Ok(HistoricalTx {
        txid: e.txid,
        claims_digest: pd.claims_digest,
        write_set_digest: e.write_set_digest(),
        maps,
    })
}

/// The latest committed snapshot in `dir` at or before `seqno`.
pub(crate) fn latest_snapshot(
    dir: &std::path::Path,
    seqno: u64,
) -> Result<Option<(SnapshotName, Vec<u8>)>, EngineError> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut best: Option<SnapshotName> = None;
    for e in rd.flatten() {
        if let Some(n) = e.file_name().to_str().and_then(SnapshotName::parse)
            && n.committed
            && n.seqno <= seqno
            && best.is_none_or(|b| b.seqno < n.seqno)
        {
            best = Some(n);
        }
    }
    let Some(name) = best else { return Ok(None) };
    let path = dir.join(name.file_name());
    let bytes = std::fs::read(&path).map_err(crate::io_err(&path))?;
    Ok(Some((name, bytes)))
}

/// Loads the state held by a snapshot file.
pub(crate) fn load_snapshot(bytes: &[u8], secrets: &LedgerSecrets) -> Result<State, EngineError> {
    let corrupt = |m: String| EngineError::Corrupt(format!("snapshot: {m}"));
    let (e, _receipt) = split_snapshot_file(bytes).map_err(|e| corrupt(e.to_string()))?;
    let pd = e.public_domain().map_err(|e| corrupt(e.to_string()))?;
    let secret = secrets
        .for_seqno(e.txid.seqno)
        .ok_or_else(|| corrupt("no ledger secret for it".into()))?;
    let plain = e
        .decrypt_private(secret.aead())
        .map_err(|_| corrupt("fails its integrity check".into()))?;
    let public: Vec<_> = SnapshotMapIter::new(pd.maps)
        .collect::<Result<_, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    let private: Vec<_> = SnapshotMapIter::new(&plain)
        .collect::<Result<_, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(State::from_snapshot(
        e.txid.seqno,
        public.into_iter().chain(private),
    ))
}
