//! CCF's governance API (api-version 2024-07-01) under `/gov`.
//!
//! Reads (`GET`) are public, as in CCF: governance state is on the public ledger anyway. Writes
//! (`POST`) are COSE Sign1 requests by members, checked by [`ccl_gov::request::verify`]; each runs
//! in one transaction under the engine lock and is committed only if it succeeds, so a refused
//! request changes nothing.

use crate::api::{ApiError, ApiResult, json_response};
use crate::{Shared, maps};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use ccl_gov::{GovError, ProposalInfo, Tx, msg};
use ccl_ledger::tables;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The governance api-version served.
pub const GOV_API_VERSION: &str = "2024-07-01";
/// Proposals per page of a list.
pub const GOV_PAGE_SIZE: usize = 100;

impl From<GovError> for ApiError {
    fn from(e: GovError) -> Self {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            return ApiError::internal(e.message);
        }
        ApiError::new(status, e.code, e.message)
    }
}

pub(crate) fn gov_version(q: &HashMap<String, String>) -> Result<(), ApiError> {
    crate::api::require_version(q, GOV_API_VERSION)
}

pub(crate) fn cose_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<&'a [u8], ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/cose") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedContentType",
            "governance requests are application/cose (COSE Sign1 signed by a member)",
        ));
    }
    Ok(body)
}

/// Seconds since the epoch, by the node's clock.
pub(crate) fn now() -> i64 {
    ccl_crypto::cert::now_unix()
}

/// Runs a governance call in one transaction: commit on success (then carry out its effects),
/// discard on error.
pub fn transact<R>(
    shared: &Shared,
    f: impl FnOnce(&mut Tx, &ccl_crypto::Digest32) -> Result<(R, ccl_gov::js::Effects), GovError>,
) -> Result<R, ApiError> {
    let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    let root = e.root();
    let before = crate::secrets::recovery_config(&mut e.store().begin());
    let mut tx = e.store().begin();
    let (r, effects) = f(&mut tx, &root)?;
    if effects.open_service {
        open_service(&mut tx, effects.previous_service_identity.as_deref())?;
    }
    for access in &effects.collection_access {
        crate::access::set_by_governance(&mut tx, access)?;
    }
    crate::join::endorse_trusted_nodes(&mut tx, e.identity())?;
    if crate::recovery::is_recovering(&mut tx) {
        // The shares of the lost service's secret must stay as they are until it is recovered.
        if effects.rekey || effects.refresh_shares || effects.snapshot {
            return Err(ApiError::bad(
                "ServiceRecovering",
                "no rekey, new recovery shares or snapshot before the service is recovered",
            ));
        }
        e.commit(tx, None).map_err(ApiError::internal)?;
        drop(e);
        shared.refresh_status();
        return Ok(r);
    }
    let after = crate::secrets::recovery_config(&mut tx);
    if before.can_issue() && !after.can_issue() {
        return Err(ApiError::bad(
            "InvalidRecoveryThreshold",
            format!(
                "this would leave {} active recovery member(s) for a recovery threshold of {}: \
                 the service could no longer be recovered",
                after.members.len(),
                after.threshold
            ),
        ));
    }
    if effects.rekey {
        // The new secret reaches every node through this transaction (each engine learns its
        // copy when it applies it, and uses it from the next seqno on), with new shares.
        let secret = ccl_ledger::secrets::LedgerSecret::generate().map_err(ApiError::internal)?;
        crate::secrets::write_rekey(&mut tx, &e.ledger_secrets(), &secret)?;
    } else if effects.refresh_shares || after != before {
        let secrets = e.ledger_secrets();
        let latest = secrets
            .latest()
            .ok_or_else(|| ApiError::internal("no ledger secret"))?;
        crate::secrets::issue_shares(&mut tx, latest)?;
    }
    e.commit(tx, None).map_err(ApiError::internal)?;
    if effects.snapshot {
        // Snapshots are taken at signatures: sign everything so far, then snapshot.
        e.emit_signature().map_err(ApiError::internal)?;
        e.snapshot_now().map_err(ApiError::internal)?;
    }
    drop(e);
    shared.refresh_status();
    Ok(r)
}

/// A proposal's outcome with the effects [`transact`] carries out.
pub fn with_effects(o: ccl_gov::Outcome) -> (ccl_gov::Outcome, ccl_gov::js::Effects) {
    let fx = o.effects.clone();
    (o, fx)
}

/// `transition_service_to_open`: a new service goes from Opening to Open; a recovering one, which
/// must name the previous service identity, from Recovering to WaitingForRecoveryShares (it opens
/// once the members' shares have recovered its private state).
fn open_service(tx: &mut Tx, previous_identity: Option<&str>) -> Result<(), GovError> {
    let v = tx
        .get(tables::SERVICE_INFO, &tables::SINGLETON_KEY)
        .ok_or_else(|| GovError::internal("no service info"))?;
    let mut info: tables::ServiceInfo = serde_json::from_slice(&v).map_err(GovError::internal)?;
    match info.status {
        tables::ServiceStatus::Opening => {
            let cfg = crate::secrets::recovery_config(tx);
            if cfg.any_keys && !cfg.can_issue() {
                return Err(GovError::bad(
                    "InsufficientRecoveryMembers",
                    format!(
                        "the service cannot open with {} active recovery member(s) for a recovery \
                         threshold of {}: recovery members acknowledge the state digest first",
                        cfg.members.len(),
                        cfg.threshold
                    ),
                ));
            }
            info.status = tables::ServiceStatus::Open;
        }
        tables::ServiceStatus::Recovering => {
            crate::recovery::check_previous_identity(tx, previous_identity)?;
            info.status = tables::ServiceStatus::WaitingForRecoveryShares;
        }
        s => {
            return Err(GovError::bad(
                "ServiceNotOpening",
                format!("the service is {s:?}: it cannot be opened"),
            ));
        }
    }
    tx.put(
        tables::SERVICE_INFO,
        &tables::SINGLETON_KEY,
        &serde_json::to_vec(&info).map_err(GovError::internal)?,
    )
    .map_err(GovError::internal)
}

/// `POST /gov/members/proposals:create`
pub async fn create_proposal(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    gov_version(&q)?;
    let body = cose_body(&headers, &body)?;
    let out = transact(&shared, |tx, root| {
        let s = ccl_gov::request::verify(tx, body, msg::PROPOSAL, None, now())?;
        ccl_gov::propose(tx, &s, body, root).map(with_effects)
    })?;
    Ok(json_response(out.info.to_api_json(&out.proposal_id)))
}

/// `/gov/members/proposals/{id}` (GET), `…/{id}:withdraw` (POST).
pub async fn proposal(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    gov_version(&q)?;
    match (method, rest.strip_suffix(":withdraw")) {
        (axum::http::Method::POST, Some(id)) => {
            let body = cose_body(&headers, &body)?;
            let out = transact(&shared, |tx, _| {
                let s = ccl_gov::request::verify(tx, body, msg::WITHDRAWAL, Some(id), now())?;
                Ok((ccl_gov::withdraw(tx, &s, body, id)?, Default::default()))
            })?;
            Ok(json_response(out.info.to_api_json(&out.proposal_id)))
        }
        (axum::http::Method::GET, None) => {
            let info = read_info(&shared, &rest)?;
            Ok(json_response(info.to_api_json(&rest)))
        }
        _ => Err(method_not_allowed()),
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "this method is not allowed here",
    )
}

fn read_info(shared: &Shared, id: &str) -> Result<ProposalInfo, ApiError> {
    let state = shared.handle.store().state();
    let v = state
        .get(ccl_gov::maps::PROPOSALS_INFO, id.as_bytes())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ProposalNotFound",
                format!("no proposal {id}"),
            )
        })?;
    serde_json::from_slice(&v.value).map_err(ApiError::internal)
}

/// `GET /gov/members/proposals`: every proposal, paged by id (`?after=`).
pub async fn list_proposals(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    gov_version(&q)?;
    let state = shared.handle.store().state();
    let after = q.get("after").cloned().unwrap_or_default();
    let mut value = Vec::new();
    let mut next = None;
    if let Some(m) = state.map(ccl_gov::maps::PROPOSALS_INFO) {
        let lower = if after.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(after.as_bytes())
        };
        for (k, v) in m.range((lower, std::ops::Bound::Unbounded)) {
            let id = String::from_utf8_lossy(k).into_owned();
            if value.len() == GOV_PAGE_SIZE {
                next = Some(format!(
                    "/gov/members/proposals?api-version={GOV_API_VERSION}&after={}",
                    value
                        .last()
                        .and_then(|p: &Value| p["proposalId"].as_str())
                        .unwrap_or_default()
                ));
                break;
            }
            let info: ProposalInfo =
                serde_json::from_slice(&v.value).map_err(ApiError::internal)?;
            value.push(info.to_api_json(&id));
        }
    }
    let mut out = json!({"value": value});
    if let Some(n) = next {
        out["nextLink"] = json!(n);
    }
    Ok(json_response(out))
}

/// `GET /gov/members/proposals/{id}/actions`: the proposal as submitted.
pub async fn proposal_actions(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    gov_version(&q)?;
    let state = shared.handle.store().state();
    let v = state
        .get(ccl_gov::maps::PROPOSALS, id.as_bytes())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ProposalNotFound",
                format!("no proposal {id}"),
            )
        })?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        v.value.to_vec(),
    )
        .into_response())
}

/// `/gov/members/proposals/{id}/ballots/{member}` (GET), `…/{member}:submit` (POST).
pub async fn ballot(
    State(shared): State<Arc<Shared>>,
    Path((id, rest)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    gov_version(&q)?;
    match (method, rest.strip_suffix(":submit")) {
        (axum::http::Method::POST, Some(member)) => {
            let body = cose_body(&headers, &body)?;
            let out = transact(&shared, |tx, _| {
                let s = ccl_gov::request::verify(tx, body, msg::BALLOT, Some(&id), now())?;
                ccl_gov::ballot(tx, &s, body, &id, member).map(with_effects)
            })?;
            Ok(json_response(out.info.to_api_json(&out.proposal_id)))
        }
        (axum::http::Method::GET, None) => {
            let info = read_info(&shared, &id)?;
            let b = info.ballots.get(&rest).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "VoteNotFound",
                    format!("member {rest} has not voted on {id}"),
                )
            })?;
            // As CCF: the ballot's JavaScript itself.
            Ok(([(header::CONTENT_TYPE, "text/javascript")], b.clone()).into_response())
        }
        _ => Err(method_not_allowed()),
    }
}

/// `/gov/members/state-digests/{member}` (GET), `…:update`, `…:ack` (POST).
pub async fn state_digest(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    gov_version(&q)?;
    if method == axum::http::Method::GET {
        let state = shared.handle.store().state();
        let v = state
            .get(ccl_gov::maps::MEMBER_ACKS, rest.as_bytes())
            .and_then(|v| serde_json::from_slice::<Value>(&v.value).ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "StateDigestNotFound",
                    format!("no state digest for member {rest}"),
                )
            })?;
        return Ok(json_response(
            json!({"memberId": rest, "stateDigest": v["state_digest"]}),
        ));
    }
    if method != axum::http::Method::POST {
        return Err(method_not_allowed());
    }
    let body = cose_body(&headers, &body)?;
    if let Some(member) = rest.strip_suffix(":update") {
        let out = transact(&shared, |tx, root| {
            let s = ccl_gov::request::verify(tx, body, msg::STATE_DIGEST, None, now())?;
            Ok((
                ccl_gov::update_state_digest(tx, &s, member, &hex::encode(root))?,
                Default::default(),
            ))
        })?;
        return Ok(json_response(out));
    }
    if let Some(member) = rest.strip_suffix(":ack") {
        transact(&shared, |tx, _| {
            let s = ccl_gov::request::verify(tx, body, msg::ACK, None, now())?;
            ccl_gov::ack(tx, &s, body, member)?;
            Ok(((), Default::default()))
        })?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "no such endpoint",
    ))
}

/// `GET /gov/service/info`
pub async fn service_info(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    gov_version(&q)?;
    let info = shared.service_info().map_err(ApiError::internal)?;
    Ok(json_response(json!({
        "status": info.status,
        "certificate": info.cert,
        "recoveryCount": info.recovery_count,
        "creationTransactionId": info.current_service_create_txid,
        "serviceData": info.service_data,
    })))
}

fn member_json(state: &ccl_store::State, id: &str, cert: &[u8]) -> Value {
    let info = state
        .get(ccl_gov::maps::MEMBER_INFO, id.as_bytes())
        .and_then(|v| serde_json::from_slice::<ccl_gov::MemberInfo>(&v.value).ok());
    let mut m = json!({
        "memberId": id,
        "certificate": String::from_utf8_lossy(cert),
        "status": info.as_ref().map(|i| i.status),
        "memberData": info.map(|i| i.member_data).unwrap_or(Value::Null),
    });
    if let Some(k) = state.get(ccl_gov::maps::MEMBER_KEYS, id.as_bytes()) {
        m["publicEncryptionKey"] = json!(String::from_utf8_lossy(&k.value));
    }
    m
}

/// `GET /gov/service/members`
pub async fn members(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    gov_version(&q)?;
    let state = shared.handle.store().state();
    let value: Vec<Value> = state
        .map(maps::MEMBERS)
        .map(|m| {
            m.iter()
                .map(|(k, v)| member_json(&state, &String::from_utf8_lossy(k), &v.value))
                .collect()
        })
        .unwrap_or_default();
    Ok(json_response(json!({"value": value})))
}

/// `GET /gov/service/members/{id}`
pub async fn member(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    gov_version(&q)?;
    let state = shared.handle.store().state();
    let cert = state.get(maps::MEMBERS, id.as_bytes()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "MemberNotFound",
            format!("no member {id}"),
        )
    })?;
    Ok(json_response(member_json(&state, &id, &cert.value)))
}

/// `GET /gov/service/users`: users with a certificate or user data.
pub async fn users(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    gov_version(&q)?;
    let state = shared.handle.store().state();
    let mut ids = std::collections::BTreeSet::new();
    for map in [ccl_gov::maps::USER_CERTS, ccl_gov::maps::USER_INFO] {
        if let Some(m) = state.map(map) {
            ids.extend(
                m.iter()
                    .map(|(k, _)| String::from_utf8_lossy(k).into_owned()),
            );
        }
    }
    let value: Vec<Value> = ids
        .iter()
        .map(|id| {
            let cert = state
                .get(ccl_gov::maps::USER_CERTS, id.as_bytes())
                .map(|v| String::from_utf8_lossy(&v.value).into_owned());
            let data = state
                .get(ccl_gov::maps::USER_INFO, id.as_bytes())
                .and_then(|v| serde_json::from_slice::<Value>(&v.value).ok())
                .map(|v| v["user_data"].clone())
                .unwrap_or(Value::Null);
            json!({"userId": id, "certificate": cert, "userData": data})
        })
        .collect();
    Ok(json_response(json!({"value": value})))
}

/// `GET /gov/service/nodes`
pub async fn nodes(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    gov_version(&q)?;
    let state = shared.handle.store().state();
    let value: Vec<Value> = state
        .map(tables::NODES)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let info: tables::NodeInfo = serde_json::from_slice(&v.value).ok()?;
                    let id = String::from_utf8_lossy(k).into_owned();
                    let cert = state
                        .get(tables::ENDORSED_CERTIFICATES, k)
                        .map(|c| String::from_utf8_lossy(&c.value).into_owned());
                    Some(json!({
                        "nodeId": id,
                        "status": info.status,
                        "certificate": cert,
                        "publicKey": info.public_key,
                        "nodeData": info.node_data,
                        "retiredCommitted": info.retired_committed,
                        "rpcInterfaces": {},
                    }))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(json_response(json!({"value": value})))
}

/// `GET /gov/service/constitution`: the constitution's JavaScript.
pub async fn constitution(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    gov_version(&q)?;
    Ok((
        [(header::CONTENT_TYPE, "text/javascript")],
        shared.constitution(),
    )
        .into_response())
}
