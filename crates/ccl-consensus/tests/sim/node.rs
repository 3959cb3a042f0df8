//! A replica's software: a real engine in its own data directory, the real Raft log storage and
//! state machine (`ccl_consensus::log`), a real openraft `Raft`, the real proposer
//! (`ccl_consensus::proposer::run`), and a small server for Raft's RPCs and the clients' requests.
//! Turmoil runs it again from the data directory when the host is bounced.

use crate::net::{KIND_APPEND, KIND_CLIENT, KIND_VOTE, PORT, SimNet, read_frame, write_frame};
use crate::world::{MAP, SECRET, World, identities, raft_id};
use ccl_consensus::log::{LogStore, Replica, StateMachine};
use ccl_consensus::net::{decode_request, encode_response};
use ccl_consensus::openraft::raft::{AppendEntriesRequest, VoteRequest};
use ccl_consensus::proposer::is_primary;
use ccl_consensus::{Raft, TypeConfig};
use ccl_engine::{Engine, EngineHandle, TxStatus};
use ccl_ledger::secrets::{LedgerSecret, LedgerSecrets};
use ccl_ledger::txid::TxId;
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use turmoil::net::{TcpListener, TcpStream};

/// How long a replica waits for a transaction it executed to commit before answering `Unknown`.
pub const COMMIT_WAIT: Duration = Duration::from_millis(2000);
/// How long a read waits for Raft to confirm leadership.
pub const LEADERSHIP_WAIT: Duration = Duration::from_millis(1000);
/// How often a waiting request looks at the transaction's status.
pub const POLL: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum ClientReq {
    Write { key: u64, value: u64 },
    Read { key: u64 },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum ClientResp {
    /// The write committed.
    Written,
    /// The read's value, from a state whose every transaction has committed.
    Value(Option<u64>),
    /// Not the primary (the current leader as far as this replica knows): nothing was executed.
    NotPrimary(Option<u64>),
    /// The write was executed but is invalid (rolled back, another transaction holds its seqno),
    /// or the read's state was rolled back.
    Aborted,
    /// The write's fate is unknown (it did not commit in time).
    Unknown,
}

/// What the replica's tasks share (all `Send`: openraft and tokio tasks need it).
#[derive(Clone)]
struct Ctx {
    me: u64,
    replica: Arc<Replica>,
    raft: Raft,
    handle: EngineHandle,
}

impl Ctx {
    fn is_primary(&self) -> bool {
        is_primary(&self.replica, &self.raft, self.me)
    }

    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }
}

/// The software of replica `i` (run again by turmoil after a bounce).
pub async fn node_main(w: Rc<World>, i: usize) -> turmoil::Result {
    let p = &w.params;
    let dir = &w.dirs[i];
    let id = identities()[i].clone();
    let secret = || LedgerSecret::from_bytes(SECRET);
    // The first replica creates the service (genesis transaction and signature); every other one
    // starts on an empty data directory and receives the whole ledger, genesis included, through
    // Raft. After a restart every replica reopens its directory.
    let engine = if i == 0 && !dir.join(ccl_engine::LEDGER_DIR).exists() {
        Engine::create(dir, p.engine_config(), id, secret(), |_| Ok(()))?
    } else {
        Engine::open(dir, p.engine_config(), id, LedgerSecrets::new(secret()))?
    };
    let handle = engine.handle();
    let replica = Replica::open(Arc::new(Mutex::new(engine)), dir)?;
    let me = raft_id(i);
    let raft = Raft::new(
        me,
        p.raft_config(i),
        SimNet::start(),
        LogStore(replica.clone()),
        StateMachine(replica.clone()),
    )
    .await?;
    if i == 0 && !raft.is_initialized().await? && replica.is_new_service() {
        raft.initialize(w.members()).await?;
    }
    w.register(i, &replica, &raft, handle.clone());
    let ctx = Ctx {
        me,
        replica: replica.clone(),
        raft: raft.clone(),
        handle,
    };
    tokio::spawn(ccl_consensus::proposer::run(replica, raft, me));
    tokio::spawn(signatures(ctx.clone(), p.signature_every));
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        // On the `LocalSet`, like every connection (see `SimNet`).
        tokio::task::spawn_local(serve(ctx.clone(), stream));
    }
}

/// The primary signs every `every` (simulated) while it has unsigned transactions: what the
/// engine's own `signature_interval` does on the real clock.
async fn signatures(ctx: Ctx, every: Duration) {
    // Far enough in the future that the engine's timer is due whenever anything is unsigned.
    let far = || std::time::Instant::now() + Duration::from_secs(4 * 3600);
    loop {
        tokio::time::sleep(every).await;
        if ctx.is_primary() {
            let mut e = ctx.replica.engine.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(err) = e.maybe_emit_signature(far()) {
                panic!("signature: {err}");
            }
        }
    }
}

async fn serve(ctx: Ctx, mut s: TcpStream) {
    loop {
        let Ok(frame) = read_frame(&mut s).await else {
            return;
        };
        let Some((&kind, body)) = frame.split_first() else {
            return;
        };
        let resp = match kind {
            KIND_APPEND => {
                let Ok(req) = decode_request::<AppendEntriesRequest<TypeConfig>>(body) else {
                    return;
                };
                encode_response(&ctx.raft.append_entries(req).await)
            }
            KIND_VOTE => {
                let Ok(req) = decode_request::<VoteRequest<u64>>(body) else {
                    return;
                };
                encode_response(&ctx.raft.vote(req).await)
            }
            KIND_CLIENT => {
                let Ok(req) = postcard::from_bytes::<ClientReq>(body) else {
                    return;
                };
                let r = match req {
                    ClientReq::Write { key, value } => write(&ctx, key, value).await,
                    ClientReq::Read { key } => read(&ctx, key).await,
                };
                postcard::to_stdvec(&r).expect("encodes")
            }
            _ => return,
        };
        if write_frame(&mut s, None, &resp).await.is_err() {
            return;
        }
    }
}

/// A write: executed on the primary, answered once its fate is known (or after [`COMMIT_WAIT`]).
async fn write(ctx: &Ctx, key: u64, value: u64) -> ClientResp {
    let txid = {
        let mut e = ctx.replica.engine.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the engine's lock: the proposer takes up the primary role under it.
        if !ctx.is_primary() {
            return ClientResp::NotPrimary(ctx.leader());
        }
        let mut tx = e.store().begin();
        tx.put(MAP, &key.to_be_bytes(), &value.to_be_bytes())
            .expect("put");
        match e.commit(tx, None) {
            Ok(t) => t,
            Err(err) => panic!("commit on the primary: {err}"),
        }
    };
    match wait(&ctx.handle, txid).await {
        Some(true) => ClientResp::Written,
        Some(false) => ClientResp::Aborted,
        None => ClientResp::Unknown,
    }
}

/// A read: on the primary, after Raft confirms the leadership and the state machine has applied
/// everything committed then (`ensure_linearizable`); answered once every transaction of the
/// state it read has committed.
async fn read(ctx: &Ctx, key: u64) -> ClientResp {
    if !ctx.is_primary() {
        return ClientResp::NotPrimary(ctx.leader());
    }
    match tokio::time::timeout(LEADERSHIP_WAIT, ctx.raft.ensure_linearizable()).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => return ClientResp::NotPrimary(ctx.leader()),
    }
    let (value, txid) = {
        let e = ctx.replica.engine.lock().unwrap_or_else(|p| p.into_inner());
        if !ctx.is_primary() {
            return ClientResp::NotPrimary(ctx.leader());
        }
        let mut tx = e.store().begin();
        let v = tx
            .get(MAP, &key.to_be_bytes())
            .map(|b| u64::from_be_bytes(b[..].try_into().expect("values are 8 bytes")));
        let at = tx.read_version();
        assert_eq!(
            at,
            e.last_seqno(),
            "the store is at the ledger's last seqno"
        );
        let view = ctx.handle.view_of(at).expect("the last seqno has a view");
        (v, TxId::new(view, at))
    };
    match wait(&ctx.handle, txid).await {
        Some(true) => ClientResp::Value(value),
        Some(false) => ClientResp::Aborted,
        None => ClientResp::Unknown,
    }
}

/// Waits for `txid` to be committed (`Some(true)`) or invalid (`Some(false)`), at most
/// [`COMMIT_WAIT`].
async fn wait(handle: &EngineHandle, txid: TxId) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
    loop {
        match handle.tx_status(txid) {
            TxStatus::Committed => return Some(true),
            TxStatus::Invalid => return Some(false),
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}
