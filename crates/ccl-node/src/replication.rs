//! The node's side of replication: starting Raft, serving its RPCs to trusted nodes, keeping
//! Raft's membership in step with the nodes map, forwarding writes from a backup to the primary.

use crate::api::{ApiError, Caller};
use crate::forward::{FromBatch, no_primary};
use crate::{NodeConfig, NodeError, Shared};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ccl_consensus::log::{LogStore, StateMachine};
use ccl_consensus::net::{Network, decode_request, encode_response};
use ccl_consensus::openraft::ChangeMembers;
use ccl_consensus::{NodeAddr, Raft, raft_config, raft_id};
use ccl_ledger::tables::{self, NodeInfo, NodeStatus};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the primary compares Raft's membership with the nodes map.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(250);
/// A learner within this many Raft entries of the primary is made a voter.
pub const CAUGHT_UP_ENTRIES: u64 = 8;
/// A voter that has known no leader this long calls an election at a random moment (see
/// `unstick_elections`).
pub const STUCK_ELECTION: Duration =
    Duration::from_millis(3 * ccl_consensus::ELECTION_TIMEOUT_MAX_MS);
/// A write reaching a node that Raft just made leader waits this long for it to take up the
/// primary role (a proposer tick), rather than being refused.
pub const TAKEOVER_WAIT: Duration = Duration::from_millis(500);

/// Background tasks of a running node.
pub struct Tasks {
    handles: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts Raft on the engine; a new service's first node makes itself the only voter.
pub async fn start(shared: &Arc<Shared>, cfg: &NodeConfig) -> Result<Tasks, NodeError> {
    let (service_pem, identity_pem) = {
        let e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
        let id = e.identity();
        (
            id.service_cert.pem(),
            format!("{}{}", id.node_cert.pem(), &*id.node_key.to_pkcs8_pem()),
        )
    };
    let raft = Raft::new(
        shared.raft_id,
        raft_config(),
        Network::new(service_pem, identity_pem),
        LogStore(shared.replica.clone()),
        StateMachine(shared.replica.clone()),
    )
    .await
    .map_err(|e| NodeError::Consensus(e.to_string()))?;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Consensus(e.to_string()))?;
    if !initialized && shared.replica.is_new_service() {
        let me = NodeAddr {
            rpc_address: cfg.rpc_address(),
            node_id: shared.node_id.clone(),
        };
        raft.initialize(BTreeMap::from([(shared.raft_id, me)]))
            .await
            .map_err(|e| NodeError::Consensus(e.to_string()))?;
    }
    if shared.raft.set(raft.clone()).is_err() {
        return Err(NodeError::Consensus("Raft started twice".into()));
    }
    let proposer = tokio::spawn(ccl_consensus::proposer::run(
        shared.replica.clone(),
        raft.clone(),
        shared.raft_id,
    ));
    let reconciler = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECONCILE_INTERVAL).await;
                if let Err(e) = reconcile(&shared).await {
                    tracing::warn!(error = %e, "membership");
                }
                shared.refresh_status();
            }
        })
    };
    let unsticker = tokio::spawn(unstick_elections(shared.clone(), raft.clone()));
    Ok(Tasks {
        handles: vec![proposer, reconciler, unsticker],
    })
}

/// openraft draws a node's election timeout once, when Raft starts. Two voters whose timeouts
/// are within a message delay of each other can then split every vote in lockstep: both become
/// candidates at the same instant, term after term, and with a majority of exactly their number
/// (3 of 5 reachable, say) neither ever wins. When this voter has known no leader for
/// [`STUCK_ELECTION`], it calls an election at a random moment, which breaks the tie.
async fn unstick_elections(shared: Arc<Shared>, raft: ccl_consensus::Raft) {
    let mut leaderless_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (leader, voter) = {
            let m = raft.metrics();
            let m = m.borrow();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == shared.raft_id);
            (m.current_leader, voter)
        };
        if leader.is_some() || !voter {
            leaderless_since = None;
            continue;
        }
        let since = *leaderless_since.get_or_insert_with(Instant::now);
        if since.elapsed() < STUCK_ELECTION {
            continue;
        }
        let r = u64::from_le_bytes(ccl_crypto::random_array::<8>().unwrap_or_default());
        let jitter = r % ccl_consensus::ELECTION_TIMEOUT_MIN_MS;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        if raft.metrics().borrow().current_leader.is_none() {
            tracing::info!("no leader for a while: calling an election at a random moment");
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
        leaderless_since = Some(Instant::now());
    }
}

/// Stops: the primary signs what it has (ending the chunk) and waits briefly for that to commit;
/// then Raft stops.
pub async fn stop(shared: &Arc<Shared>, tasks: Tasks) {
    if shared.is_primary() {
        let target = {
            let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
            match e.emit_signature_ending_chunk() {
                Ok(t) => Some(t.seqno),
                Err(err) => {
                    tracing::warn!(error = %err, "final signature");
                    None
                }
            }
        };
        if let Some(target) = target {
            let deadline = Instant::now() + crate::SHUTDOWN_COMMIT_WAIT;
            while shared.handle.committed_seqno() < target && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    for t in tasks.handles {
        t.abort();
    }
    if let Some(raft) = shared.raft.get() {
        let _ = raft.shutdown().await;
    }
    let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(err) = e.sync() {
        tracing::warn!(error = %err, "final sync");
    }
    if let Err(err) = e.finish_snapshots() {
        tracing::warn!(error = %err, "snapshots at shutdown");
    }
}

/// Nodes of the nodes map: Raft id -> (node id, info).
fn nodes(shared: &Shared) -> BTreeMap<u64, (String, NodeInfo)> {
    let state = shared.handle.store().state();
    let mut out = BTreeMap::new();
    if let Some(m) = state.map(tables::NODES) {
        for (k, v) in m.iter() {
            let (Ok(id), Ok(info)) = (
                std::str::from_utf8(k),
                serde_json::from_slice::<NodeInfo>(&v.value),
            ) else {
                continue;
            };
            if let Some(r) = raft_id(id) {
                out.insert(r, (id.to_string(), info));
            }
        }
    }
    out
}

/// On the primary: Trusted nodes become learners, then voters once caught up; Retired nodes leave.
async fn reconcile(shared: &Arc<Shared>) -> Result<(), String> {
    let Some(raft) = shared.raft.get() else {
        return Ok(());
    };
    if !shared.is_primary() {
        return Ok(());
    }
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    if membership.get_joint_config().len() > 1 {
        return Ok(()); // a change is under way
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let known: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
    let last = m.last_log_index.unwrap_or(0);
    for (rid, (node_id, info)) in nodes(shared) {
        match info.status {
            NodeStatus::Trusted if !info.rpc_address.is_empty() => {
                if !known.contains(&rid) {
                    tracing::info!(node = %node_id, address = %info.rpc_address, "adding learner");
                    let addr = NodeAddr {
                        rpc_address: info.rpc_address.clone(),
                        node_id: node_id.clone(),
                    };
                    raft.add_learner(rid, addr, false)
                        .await
                        .map_err(|e| e.to_string())?;
                } else if !voters.contains(&rid) {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&rid).cloned().flatten())
                        .map_or(0, |l| l.index);
                    if matched + CAUGHT_UP_ENTRIES >= last {
                        tracing::info!(node = %node_id, "learner caught up: making it a voter");
                        raft.change_membership(
                            ChangeMembers::AddVoterIds(BTreeSet::from([rid])),
                            false,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        return Ok(());
                    }
                }
            }
            NodeStatus::Retired if known.contains(&rid) => {
                tracing::info!(node = %node_id, "node retired: removing it from Raft");
                if voters.contains(&rid) {
                    if voters.len() == 1 {
                        continue;
                    }
                    raft.change_membership(
                        ChangeMembers::RemoveVoters(BTreeSet::from([rid])),
                        false,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                } else {
                    raft.change_membership(
                        ChangeMembers::RemoveNodes(BTreeSet::from([rid])),
                        false,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                }
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `cert_id` (hex SHA-256 of a TLS client certificate) is the endorsed certificate of a
/// Trusted node.
pub fn is_trusted_node(shared: &Shared, caller: &Caller) -> bool {
    trusted_node(shared, caller).is_some()
}

/// The node id of the caller if it is a node: its certificate was issued by the service (only
/// trusted nodes get one) and the nodes map, as far as this replica has it, does not say the node
/// is retired. A replica that is behind may not know a node trusted recently; the service's
/// signature on its certificate is what proves it.
pub fn trusted_node(shared: &Shared, caller: &Caller) -> Option<String> {
    let der = caller.cert.as_ref()?;
    let cert_id = caller.cert_id.as_deref()?;
    if let Some(id) = shared
        .node_certs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(cert_id)
        .cloned()
    {
        return not_retired(shared, id);
    }
    let cert = ccl_crypto::cert::Certificate::from_der(der).ok()?;
    let service = ccl_crypto::cert::Certificate::from_pem(&shared.service_cert_pem).ok()?;
    cert.verify_issued_by(&service).ok()?;
    if cert.is_ca() {
        return None;
    }
    let id = hex::encode(cert.key_id());
    let mut cache = shared.node_certs.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= crate::MAX_CACHED_NODE_CERTS {
        cache.clear();
    }
    cache.insert(cert_id.to_string(), id.clone());
    drop(cache);
    not_retired(shared, id)
}

fn not_retired(shared: &Shared, node_id: String) -> Option<String> {
    let state = shared.handle.store().state();
    let status = state
        .get(tables::NODES, node_id.as_bytes())
        .and_then(|v| serde_json::from_slice::<NodeInfo>(&v.value).ok())
        .map(|i| i.status);
    match status {
        Some(NodeStatus::Retired) => None,
        _ => Some(node_id),
    }
}

fn raft_of(shared: &Shared) -> Result<&Raft, ApiError> {
    shared.raft.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NodeStarting",
            "consensus is not running yet",
        )
    })
}

/// Admits trusted nodes only (401 without a certificate, 403 with another).
pub(crate) fn rpc_caller(shared: &Shared, caller: &Caller) -> Result<(), ApiError> {
    if let Some(node) = trusted_node(shared, caller) {
        if raft_id(&node).is_some_and(ccl_consensus::faults::blocked) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "CutOff",
                "traffic with this node is cut (test partition)",
            ));
        }
        Ok(())
    } else if caller.cert_id.is_none() {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "internal RPCs are for trusted nodes (their service-endorsed certificate)",
        ))
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "internal RPCs are for trusted nodes (their service-endorsed certificate)",
        ))
    }
}

fn rpc_response(bytes: Vec<u8>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static(ccl_consensus::net::RPC_CONTENT_TYPE),
        )],
        bytes,
    )
        .into_response()
}

/// An RPC must be for this node (a node that took over a dead node's address must not answer
/// for it).
fn rpc_target(shared: &Shared, q: &HashMap<String, String>) -> Result<(), ApiError> {
    let to = q
        .get(ccl_consensus::net::TARGET_PARAM)
        .and_then(|t| t.parse::<u64>().ok());
    if to == Some(shared.raft_id) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "WrongNode",
            format!("this is node {}, not the RPC's target", shared.raft_id),
        ))
    }
}

/// `POST /internal/raft/append` (trusted nodes only).
pub async fn rpc_append(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    rpc_caller(&shared, &caller)?;
    rpc_target(&shared, &q)?;
    let req = decode_request(&body).map_err(|m| ApiError::bad("MalformedRpc", m))?;
    let r = raft_of(&shared)?.append_entries(req).await;
    Ok(rpc_response(encode_response(&r)))
}

/// `POST /internal/raft/vote` (trusted nodes only).
pub async fn rpc_vote(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    rpc_caller(&shared, &caller)?;
    rpc_target(&shared, &q)?;
    let req = decode_request(&body).map_err(|m| ApiError::bad("MalformedRpc", m))?;
    let r = raft_of(&shared)?.vote(req).await;
    Ok(rpc_response(encode_response(&r)))
}

/// The primary's node id and address, as this node knows them.
pub fn primary(shared: &Shared) -> Option<NodeAddr> {
    let raft = shared.raft.get()?;
    let m = raft.metrics();
    let m = m.borrow();
    let leader = m.current_leader?;
    m.membership_config.membership().get_node(&leader).cloned()
}

/// Middleware: on a backup, writes go to the primary (the client gets the primary's answer,
/// [`crate::forward`]); a request the primary runs from a backup's batch is never forwarded.
pub async fn route_writes(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if req.extensions().get::<FromBatch>().is_some() {
        // Forwarded to this node as the primary: never forwarded again.
        if !shared.is_primary() {
            return no_primary("this node is no longer the primary");
        }
        return next.run(req).await;
    }
    let is_write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !is_write || req.uri().path().starts_with("/internal/") || shared.is_primary() {
        return next.run(req).await;
    }
    let leader = primary(&shared);
    if leader.as_ref().is_some_and(|p| p.node_id == shared.node_id) {
        // Raft made this node the leader; its proposer takes up the term within a tick.
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        while !shared.is_primary() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if shared.is_primary() {
            return next.run(req).await;
        }
        return no_primary("this node is taking up the primary role: retry shortly");
    }
    let Some(primary) = leader else {
        return no_primary("no primary is known: an election is under way");
    };
    if raft_id(&primary.node_id).is_some_and(ccl_consensus::faults::blocked) {
        return no_primary("the primary cannot be reached (test partition)");
    }
    let caller = req.extensions().get::<Caller>().cloned();
    match crate::forward::prepare(caller, req).await {
        Ok(request) => crate::forward::forward(&shared, &primary.rpc_address, request).await,
        Err(refused) => refused,
    }
}
