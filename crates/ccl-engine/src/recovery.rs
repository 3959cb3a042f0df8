//! Opening a data directory: the ledger (torn tail cut), the store (latest committed snapshot,
//! then the ledger after it), the Merkle tree (reconciled with the ledger and checked against the
//! last signature), and the indexes receipts need (signatures, views).

use crate::handle::{Shared, latest_snapshot, load_snapshot};
use crate::{
    Engine, EngineConfig, EngineError, Identity, LEDGER_DIR, MERKLE_DIR, SNAPSHOTS_DIR, io_err,
};
use ccl_ledger::entry::{Entry, decode_maps};
use ccl_ledger::ledger::{Ledger, LedgerOptions};
use ccl_ledger::merkle::{FileNodeStore, Frontier, MerkleTree};
use ccl_ledger::secrets::LedgerSecrets;
use ccl_ledger::tables::{self, PrimarySignature};
use ccl_store::{State, Store};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(crate) fn open(
    dir: &Path,
    cfg: EngineConfig,
    identity: Identity,
    secrets: LedgerSecrets,
    public_only: bool,
) -> Result<Engine, EngineError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ledger_dir = dir.join(LEDGER_DIR);
    // Opening checks the in-progress chunk's structure; whether each of its entries authenticates
    // under its ledger secret is checked by the replay below, which learns the secrets that
    // rekeys hand out through the ledger as it goes: a torn or scribbled tail is cut there.
    let mut check = |_: &Entry<'_>| true;
    let (ledger, report) = Ledger::open(
        &ledger_dir,
        LedgerOptions {
            chunk_size: cfg.chunk_size,
        },
        &mut check,
    )?;
    if let Some((bytes, reason)) = &report.truncated {
        tracing::warn!(bytes, %reason, "cut the ledger's torn tail");
    }
    let mut ledger = ledger;
    if ledger.last_seqno() == 0
        && let Some((n, _)) = latest_snapshot(&dir.join(SNAPSHOTS_DIR), u64::MAX)?
    {
        // A node that joined from a snapshot: its ledger starts after it.
        ledger.set_start(n.seqno + 1);
    }
    let first = ledger.first_seqno();
    let mut last = ledger.last_seqno();
    let open_chunk_start = ledger.open_chunk_start();
    let reader = ledger.reader();

    // Store: the latest committed snapshot the ledger continues from, or the empty state.
    let snapshot =
        latest_snapshot(&dir.join(SNAPSHOTS_DIR), last)?.filter(|(n, _)| n.seqno + 1 >= first);
    let mut secrets = secrets;
    let (state, snapshot_seqno, snapshot_tree) = match &snapshot {
        Some((name, bytes)) => {
            let state = match load_snapshot(bytes, &secrets) {
                Ok(s) => s,
                Err(_) if first <= name.seqno => {
                    // Encrypted under a secret a rekey handed out before it: learned from the
                    // ledger the snapshot summarises.
                    learn_up_to(&reader, &mut secrets, &identity, first, name.seqno)?;
                    load_snapshot(bytes, &secrets)?
                }
                Err(e) => return Err(e),
            };
            let (e, _) = ccl_ledger::snapshot::split_snapshot_file(bytes)
                .map_err(|e| EngineError::Corrupt(format!("snapshot {}: {e}", name.file_name())))?;
            let pd = e
                .public_domain()
                .map_err(|e| EngineError::Corrupt(format!("snapshot: {e}")))?;
            let hash: Option<[u8; 32]> = pd
                .snapshot
                .as_ref()
                .and_then(|h| h.hash_at_snapshot.try_into().ok());
            let frontier = state
                .get(tables::TREE, &tables::SINGLETON_KEY)
                .and_then(|v| Frontier::from_bytes(&v.value));
            let tree = match (frontier, hash) {
                (Some(mut f), Some(h)) if f.size() == name.seqno => {
                    f.append(h);
                    Some(f)
                }
                _ => None,
            };
            (state, name.seqno, tree)
        }
        None if first == 1 => (State::default(), 0, None),
        None => {
            return Err(EngineError::Corrupt(format!(
                "the ledger starts at seqno {first} but there is no committed snapshot to start from"
            )));
        }
    };
    let store = Arc::new(Store::from_state(state));

    // Merkle tree: what the node store holds, cut to the ledger; rebuilt below where it lacks leaves.
    let merkle_dir = dir.join(MERKLE_DIR);
    let mut tree = MerkleTree::with_store(Box::new(FileNodeStore::open(
        &merkle_dir,
        cfg.merkle_cache_pages,
    )?))?;
    if tree.len() > last + 1 {
        tree.truncate(last + 1)?;
    }
    if tree.len() < first {
        tree = match snapshot_tree {
            Some(f) if f.size() == snapshot_seqno + 1 && first == snapshot_seqno + 1 => {
                MerkleTree::from_frontier(
                    f,
                    Box::new(FileNodeStore::open(&merkle_dir, cfg.merkle_cache_pages)?),
                )?
            }
            _ if first == 1 => {
                MerkleTree::with_store(Box::new(fresh_store(&merkle_dir, cfg.merkle_cache_pages)?))?
            }
            _ => {
                return Err(EngineError::Corrupt(
                    "the Merkle tree cannot be rebuilt: no snapshot frontier".into(),
                ));
            }
        };
    }
    if tree.is_empty() {
        tree.append([0u8; 32])?; // leaf 0: seqnos start at 1
    }

    let shared = Arc::new(Shared::new(
        reader.clone(),
        tree,
        secrets,
        first,
        dir.to_path_buf(),
    ));
    if let Some((_, bytes)) = &snapshot
        && let Ok((e, _)) = ccl_ledger::snapshot::split_snapshot_file(bytes)
        && let Some(h) = e.public_domain().ok().and_then(|pd| pd.snapshot)
    {
        shared.set_view_history(&h.view_history);
    }

    // One pass over the ledger: views, signatures, missing Merkle leaves, store replay.
    let mut view = 0;
    let mut last_sig = 0;
    let mut last_sig_root = None;
    let identity = Arc::new(if cfg.presigned_nonces > 0 {
        let pool =
            ccl_crypto::presign::NoncePool::start(cfg.presigned_nonces).map_err(io_err(dir))?;
        identity.with_nonces(pool)
    } else {
        identity
    });
    let mut seqno = first;
    while seqno <= last {
        let bytes = reader.read_entry(seqno)?;
        let corrupt = |m: String| EngineError::Corrupt(format!("ledger entry {seqno}: {m}"));
        let (e, _) = Entry::parse(&bytes).map_err(|e| corrupt(e.to_string()))?;
        // The private domain, decrypted under the secret of its seqno: needed to replay it, and
        // to check every entry of the in-progress chunk (a torn tail is cut at the first entry
        // that does not authenticate).
        let in_progress = open_chunk_start.is_some_and(|s| seqno >= s);
        let plain = if seqno > snapshot_seqno || in_progress {
            let secrets = shared.secrets.read().unwrap_or_else(|p| p.into_inner());
            match secrets
                .for_seqno(seqno)
                .map(|s| e.decrypt_private(s.aead()))
            {
                Some(Ok(p)) => Some(p),
                None if public_only => None,
                _ if in_progress => {
                    drop(secrets);
                    tracing::warn!(
                        from = seqno,
                        to = last,
                        "cut the ledger's torn tail: an entry does not authenticate"
                    );
                    ledger.truncate(seqno - 1)?;
                    last = seqno - 1;
                    let mut t = shared.tree.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() > seqno {
                        t.truncate(seqno)?;
                    }
                    break;
                }
                None => return Err(corrupt("no ledger secret for it".into())),
                Some(Err(_)) => return Err(corrupt("fails its integrity check".into())),
            }
        } else {
            None
        };
        if e.txid.seqno != seqno || e.txid.view < view {
            return Err(corrupt(format!(
                "has transaction id {} after view {view}",
                e.txid
            )));
        }
        view = e.txid.view;
        if !shared.note_view(view, seqno) {
            return Err(corrupt(format!(
                "view {view} contradicts the snapshot's view history"
            )));
        }
        let pd = e.public_domain().map_err(|e| corrupt(e.to_string()))?;
        for m in pd.map_iter() {
            let m = m.map_err(|e| corrupt(e.to_string()))?;
            if m.name == tables::SIGNATURES {
                let (_, v) = m
                    .writes
                    .first()
                    .ok_or_else(|| corrupt("empty signatures map".into()))?;
                let ps: PrimarySignature =
                    serde_json::from_slice(v).map_err(|e| corrupt(e.to_string()))?;
                shared.add_signature(seqno);
                last_sig = seqno;
                last_sig_root = Some(ps.root);
            }
        }
        {
            let mut t = shared.tree.lock().unwrap_or_else(|p| p.into_inner());
            if seqno == t.len() {
                t.append(pd.leaf(&e.write_set_digest()))?;
            }
        }
        let mut maps = Vec::new();
        for m in pd.map_iter() {
            maps.push(m.map_err(|e| corrupt(e.to_string()))?);
        }
        if seqno > snapshot_seqno {
            let public = maps.len();
            if let Some(plain) = &plain {
                maps.extend(decode_maps(plain).map_err(|e| corrupt(e.to_string()))?);
            }
            store.apply(seqno, &maps);
            maps.truncate(public);
        }
        crate::learn_secrets(&shared, &identity, seqno, &maps)?;
        seqno += 1;
    }
    assert_eq!(
        store.version(),
        last.max(snapshot_seqno),
        "the store is replayed to the end of the ledger"
    );
    // The tree must reproduce the root the last signature signed; a node store damaged by a crash
    // is rebuilt from the ledger.
    if let Some(root) = last_sig_root {
        let mut t = shared.tree.lock().unwrap_or_else(|p| p.into_inner());
        let ours = t.root_at(last_sig).map(hex::encode).ok();
        if ours.as_deref() != Some(root.as_str()) {
            if first != 1 {
                return Err(EngineError::Corrupt(format!(
                    "the Merkle tree does not reproduce the root signed at seqno {last_sig}"
                )));
            }
            tracing::warn!(
                seqno = last_sig,
                "Merkle node store disagrees with the ledger: rebuilding it"
            );
            let mut fresh = MerkleTree::with_store(Box::new(fresh_store(
                &merkle_dir,
                cfg.merkle_cache_pages,
            )?))?;
            fresh.append([0u8; 32])?;
            for seqno in 1..=last {
                let bytes = reader.read_entry(seqno)?;
                let (e, _) = Entry::parse(&bytes)
                    .map_err(|e| EngineError::Corrupt(format!("ledger entry {seqno}: {e}")))?;
                let pd = e
                    .public_domain()
                    .map_err(|e| EngineError::Corrupt(format!("ledger entry {seqno}: {e}")))?;
                fresh.append(pd.leaf(&e.write_set_digest()))?;
            }
            if fresh.root_at(last_sig).map(hex::encode).ok().as_deref() != Some(root.as_str()) {
                return Err(EngineError::Corrupt(format!(
                    "the ledger does not reproduce the root signed at seqno {last_sig}"
                )));
            }
            *t = fresh;
        }
    }
    let committed = ledger.committed_seqno();
    store.compact(committed);
    shared.committed.store(committed, Ordering::Release);
    shared.last_seqno.store(last, Ordering::Release);
    shared.current_view.store(view, Ordering::Release);
    let last_snapshot_seqno =
        latest_snapshot(&dir.join(SNAPSHOTS_DIR), last)?.map_or(0, |(n, _)| n.seqno);
    Ok(Engine {
        cfg,
        dir: dir.to_path_buf(),
        store,
        ledger,
        shared,
        identity,
        view,
        last_sig_seqno: last_sig,
        last_sig_at: Instant::now(),
        last_sig_txs: 0,
        txs_since_sig: last - last_sig.max(first.saturating_sub(1)),
        buf: Vec::new(),
        pending_snapshots: Vec::new(),
        snapshots_in_flight: crate::SnapshotsInFlight::default(),
        last_snapshot_seqno,
        outbox_first: last + 1,
        outbox: Vec::new(),
        endorsed_signer: None,
    })
}

/// An empty node store in `dir` (whatever was there is removed).
fn fresh_store(dir: &Path, cache_pages: usize) -> Result<FileNodeStore, EngineError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    Ok(FileNodeStore::open(dir, cache_pages)?)
}

/// Learns the secrets that entries `from..=to` hand to this node.
fn learn_up_to(
    reader: &ccl_ledger::ledger::LedgerReader,
    secrets: &mut LedgerSecrets,
    identity: &Identity,
    from: u64,
    to: u64,
) -> Result<(), EngineError> {
    for seqno in from..=to {
        let bytes = reader.read_entry(seqno)?;
        let corrupt = |m: String| EngineError::Corrupt(format!("ledger entry {seqno}: {m}"));
        let (e, _) = Entry::parse(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let pd = e.public_domain().map_err(|e| corrupt(e.to_string()))?;
        let mut maps = Vec::new();
        for m in pd.map_iter() {
            let m = m.map_err(|e| corrupt(e.to_string()))?;
            if m.name == tables::ENCRYPTED_LEDGER_SECRETS {
                maps.push(m);
            }
        }
        crate::learn_secrets_into(secrets, identity, seqno, &maps)?;
    }
    Ok(())
}
