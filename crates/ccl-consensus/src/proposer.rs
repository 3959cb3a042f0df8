//! The primary's side of replication: when this node becomes Raft leader it takes up the primary
//! role (a new view, a signature), then hands every entry it executes to Raft, in order, in
//! batches, and writes signature transactions when due.

use crate::log::Replica;
use crate::{Batch, MAX_BATCH_BYTES, Raft};
use futures::FutureExt;
use openraft::ServerState;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the proposer looks for new entries.
pub const PROPOSE_TICK: Duration = Duration::from_millis(1);

/// Whether this node is the primary now: Raft leader, with the primary role taken up in the
/// current term (so that what it executes carries the current view).
pub fn is_primary(replica: &Replica, raft: &Raft, me: u64) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    m.state == ServerState::Leader
        && m.current_leader == Some(me)
        && replica.primary_term.load(Ordering::Acquire) == m.current_term
}

/// Runs until the task is dropped. A round runs as soon as the engine has new entries, Raft has
/// written a proposal to the log, or the engine commits (which may make a signature due), and
/// at least every [`PROPOSE_TICK`] (signatures due by time).
pub async fn run(replica: Arc<Replica>, raft: Raft, me: u64) {
    let metrics = raft.metrics();
    let mut tick = tokio::time::interval(PROPOSE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = replica.wake.notified() => {}
        }
        let (leader, term) = {
            let m = metrics.borrow();
            (
                m.state == ServerState::Leader && m.current_leader == Some(me),
                m.current_term,
            )
        };
        if !leader {
            continue;
        }
        if let Err(e) = round(&replica, &raft, term) {
            tracing::error!(error = %e, "proposer");
        }
    }
}

/// One round: take up the role if the term is new, sign if due, propose what is new.
pub fn round(replica: &Replica, raft: &Raft, term: u64) -> Result<(), String> {
    let mut e = replica.engine.lock().unwrap_or_else(|p| p.into_inner());
    if replica.primary_term.load(Ordering::Acquire) != term {
        let logged = replica.logged_seqno();
        if e.last_seqno() > logged && !e.outbox_follows(logged) {
            tracing::info!(
                from = logged + 1,
                to = e.last_seqno(),
                "rolling back entries of a lost term"
            );
            e.rollback(logged).map_err(|e| e.to_string())?;
            e.take_outbox();
        }
        e.set_view(term);
        replica.primary_term.store(term, Ordering::Release);
        replica.proposed.store(0, Ordering::Release);
        // CCF's rule: a new primary signs at once, which commits what earlier terms left.
        e.emit_signature().map_err(|e| e.to_string())?;
        tracing::info!(term, last_seqno = e.last_seqno(), "primary");
    } else {
        e.maybe_emit_signature(Instant::now())
            .map_err(|e| e.to_string())?;
    }
    // Group commit: while Raft is still writing the last proposal to this node's log (an
    // fsync), new entries wait and go together in the next proposal, which the end of that
    // write wakes this task for. Under load a proposal then carries everything executed during
    // one fsync; alone, an entry is proposed at once.
    if replica.proposed.load(Ordering::Acquire) > replica.durable_seqno() {
        return Ok(());
    }
    let Some((first, entries)) = e.take_outbox() else {
        return Ok(());
    };
    replica
        .proposed
        .store(first + entries.len() as u64 - 1, Ordering::Release);
    // Proposed under the engine lock, so that Raft sees batches in seqno order.
    let mut first_seqno = first;
    let mut batch = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        if bytes + entry.len() > MAX_BATCH_BYTES && !batch.is_empty() {
            let n = batch.len() as u64;
            propose(
                raft,
                Batch {
                    first_seqno,
                    entries: Arc::new(std::mem::take(&mut batch)),
                },
            )?;
            first_seqno += n;
            bytes = 0;
        }
        bytes += entry.len();
        batch.push(serde_bytes::ByteBuf::from(entry));
    }
    propose(
        raft,
        Batch {
            first_seqno,
            entries: Arc::new(batch),
        },
    )
}

fn propose(raft: &Raft, batch: Batch) -> Result<(), String> {
    // `client_write_ff` enqueues on an unbounded channel: it completes on its first poll. The
    // answer is not needed (a transaction's fate is read from the engine), but is received, so
    // that Raft does not warn of a dropped channel.
    match raft.client_write_ff(batch).now_or_never() {
        Some(Ok(rx)) => {
            tokio::spawn(async move {
                let _ = rx.await;
            });
            Ok(())
        }
        Some(Err(e)) => Err(format!("Raft stopped: {e}")),
        None => Err("Raft did not take the proposal at once".into()),
    }
}
