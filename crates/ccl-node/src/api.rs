//! The HTTP API: Azure Confidential Ledger's data plane (api-version 2022-05-13) under `/app`,
//! CCF-style node endpoints under `/node`. Every route declares who may call it ([`Policy`]);
//! anything else is denied. Errors are `{"error":{"code","message"}}`.

use crate::access;
use crate::{Shared, maps};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ccl_engine::TxStatus;
use ccl_ledger::txid::TxId;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The only api-version served.
pub const API_VERSION: &str = "2022-05-13";
/// Largest entry `contents`, in UTF-8 bytes (Azure's limit).
pub const MAX_CONTENTS: usize = 8192;
/// Longest collection id, in bytes (Azure's limit).
pub const MAX_COLLECTION_ID: usize = 256;
/// Largest request body read.
pub const MAX_BODY: usize = 64 << 10;
/// The collection of entries written without one.
pub const DEFAULT_COLLECTION: &str = "subledger:0";
/// Most collections besides the default one (Azure's limit).
pub const MAX_COLLECTIONS: usize = 5000;
/// Entries or collections per page of a list.
pub const PAGE_SIZE: usize = 1000;
/// Longest user id accepted.
pub const MAX_USER_ID: usize = 256;
/// Most transactions the primary holds uncommitted: beyond it, writes are refused with 503 and
/// `Retry-After` until replication catches up (the window a leader change can roll back stays
/// bounded).
pub const MAX_UNCOMMITTED_TXS: u64 = 20_000;
/// Largest request body a backup forwards to the primary (governance proposals included).
pub const MAX_FORWARDED_BODY: usize = 2 << 20;

/// Who is calling: the id of the TLS client certificate (hex SHA-256 of its DER), if any.
#[derive(Clone, Debug)]
pub struct Caller {
    pub cert_id: Option<String>,
    /// The certificate itself (DER), when the caller presented one on this connection.
    pub cert: Option<Arc<Vec<u8>>>,
}

/// Roles of Azure Confidential Ledger users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Contributor,
    Administrator,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "Reader" => Some(Role::Reader),
            "Contributor" => Some(Role::Contributor),
            "Administrator" => Some(Role::Administrator),
            _ => None,
        }
    }
}

/// Who may call an endpoint.
#[derive(Clone, Copy, Debug)]
pub enum Policy {
    /// Anyone, with or without a certificate (node status endpoints).
    Anyone,
    /// A user with at least this role.
    User(Role),
}

#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "internal error",
        )
    }
    /// The body of its answer: `{"error":{"code","message"}}`.
    pub fn json(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.json())).into_response()
    }
}

pub type ApiResult = Result<Response, ApiError>;

pub fn json_response(v: Value) -> Response {
    axum::Json(v).into_response()
}

/// The caller's user id; only called after [`authorize`] admitted a user.
fn user_of(caller: &Caller) -> &str {
    caller.cert_id.as_deref().unwrap_or_default()
}

/// Checks `policy` for `caller` against the users map.
fn authorize(shared: &Shared, caller: &Caller, policy: Policy) -> Result<(), ApiError> {
    let Policy::User(min) = policy else {
        return Ok(());
    };
    let Some(id) = &caller.cert_id else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a client certificate is required",
        ));
    };
    match user_role(shared.handle.store(), id) {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the client certificate is not a user's",
        )),
        Some(r) if r < min => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("this requires the {min:?} role; the caller is a {r:?}"),
        )),
        Some(_) => Ok(()),
    }
}

/// A user's role: `user_data.assignedRole` in the users map; a user with a certificate or user
/// data but no (valid) role is a Reader. Not a user: `None`.
pub fn role_of(state: &ccl_store::State, key: &str) -> Option<Role> {
    role_in(|map| state.get(map, key.as_bytes()).cloned())
}

/// [`role_of`] in the store's current state, without copying the state.
fn user_role(store: &ccl_store::Store, key: &str) -> Option<Role> {
    role_in(|map| store.get(map, key.as_bytes()))
}

/// A user's role, from the user's entry in a map (`get`): `user_data.assignedRole` in the users
/// map, a Reader's if there is none (or it does not parse) or the user has only a certificate.
fn role_in(get: impl Fn(&str) -> Option<ccl_store::Versioned>) -> Option<Role> {
    match get(maps::USER_INFO) {
        Some(v) => Some(
            serde_json::from_slice::<Value>(&v.value)
                .ok()
                .and_then(|u| {
                    u["user_data"]["assignedRole"]
                        .as_str()
                        .and_then(Role::parse)
                })
                .unwrap_or(Role::Reader),
        ),
        None => get(maps::USER_CERTS).map(|_| Role::Reader),
    }
}

/// A request body: one of the `accepted` content types, at most [`MAX_BODY`] bytes, JSON.
fn json_body(headers: &HeaderMap, body: &[u8], accepted: &[&str]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !accepted.iter().any(|a| ct.starts_with(a)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedContentType",
            format!("the body must be {}", accepted[0]),
        ));
    }
    if body.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLarge",
            format!("bodies have at most {MAX_BODY} bytes"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("InvalidJson", format!("the body is not JSON: {e}")))
}

fn api_version(q: &HashMap<String, String>) -> Result<(), ApiError> {
    require_version(q, API_VERSION)
}

/// The `api-version` query parameter must be `version`.
pub fn require_version(q: &HashMap<String, String>, version: &str) -> Result<(), ApiError> {
    match q.get("api-version").map(String::as_str) {
        Some(v) if v == version => Ok(()),
        Some(v) => Err(ApiError::bad(
            "UnsupportedApiVersion",
            format!("api-version {v} is not supported here; use {version}"),
        )),
        None => Err(ApiError::bad(
            "MissingApiVersion",
            format!("the api-version query parameter is required ({version})"),
        )),
    }
}

fn collection(q: &HashMap<String, String>) -> Result<String, ApiError> {
    let c = q
        .get("collectionId")
        .cloned()
        .unwrap_or_else(|| DEFAULT_COLLECTION.to_string());
    if c.len() > MAX_COLLECTION_ID {
        return Err(ApiError::bad(
            "CollectionIdTooLong",
            format!("a collection id has at most {MAX_COLLECTION_ID} bytes"),
        ));
    }
    if c.is_empty() {
        return Err(ApiError::bad(
            "InvalidCollectionId",
            "the collection id is empty",
        ));
    }
    Ok(c)
}

fn parse_txid(s: &str) -> Result<TxId, ApiError> {
    s.parse::<TxId>().map_err(|_| {
        ApiError::bad(
            "InvalidTransactionId",
            format!("{s:?} is not a transaction id (view.seqno)"),
        )
    })
}

/// Everything an `/app` handler starts with.
fn app_prologue(
    shared: &Shared,
    caller: &Caller,
    q: &HashMap<String, String>,
    policy: Policy,
) -> Result<(), ApiError> {
    authorize(shared, caller, policy)?;
    api_version(q)?;
    if !shared.is_open() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceNotOpen",
            "the service is not open yet: its members must vote transition_service_to_open",
        ));
    }
    Ok(())
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/app/transactions", post(write_entry).get(list_entries))
        .route("/app/collections", get(list_collections))
        .route(
            "/app/collections/{collectionId}",
            get(get_collection).put(put_collection),
        )
        .route(
            "/app/users/{user_id}",
            get(get_user).patch(patch_user).delete(delete_user),
        )
        .route("/app/enclaveQuotes", get(enclave_quotes))
        .route("/app/transactions/current", get(current_entry))
        .route("/app/transactions/{txid}", get(get_entry))
        .route("/app/transactions/{txid}/receipt", get(get_receipt))
        .route("/app/transactions/{txid}/status", get(get_status))
        .route("/app/governance/constitution", get(constitution))
        .route("/app/governance/members", get(members))
        .route(
            "/gov/members/proposals:create",
            post(crate::gov::create_proposal),
        )
        .route("/gov/members/proposals", get(crate::gov::list_proposals))
        .route(
            "/gov/members/proposals/{rest}",
            get(crate::gov::proposal).post(crate::gov::proposal),
        )
        .route(
            "/gov/members/proposals/{id}/actions",
            get(crate::gov::proposal_actions),
        )
        .route(
            "/gov/members/proposals/{id}/ballots/{rest}",
            get(crate::gov::ballot).post(crate::gov::ballot),
        )
        .route(
            "/gov/members/state-digests/{rest}",
            get(crate::gov::state_digest).post(crate::gov::state_digest),
        )
        .route("/gov/service/info", get(crate::gov::service_info))
        .route("/gov/service/members", get(crate::gov::members))
        .route("/gov/service/members/{id}", get(crate::gov::member))
        .route("/gov/service/users", get(crate::gov::users))
        .route("/gov/service/nodes", get(crate::gov::nodes))
        .route("/gov/service/constitution", get(crate::gov::constitution))
        .route(
            "/gov/recovery/encrypted-shares/{id}",
            get(crate::recovery::encrypted_share),
        )
        .route(
            "/gov/recovery/members/{rest}",
            post(crate::recovery::submit_share),
        )
        .route("/node/commit", get(node_commit))
        .route("/node/network", get(node_network))
        .route("/node/state", get(node_state))
        .route("/node/tx", get(node_tx))
        .route("/node/metrics", get(node_metrics))
        .route("/node/api", get(node_api))
        .route("/node/join", post(crate::join::join))
        .route(
            ccl_consensus::RPC_APPEND,
            post(crate::replication::rpc_append).layer(axum::extract::DefaultBodyLimit::max(
                ccl_consensus::MAX_RPC_BYTES,
            )),
        )
        .route(ccl_consensus::RPC_VOTE, post(crate::replication::rpc_vote))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                "no such endpoint",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::replication::route_writes,
        ))
        .with_state(shared)
}

async fn write_entry(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Contributor))?;
    let v = json_body(&headers, &body, &["application/json"])?;
    if shared.handle.last_seqno() - shared.handle.committed_seqno() > MAX_UNCOMMITTED_TXS {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "TooManyPendingTransactions",
            format!(
                "more than {MAX_UNCOMMITTED_TXS} transactions wait for replication: retry shortly"
            ),
        )
        .into_response();
        e.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        return Ok(e);
    }
    let contents = v
        .get("contents")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("InvalidEntry", "the body must be {\"contents\": string}"))?;
    if contents.len() > MAX_CONTENTS {
        return Err(ApiError::bad(
            "EntrySizeCapacityExceeded",
            format!(
                "entry contents have at most {MAX_CONTENTS} bytes, this one has {}",
                contents.len()
            ),
        ));
    }
    let coll = collection(&q)?;
    // Azure Confidential Ledger binds each entry to its receipt with a LedgerEntryV1 claim
    // under a fresh key; the key stays with the entry (private) and comes back with the receipt.
    let claims_key = ccl_crypto::random_array::<32>().map_err(ApiError::internal)?;
    let claim = ccl_receipt::ApplicationClaim::ledger_entry(&coll, contents, &claims_key);
    let claims_digest = ccl_receipt::compute_claims_digest(std::slice::from_ref(&claim))
        .map_err(ApiError::internal)?;
    use base64::Engine as _;
    let value = json!({
        "contents": contents,
        "claimsKey": base64::engine::general_purpose::STANDARD.encode(claims_key),
    })
    .to_string();
    let txid = crate::batch::write_entry(
        &shared,
        crate::batch::EntryWrite {
            user: user_of(&caller).to_owned(),
            collection: coll.clone(),
            value: value.into_bytes(),
            claims_digest,
        },
    )
    .await?;
    let mut resp = json_response(json!({"collectionId": coll}));
    resp.headers_mut().insert(
        "x-ms-ccf-transaction-id",
        HeaderValue::from_str(&txid.to_string()).map_err(ApiError::internal)?,
    );
    Ok(resp)
}

/// Records a new collection (other than the default one), within [`MAX_COLLECTIONS`].
pub fn register_collection(tx: &mut ccl_store::Tx, coll: &str) -> Result<(), ApiError> {
    if coll == DEFAULT_COLLECTION || tx.get(maps::COLLECTIONS, coll.as_bytes()).is_some() {
        return Ok(());
    }
    let count = tx.snapshot().map(maps::COLLECTIONS).map_or(0, |m| m.len());
    if count >= MAX_COLLECTIONS {
        return Err(ApiError::bad(
            "CollectionCapacityExceeded",
            format!("a ledger has at most {MAX_COLLECTIONS} collections"),
        ));
    }
    tx.put(maps::COLLECTIONS, coll.as_bytes(), b"")
        .map_err(|e| ApiError::bad("InvalidCollectionId", e.to_string()))
}

/// The entry a transaction wrote, if it wrote one.
/// A ledger entry as a transaction wrote it.
struct Entry {
    collection: String,
    contents: String,
    /// The application claims bound to the transaction, in the SDK's JSON shape.
    claims: Option<Value>,
}

fn entry_of(shared: &Shared, txid: TxId) -> Result<Option<Entry>, ApiError> {
    let tx = match shared.handle.read_transaction(txid.seqno) {
        Ok(t) => t,
        Err(ccl_engine::EngineError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(ApiError::internal(e)),
    };
    if tx.txid != txid {
        return Ok(None);
    }
    for m in &tx.maps {
        if m.name == maps::ENTRIES
            && let Some((k, v)) = m.writes.first()
        {
            let value = serde_json::from_slice::<Value>(v).unwrap_or(Value::Null);
            let collection = String::from_utf8_lossy(k).into_owned();
            let contents = value["contents"].as_str().unwrap_or_default().to_string();
            let claims = value["claimsKey"].as_str().and_then(|key| {
                use base64::Engine as _;
                let key = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
                let claim =
                    ccl_receipt::ApplicationClaim::ledger_entry(&collection, &contents, &key);
                Some(Value::Array(vec![claim.to_json()]))
            });
            return Ok(Some(Entry {
                collection,
                contents,
                claims,
            }));
        }
    }
    Ok(None)
}

fn not_found(txid: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "TransactionNotFound",
        format!("no ledger entry at transaction {txid}"),
    )
}

async fn get_entry(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(txid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Reader))?;
    let t = parse_txid(&txid)?;
    match shared.handle.tx_status(t) {
        TxStatus::Committed => {}
        TxStatus::Pending => return Ok(json_response(json!({"state": "Loading"}))),
        _ => return Err(not_found(&txid)),
    }
    let Some(Entry {
        collection: coll,
        contents,
        ..
    }) = entry_of(&shared, t)?
    else {
        return Err(not_found(&txid));
    };
    if q.get("collectionId").is_some_and(|want| *want != coll)
        || !access::may_read(&shared.handle.store().state(), user_of(&caller), &coll)
    {
        return Err(not_found(&txid));
    }
    Ok(json_response(json!({
        "state": "Ready",
        "entry": {"contents": contents, "collectionId": coll, "transactionId": t.to_string()},
    })))
}

async fn get_receipt(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(txid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Reader))?;
    let t = parse_txid(&txid)?;
    match shared.handle.tx_status(t) {
        TxStatus::Committed => {}
        TxStatus::Pending => {
            return Ok(json_response(
                json!({"receipt": null, "state": "Loading", "transactionId": ""}),
            ));
        }
        _ => return Err(not_found(&txid)),
    }
    let entry = entry_of(&shared, t)?;
    if let Some(e) = &entry
        && !access::may_read(
            &shared.handle.store().state(),
            user_of(&caller),
            &e.collection,
        )
    {
        return Err(not_found(&txid));
    }
    match shared.handle.receipt(t.seqno) {
        Ok(r) => {
            let mut out = String::with_capacity(2048);
            r.to_receipt().write_azure_json(&mut out);
            if let Some(claims) = entry.and_then(|e| e.claims) {
                // {"receipt":…,"state":…,"transactionId":…} + "applicationClaims"
                out.pop();
                out.push_str(",\"applicationClaims\":");
                out.push_str(&claims.to_string());
                out.push('}');
            }
            Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
        }
        // Committed, but the signature that proves it is not committed yet.
        Err(ccl_engine::EngineError::NotCommitted(_)) => Ok(json_response(
            json!({"receipt": null, "state": "Loading", "transactionId": ""}),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn get_status(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(txid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Reader))?;
    let t = parse_txid(&txid)?;
    let state = match shared.handle.tx_status(t) {
        TxStatus::Committed => "Committed",
        TxStatus::Pending => "Pending",
        TxStatus::Unknown => return Err(not_found(&txid)),
        TxStatus::Invalid => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "InvalidTransactionId",
                format!("transaction {txid} will never be committed"),
            ));
        }
    };
    Ok(json_response(
        json!({"state": state, "transactionId": t.to_string()}),
    ))
}

async fn current_entry(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Reader))?;
    let coll = collection(&q)?;
    let state = shared.handle.store().state();
    let visible = access::may_read(&state, user_of(&caller), &coll);
    let Some(v) = state
        .get(maps::ENTRIES, coll.as_bytes())
        .filter(|_| visible)
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "CollectionNotFound",
            format!("no entry in collection {coll}"),
        ));
    };
    let contents = serde_json::from_slice::<Value>(&v.value)
        .ok()
        .and_then(|v| v["contents"].as_str().map(str::to_string));
    let view = shared.handle.view_of(v.version).unwrap_or(0);
    Ok(json_response(json!({
        "contents": contents.unwrap_or_default(),
        "collectionId": coll,
        "transactionId": TxId::new(view, v.version).to_string(),
    })))
}

async fn constitution(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    authorize(&shared, &caller, Policy::User(Role::Reader))?;
    api_version(&q)?;
    let script = shared.constitution();
    Ok(json_response(
        json!({"digest": hex::encode(ccl_crypto::sha256(script.as_bytes())), "script": script}),
    ))
}

async fn members(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    authorize(&shared, &caller, Policy::User(Role::Reader))?;
    api_version(&q)?;
    let state = shared.handle.store().state();
    let members: Vec<Value> = state
        .map(maps::MEMBERS)
        .map(|m| {
            m.iter()
                .map(|(k, v)| json!({"id": String::from_utf8_lossy(k), "certificate": String::from_utf8_lossy(&v.value)}))
                .collect()
        })
        .unwrap_or_default();
    Ok(json_response(json!({"members": members})))
}

/// `/node/commit?after=SEQNO`: the answer waits until the commit passes SEQNO, up to this long
/// (then it gives the commit as it is; the caller compares and asks again).
pub const MAX_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The last committed transaction id. With `?after=SEQNO`, answers once the commit passes SEQNO
/// (or after [`MAX_COMMIT_WAIT`]): a client learns of commits as they happen, without polling.
async fn node_commit(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    if let Some(after) = q.get("after") {
        let after: u64 = after.parse().map_err(|_| {
            ApiError::bad(
                "InvalidQueryParameterValue",
                "after must be a seqno (a non-negative integer)",
            )
        })?;
        let mut commit = shared.replica.watch_commit();
        // Timing out is an answer too: the commit as it is.
        let _ = tokio::time::timeout(MAX_COMMIT_WAIT, commit.wait_for(|c| *c > after)).await;
    }
    Ok(json_response(
        json!({"transaction_id": shared.handle.committed_txid().to_string()}),
    ))
}

async fn node_network(State(shared): State<Arc<Shared>>) -> ApiResult {
    let mut nodes = Vec::new();
    let mut primary = None;
    if let Some(raft) = shared.raft.get() {
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        for (id, addr) in membership.nodes() {
            nodes.push(json!({
                "node_id": addr.node_id,
                "rpc_address": addr.rpc_address,
                "voter": voters.contains(id),
            }));
        }
        primary = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|a| a.node_id.clone()));
    }
    Ok(json_response(json!({
        "service_certificate": shared.service_cert_pem,
        "service_status": shared.service_info().map(|i| i.status).map_err(ApiError::internal)?,
        "current_view": shared.handle.current_view(),
        "primary_id": primary,
        "node_id": shared.node_id,
        "is_primary": shared.is_primary(),
        "nodes": nodes,
    })))
}

async fn node_state(State(shared): State<Arc<Shared>>) -> ApiResult {
    Ok(json_response(json!({
        "node_id": shared.node_id,
        "state": "PartOfNetwork",
        "last_signed_seqno": shared.handle.committed_seqno(),
        "uptime_seconds": shared.started.elapsed().as_secs(),
    })))
}

pub(crate) fn index_key(collection: &str, seqno: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + 9);
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(&seqno.to_be_bytes());
    k
}

/// Percent-encodes a query value.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn list_entries(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Reader))?;
    let coll = collection(&q)?;
    let from = q
        .get("fromTransactionId")
        .map(|t| parse_txid(t))
        .transpose()?
        .map_or(1, |t| t.seqno);
    let committed = shared.handle.committed_seqno();
    let to = q
        .get("toTransactionId")
        .map(|t| parse_txid(t))
        .transpose()?
        .map_or(committed, |t| t.seqno.min(committed));
    let mut entries = Vec::new();
    let mut next = None;
    let state = shared.handle.store().state();
    // A collection the caller may not see lists as one never written.
    if from <= to && access::may_read(&state, user_of(&caller), &coll) {
        let (lo, hi) = (index_key(&coll, from), index_key(&coll, to));
        if let Some(m) = state.map(maps::ENTRY_INDEX) {
            for (k, _) in m.range((
                std::ops::Bound::Included(&lo[..]),
                std::ops::Bound::Included(&hi[..]),
            )) {
                let seqno = u64::from_be_bytes(
                    k[k.len() - 8..]
                        .try_into()
                        .expect("index keys end with a seqno"),
                );
                if entries.len() == PAGE_SIZE {
                    next = Some(seqno);
                    break;
                }
                let view = shared.handle.view_of(seqno).unwrap_or(0);
                let t = TxId::new(view, seqno);
                if let Some(Entry {
                    collection: c,
                    contents,
                    ..
                }) = entry_of(&shared, t)?
                {
                    entries.push(json!({"contents": contents, "collectionId": c, "transactionId": t.to_string()}));
                }
            }
        }
    }
    let mut out = json!({"state": "Ready", "entries": entries});
    if let Some(n) = next {
        let mut link = format!(
            "/app/transactions?api-version={API_VERSION}&collectionId={}&fromTransactionId={}",
            query_escape(&coll),
            TxId::new(shared.handle.view_of(n).unwrap_or(0), n)
        );
        if let Some(t) = q.get("toTransactionId") {
            link.push_str(&format!("&toTransactionId={}", query_escape(t)));
        }
        out["nextLink"] = json!(link);
    }
    Ok(json_response(out))
}

async fn list_collections(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Reader))?;
    let state = shared.handle.store().state();
    let after = q.get("after").cloned().unwrap_or_default();
    let mut collections = Vec::new();
    let mut next = None;
    if after.is_empty() {
        collections.push(json!({"collectionId": DEFAULT_COLLECTION}));
    }
    if let Some(m) = state.map(maps::COLLECTIONS) {
        let lower = if after.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(after.as_bytes())
        };
        let caller = access::Principal::of(&state, user_of(&caller));
        for (k, _) in m.range((lower, std::ops::Bound::Unbounded)) {
            let id = String::from_utf8_lossy(k);
            if access::access_of(&state, &id).is_some_and(|a| !a.may_read(&caller)) {
                continue;
            }
            if collections.len() >= PAGE_SIZE {
                next = collections
                    .last()
                    .and_then(|c: &Value| c["collectionId"].as_str().map(str::to_string));
                break;
            }
            collections.push(json!({"collectionId": id}));
        }
    }
    let mut out = json!({"collections": collections});
    if let Some(n) = next {
        out["nextLink"] = json!(format!(
            "/app/collections?api-version={API_VERSION}&after={}",
            query_escape(&n)
        ));
    }
    Ok(json_response(out))
}

pub fn check_user_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_USER_ID || id.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad(
            "InvalidUserId",
            format!("a user id has 1 to {MAX_USER_ID} printable characters"),
        ));
    }
    Ok(())
}

async fn get_user(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Administrator))?;
    check_user_id(&id)?;
    let state = shared.handle.store().state();
    let Some(role) = role_of(&state, &ccl_gov::user_key(&id)) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UserNotFound",
            format!("no user {id}"),
        ));
    };
    let mut out = json!({"assignedRole": format!("{role:?}"), "userId": id});
    if let Some(groups) = state
        .get(maps::USER_INFO, ccl_gov::user_key(&id).as_bytes())
        .and_then(|v| serde_json::from_slice::<Value>(&v.value).ok())
        .filter(|u| u["user_data"]["groups"].is_array())
        .map(|u| access::groups_in(&u["user_data"]))
    {
        out["groups"] = json!(groups);
    }
    Ok(json_response(out))
}

async fn patch_user(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Administrator))?;
    check_user_id(&id)?;
    let v = json_body(
        &headers,
        &body,
        &["application/merge-patch+json", "application/json"],
    )?;
    let role = v["assignedRole"]
        .as_str()
        .and_then(Role::parse)
        .ok_or_else(|| {
            ApiError::bad(
                "InvalidRole",
                "assignedRole must be Administrator, Contributor or Reader",
            )
        })?;
    let role = format!("{role:?}");
    // ccl's extension: the groups private collections name (`group:<name>`).
    let groups = access::parse_groups(&v)?;
    {
        let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
        let mut tx = e.store().begin();
        let key = ccl_gov::user_key(&id);
        let mut user = tx
            .get(maps::USER_INFO, key.as_bytes())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        if !user["user_data"].is_object() {
            user["user_data"] = json!({});
        }
        user["user_data"]["assignedRole"] = json!(role);
        if let Some(g) = &groups {
            user["user_data"]["groups"] = json!(g);
        }
        tx.put(maps::USER_INFO, key.as_bytes(), user.to_string().as_bytes())
            .map_err(|e| ApiError::bad("InvalidUserId", e.to_string()))?;
        e.commit(tx, None).map_err(ApiError::internal)?;
    }
    let mut out = json!({"assignedRole": role, "userId": id});
    if let Some(g) = groups {
        out["groups"] = json!(g);
    }
    Ok(json_response(out))
}

/// A collection id from the path, checked as the `collectionId` query parameter is.
fn collection_path(id: String) -> Result<String, ApiError> {
    collection(&HashMap::from([("collectionId".to_string(), id)]))
}

fn access_json(coll: &str, a: Option<&access::Access>) -> Value {
    match a {
        None => json!({"collectionId": coll, "private": false}),
        Some(a) => json!({
            "collectionId": coll, "private": true,
            "owner": a.owner, "readers": a.readers, "writers": a.writers,
        }),
    }
}

/// `GET /app/collections/{id}`: whether a collection is private and who may use it; a
/// collection the caller may not see is not found.
async fn get_collection(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Reader))?;
    let coll = collection_path(id)?;
    let state = shared.handle.store().state();
    let a = access::access_of(&state, &coll);
    let exists =
        coll == DEFAULT_COLLECTION || state.get(maps::COLLECTIONS, coll.as_bytes()).is_some();
    if !exists || !access::may_read(&state, user_of(&caller), &coll) {
        return Err(access::collection_not_found(&coll));
    }
    Ok(json_response(access_json(&coll, a.as_ref())))
}

/// `PUT /app/collections/{id}` (ccl's extension): makes a collection private with these
/// readers and writers, or changes them. A new collection is created private, owned by the
/// caller; an existing private one is changed by its owner or an Administrator; an existing
/// public one (it has entries everyone could read) is made private by an Administrator only.
async fn put_collection(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Contributor))?;
    let coll = collection_path(id)?;
    let v = json_body(&headers, &body, &["application/json"])?;
    let me = user_of(&caller).to_string();
    let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    let mut tx = e.store().begin();
    let state = tx.snapshot();
    let admin = role_of(state, &me) == Some(Role::Administrator);
    let taken = |why: &str| {
        ApiError::new(
            StatusCode::CONFLICT,
            "CollectionIdTaken",
            format!("collection {coll} {why}"),
        )
    };
    let existing = access::access_of(state, &coll);
    let owner = match &existing {
        Some(a) if a.owner == me || admin => a.owner.clone(),
        Some(_) => {
            return Err(taken(
                "exists: only its owner or an Administrator changes its access",
            ));
        }
        None if coll == DEFAULT_COLLECTION => {
            return Err(taken("is the default collection: it stays public"));
        }
        None if state.get(maps::COLLECTIONS, coll.as_bytes()).is_some() && !admin => {
            return Err(taken(
                "has public entries: only an Administrator makes it private",
            ));
        }
        None => me,
    };
    let new = access::parse_access(&v, owner)?;
    access::write(&mut tx, &coll, &new)?;
    let txid = e.commit(tx, None).map_err(ApiError::internal)?;
    let mut resp = json_response(access_json(&coll, Some(&new)));
    resp.headers_mut().insert(
        "x-ms-ccf-transaction-id",
        HeaderValue::from_str(&txid.to_string()).map_err(ApiError::internal)?,
    );
    Ok(resp)
}

async fn delete_user(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Administrator))?;
    check_user_id(&id)?;
    let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    let mut tx = e.store().begin();
    let key = ccl_gov::user_key(&id);
    let mut found = false;
    for map in [maps::USER_INFO, maps::USER_CERTS] {
        if tx.get(map, key.as_bytes()).is_some() {
            found = true;
            tx.remove(map, key.as_bytes()).map_err(ApiError::internal)?;
        }
    }
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UserNotFound",
            format!("no user {id}"),
        ));
    }
    e.commit(tx, None).map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn enclave_quotes(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    app_prologue(&shared, &caller, &q, Policy::User(Role::Reader))?;
    // Virtual platform: no hardware evidence; the "quote" names the platform and the node key.
    let evidence = json!({"platform": "virtual", "node_id": shared.node_id}).to_string();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.encode(evidence);
    Ok(json_response(json!({
        "currentNodeId": shared.node_id,
        "enclaveQuotes": {
            shared.node_id.clone(): {"nodeId": shared.node_id, "mrenclave": "", "quoteVersion": "Virtual", "raw": raw}
        },
    })))
}

/// Every route: method, path, who may call it. `/node/api` serves it as an OpenAPI document.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("post", "/app/transactions", "Contributor"),
    ("get", "/app/transactions", "Reader"),
    ("get", "/app/transactions/current", "Reader"),
    ("get", "/app/transactions/{txid}", "Reader"),
    ("get", "/app/transactions/{txid}/receipt", "Reader"),
    ("get", "/app/transactions/{txid}/status", "Reader"),
    ("get", "/app/collections", "Reader"),
    ("get", "/app/collections/{collectionId}", "Reader"),
    ("put", "/app/collections/{collectionId}", "Contributor"),
    ("get", "/app/users/{user_id}", "Administrator"),
    ("patch", "/app/users/{user_id}", "Administrator"),
    ("delete", "/app/users/{user_id}", "Administrator"),
    ("get", "/app/enclaveQuotes", "Reader"),
    ("get", "/app/governance/constitution", "Reader"),
    ("get", "/app/governance/members", "Reader"),
    (
        "post",
        "/gov/members/proposals:create",
        "Member (COSE Sign1)",
    ),
    ("get", "/gov/members/proposals", "Anyone"),
    ("get", "/gov/members/proposals/{proposalId}", "Anyone"),
    (
        "post",
        "/gov/members/proposals/{proposalId}:withdraw",
        "Member (COSE Sign1, the proposer)",
    ),
    (
        "get",
        "/gov/members/proposals/{proposalId}/actions",
        "Anyone",
    ),
    (
        "get",
        "/gov/members/proposals/{proposalId}/ballots/{memberId}",
        "Anyone",
    ),
    (
        "post",
        "/gov/members/proposals/{proposalId}/ballots/{memberId}:submit",
        "Member (COSE Sign1, memberId)",
    ),
    ("get", "/gov/members/state-digests/{memberId}", "Anyone"),
    (
        "post",
        "/gov/members/state-digests/{memberId}:update",
        "Member (COSE Sign1, memberId)",
    ),
    (
        "post",
        "/gov/members/state-digests/{memberId}:ack",
        "Member (COSE Sign1, memberId)",
    ),
    ("get", "/gov/service/info", "Anyone"),
    ("get", "/gov/service/members", "Anyone"),
    ("get", "/gov/service/members/{memberId}", "Anyone"),
    ("get", "/gov/service/users", "Anyone"),
    ("get", "/gov/service/nodes", "Anyone"),
    ("get", "/gov/service/constitution", "Anyone"),
    ("get", "/gov/recovery/encrypted-shares/{memberId}", "Anyone"),
    (
        "post",
        "/gov/recovery/members/{memberId}:recover",
        "Member (COSE Sign1, memberId)",
    ),
    ("get", "/node/commit", "Anyone"),
    ("get", "/node/network", "Anyone"),
    ("get", "/node/state", "Anyone"),
    ("get", "/node/tx", "Anyone"),
    ("get", "/node/metrics", "Anyone"),
    ("get", "/node/api", "Anyone"),
    (
        "post",
        "/node/join",
        "Joining node (TLS client certificate = its node_cert; attestation evidence checked)",
    ),
    (
        "post",
        "/internal/forward",
        "Trusted node (service-endorsed certificate)",
    ),
    (
        "post",
        "/internal/raft/append",
        "Trusted node (service-endorsed certificate)",
    ),
    (
        "post",
        "/internal/raft/vote",
        "Trusted node (service-endorsed certificate)",
    ),
];

async fn node_tx(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let t = q.get("transaction_id").ok_or_else(|| {
        ApiError::bad(
            "MissingTransactionId",
            "the transaction_id query parameter is required",
        )
    })?;
    let txid = parse_txid(t)?;
    let status = match shared.handle.tx_status(txid) {
        TxStatus::Unknown => "Unknown",
        TxStatus::Pending => "Pending",
        TxStatus::Committed => "Committed",
        TxStatus::Invalid => "Invalid",
    };
    Ok(json_response(
        json!({"status": status, "transaction_id": txid.to_string()}),
    ))
}

async fn node_metrics(State(shared): State<Arc<Shared>>) -> ApiResult {
    let h = &shared.handle;
    let body = format!(
        "# HELP ccl_last_seqno Seqno of the last transaction in the ledger.\n# TYPE ccl_last_seqno gauge\nccl_last_seqno {}\n\
         # HELP ccl_committed_seqno Seqno of the last committed transaction.\n# TYPE ccl_committed_seqno gauge\nccl_committed_seqno {}\n\
         # HELP ccl_current_view Current view (term).\n# TYPE ccl_current_view gauge\nccl_current_view {}\n\
         # HELP ccl_uptime_seconds Seconds since the node started.\n# TYPE ccl_uptime_seconds counter\nccl_uptime_seconds {}\n",
        h.last_seqno(),
        h.committed_seqno(),
        h.current_view(),
        shared.started.elapsed().as_secs()
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

async fn node_api() -> ApiResult {
    let mut paths = serde_json::Map::new();
    for (method, path, policy) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = json!({
            "x-ccl-authorization": policy,
            "responses": {"200": {"description": "success"}, "default": {"description": "{\"error\":{\"code\",\"message\"}}"}},
        });
    }
    Ok(json_response(json!({
        "openapi": "3.0.0",
        "info": {"title": "ccl", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    })))
}
