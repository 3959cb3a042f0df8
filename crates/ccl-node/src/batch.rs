//! Entry writes executed in batches: one lock of the engine for many writes.
//!
//! A request handler prepares its write outside any lock (JSON, claims, the stored value), queues
//! it, and waits for its transaction id. One thread per node, `ccl-writes`, takes the queued
//! writes and executes them under one lock of the engine, each as its own transaction with its
//! own seqno, in arrival order, then answers them all. Handlers wait on a channel and the thread
//! waits for the engine, so no runtime thread is blocked while the engine is busy (a signature,
//! say): TLS and HTTP work for other connections goes on meanwhile.
//!
//! Invariant: every queued write is answered, with its transaction id or an error; when the
//! node is dropped, the queue is closed and writes still queued are answered with an error.

use crate::api::{ApiError, index_key, register_collection};
use crate::{Shared, access, maps};
use axum::http::StatusCode;
use ccl_crypto::Digest32;
use ccl_ledger::txid::TxId;
use std::sync::{Arc, Condvar, Mutex, Weak};
use tokio::sync::oneshot;

/// Most writes executed under one lock of the engine: the proposer (signatures, Raft) waits no
/// longer than this many transactions.
pub const MAX_WRITES_PER_BATCH: usize = 256;

/// An entry write, prepared and waiting to be executed.
pub struct EntryWrite {
    /// The writer's user id (checked against the collection's access).
    pub user: String,
    pub collection: String,
    /// The value stored under the collection in the entries map.
    pub value: Vec<u8>,
    pub claims_digest: Digest32,
}

struct Queued {
    write: EntryWrite,
    reply: oneshot::Sender<Result<TxId, ApiError>>,
}

#[derive(Default)]
struct Inner {
    queued: Vec<Queued>,
    closed: bool,
    /// Whether the thread waits on `ready` (only then is it notified: a notification is a
    /// system call, and a busy thread takes the queue at the end of its batch anyway).
    waiting: bool,
}

/// The queue of writes waiting for the `ccl-writes` thread.
#[derive(Default)]
pub struct WriteQueue {
    inner: Mutex<Inner>,
    ready: Condvar,
}

impl WriteQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, q: Queued) -> Result<(), Queued> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(q);
        }
        inner.queued.push(q);
        if inner.waiting {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next batch; `None` once the queue is closed.
    fn next_batch(&self) -> Option<Vec<Queued>> {
        let mut inner = self.lock();
        let mut yielded = false;
        loop {
            if inner.closed {
                return None;
            }
            if !inner.queued.is_empty() {
                let n = inner.queued.len().min(MAX_WRITES_PER_BATCH);
                return Some(inner.queued.drain(..n).collect());
            }
            if !yielded {
                // Under load the next writes are usually a moment away: giving the CPU to the
                // handlers once is cheaper than sleeping and being woken.
                yielded = true;
                drop(inner);
                std::thread::yield_now();
                inner = self.lock();
                continue;
            }
            inner.waiting = true;
            inner = self.ready.wait(inner).unwrap_or_else(|p| p.into_inner());
            inner.waiting = false;
        }
    }

    /// Stops the thread; writes still queued are answered with an error (their senders drop).
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.queued.clear();
        self.ready.notify_all();
    }

    /// Whether no write is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().queued.is_empty()
    }
}

/// Closes the queue when the thread ends, however it ends (a broken invariant panics): later
/// writes are then refused at once rather than left waiting for a thread that is gone.
struct CloseOnExit(Arc<WriteQueue>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Starts the thread that executes `shared`'s queued writes; it ends when the queue is closed
/// (when the node is dropped).
pub fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
    let queue = shared.writes.clone();
    let node: Weak<Shared> = Arc::downgrade(shared);
    std::thread::Builder::new()
        .name("ccl-writes".into())
        .spawn(move || {
            let queue = CloseOnExit(queue);
            while let Some(batch) = queue.0.next_batch() {
                let Some(shared) = node.upgrade() else {
                    return;
                };
                execute(&shared, batch);
            }
        })?;
    Ok(())
}

/// Executes `write` (in a batch with others) and answers its transaction id.
pub async fn write_entry(shared: &Shared, write: EntryWrite) -> Result<TxId, ApiError> {
    let (reply, answer) = oneshot::channel();
    if shared.writes.push(Queued { write, reply }).is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the node is shutting down",
        ));
    }
    answer
        .await
        .map_err(|_| ApiError::internal("the write was dropped before it was executed"))?
}

fn execute(shared: &Shared, batch: Vec<Queued>) {
    let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    for Queued { write, reply } in batch {
        // The engine is locked: this transaction gets the next seqno.
        let seqno = e.last_seqno() + 1;
        let r = (|| {
            let mut tx = e.store().begin();
            if !access::may_write(tx.snapshot(), &write.user, &write.collection) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "the caller may not write to collection {}",
                        write.collection
                    ),
                ));
            }
            let bad = |e: ccl_store::TxError| ApiError::bad("InvalidEntry", e.to_string());
            tx.put(maps::ENTRIES, write.collection.as_bytes(), &write.value)
                .map_err(bad)?;
            tx.put(maps::ENTRY_INDEX, &index_key(&write.collection, seqno), b"")
                .map_err(bad)?;
            register_collection(&mut tx, &write.collection)?;
            let txid = e
                .commit(tx, Some(write.claims_digest))
                .map_err(ApiError::internal)?;
            assert_eq!(txid.seqno, seqno, "the engine assigns the next seqno");
            Ok(txid)
        })();
        // The handler may have gone (its client hung up); the write stands either way.
        let _ = reply.send(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(user: &str, collection: &str, i: usize) -> EntryWrite {
        EntryWrite {
            user: user.to_owned(),
            collection: collection.to_owned(),
            value: format!("value {i}").into_bytes(),
            claims_digest: [i as u8; 32],
        }
    }

    /// Many handlers writing at once, on several runtime threads: each write is executed once,
    /// in its own transaction, and a refused write takes no seqno and does not disturb the others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_each_get_one_transaction_and_refusals_take_none() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cfg = crate::test_config(
            dir.path().join("node"),
            "127.0.0.1:0".parse().expect("address"),
        );
        let (shared, _) = tokio::task::spawn_blocking(move || crate::open(&cfg))
            .await
            .expect("open task")
            .expect("open");
        // A private collection only "owner" may write.
        {
            let mut e = shared.engine.lock().expect("engine");
            let mut tx = e.store().begin();
            let access = serde_json::json!({"owner": "owner", "readers": [], "writers": []});
            tx.put(access::ACCESS, b"private", access.to_string().as_bytes())
                .expect("put");
            e.commit(tx, None).expect("commit");
        }
        let before = shared.handle.last_seqno();
        const N: usize = 600;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let shared = shared.clone();
            tasks.spawn(async move {
                let w = match i % 3 {
                    0 => write("owner", "private", i),
                    1 => write("intruder", "private", i),
                    _ => write("anyone", "subledger:0", i),
                };
                (i, write_entry(&shared, w).await)
            });
        }
        let mut seqnos = std::collections::BTreeSet::new();
        // A write the writes thread lost would never be answered: bound the wait.
        let wait = std::time::Duration::from_secs(60);
        while let Some(r) = tokio::time::timeout(wait, tasks.join_next())
            .await
            .expect("every write is answered")
        {
            let (i, r) = r.expect("task");
            if i % 3 == 1 {
                let e = r.expect_err("the intruder is refused");
                assert_eq!(e.status, StatusCode::FORBIDDEN);
            } else {
                let txid = r.expect("write");
                assert!(
                    seqnos.insert(txid.seqno),
                    "seqno {} given twice",
                    txid.seqno
                );
            }
        }
        let written = N - N / 3;
        assert_eq!(seqnos.len(), written);
        assert_eq!(shared.handle.last_seqno(), before + written as u64);
        assert_eq!(seqnos.first().copied(), Some(before + 1));
        assert_eq!(seqnos.last().copied(), Some(before + written as u64));
        assert!(shared.writes.is_empty());
    }
}
