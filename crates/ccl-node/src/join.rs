//! Joining a network.
//!
//! The joining node makes its key and a self-signed certificate, produces attestation evidence
//! that binds the key (virtual platform: measurement = SHA-256 of the running binary, host data =
//! SHA-256 of its configuration) and calls `POST /node/join` on any node (a backup forwards it to
//! the primary), presenting that certificate as TLS client certificate. The primary checks the
//! evidence against the measurements and host data governance allows
//! ([`VIRTUAL_MEASUREMENTS`], [`VIRTUAL_HOST_DATA`]) and records the node Pending in the nodes
//! map. Members admit it with `transition_node_to_trusted`; the service then endorses its
//! certificate ([`endorse_trusted_nodes`], in the same transaction). The node's next call gets
//! the endorsed certificate, the ledger secrets and the service key encrypted to its key, the
//! latest committed snapshot with its receipt, the ledger suffix after it and where Raft's log
//! continues. It checks the snapshot's receipt against the service certificate, starts from it,
//! and the primary makes it a learner, then a voter once it has caught up.

use crate::api::{ApiError, ApiResult, Caller, json_response};
use crate::{NodeConfig, NodeError, Shared, init};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use ccl_consensus::log::{Base, Replica};
use ccl_crypto::cert::{self, CertKind, CertSpec, Certificate};
use ccl_crypto::{Curve, SigningKey};
use ccl_engine::{Engine, Identity};
use ccl_ledger::secrets::{LedgerSecret, LedgerSecrets};
use ccl_ledger::tables::{self, NodeInfo, NodeStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Virtual-platform measurements allowed to join: key hex SHA-256 of a `ccl` binary, value
/// `"AllowedToJoin"` (CCF's map). A new service allows its own binary.
pub const VIRTUAL_MEASUREMENTS: &str = "public:ccf.gov.nodes.virtual.measurements";
/// Virtual-platform host data allowed to join (empty map: any).
pub const VIRTUAL_HOST_DATA: &str = "public:ccf.gov.nodes.virtual.host_data";
/// Info string binding the secrets handed to a joining node.
const SECRETS_INFO: &[u8] = b"ccl join: ledger secrets and service key v1";
/// How often a joining node asks whether it is trusted yet.
pub const JOIN_POLL: Duration = Duration::from_millis(500);
/// Largest join request body.
pub const MAX_JOIN_REQUEST: usize = 128 << 10;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str, what: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| format!("{what} is not base64"))
}

/// The body of `POST /node/join`.
#[derive(Serialize, Deserialize)]
pub struct JoinRequest {
    /// The node's self-signed certificate (PEM): the TLS client certificate of the call.
    pub node_cert: String,
    pub quote_info: ccl_attest::QuoteInfo,
    /// `host:port` other nodes and clients reach it at.
    pub rpc_address: String,
    /// Names and addresses for its endorsed certificate (besides localhost and 127.0.0.1).
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// The secrets handed to a trusted node, encrypted to its key.
#[derive(Serialize, Deserialize)]
struct Secrets {
    /// (first seqno, hex secret)
    ledger_secrets: Vec<(u64, String)>,
    service_key: String,
}

/// Every Trusted node without an endorsed certificate gets one (the service key signs it).
pub fn endorse_trusted_nodes(tx: &mut ccl_gov::Tx, identity: &Identity) -> Result<(), ApiError> {
    let Some(nodes) = tx.snapshot().map(tables::NODES).cloned() else {
        return Ok(());
    };
    for (k, _) in nodes.iter() {
        // The transaction's own writes count (the proposal it applies may have just trusted it).
        let Some(Ok(info)) = tx
            .get(tables::NODES, k)
            .map(|v| serde_json::from_slice::<NodeInfo>(&v))
        else {
            continue;
        };
        if info.status != NodeStatus::Trusted || tx.get(tables::ENDORSED_CERTIFICATES, k).is_some()
        {
            continue;
        }
        let key = ccl_crypto::VerifyingKey::from_pem(&info.public_key)
            .map_err(|e| ApiError::internal(format!("node public key: {e}")))?;
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if let Some(extra) = info.node_data["subject_alt_names"].as_array() {
            names.extend(extra.iter().filter_map(|n| n.as_str().map(str::to_string)));
        }
        let c = Identity::endorse_node(&key, &names, &identity.service_key, &identity.service_cert)
            .map_err(ApiError::internal)?;
        tx.put(tables::ENDORSED_CERTIFICATES, k, c.pem().as_bytes())
            .map_err(ApiError::internal)?;
        tracing::info!(node = %String::from_utf8_lossy(k), "node certificate endorsed");
    }
    Ok(())
}

fn policy(state: &ccl_store::State) -> ccl_attest::Policy {
    let keys = |map: &str| -> Vec<[u8; 32]> {
        state.map(map).map_or_else(Vec::new, |m| {
            m.iter()
                .filter_map(|(k, _)| {
                    hex::decode(k)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                })
                .collect()
        })
    };
    ccl_attest::Policy {
        accepted_measurements: keys(VIRTUAL_MEASUREMENTS),
        accepted_host_data: keys(VIRTUAL_HOST_DATA),
        allow_virtual: true,
    }
}

/// `POST /node/join` (runs on the primary; backups forward it). The caller's TLS client
/// certificate must be the `node_cert` of the request.
pub async fn join(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    if caller.cert_id.is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationInfo",
            "a joining node presents its node certificate as TLS client certificate",
        ));
    }
    if body.len() > MAX_JOIN_REQUEST {
        return Err(ApiError::bad("RequestTooLarge", "join request too large"));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("InvalidInput", format!("join request: {e}")))?;
    let cert = Certificate::from_pem(v["node_cert"].as_str().unwrap_or(""))
        .map_err(|e| ApiError::bad("InvalidInput", format!("node_cert: {e}")))?;
    if caller.cert_id.as_deref() != Some(hex::encode(ccl_crypto::sha256(cert.der())).as_str()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationInfo",
            "the TLS client certificate must be the joining node's node_cert",
        ));
    }
    let req: JoinRequest = serde_json::from_value(v)
        .map_err(|e| ApiError::bad("InvalidInput", format!("join request: {e}")))?;
    if req.rpc_address.is_empty()
        || req.rpc_address.len() > 256
        || req.subject_alt_names.len() > 16
        || req.subject_alt_names.iter().any(|n| n.len() > 253)
    {
        return Err(ApiError::bad(
            "InvalidInput",
            "rpc_address or names out of bounds",
        ));
    }
    let node_id = hex::encode(cert.key_id());
    let state = shared.handle.store().state();
    let existing = state
        .get(tables::NODES, node_id.as_bytes())
        .and_then(|v| serde_json::from_slice::<NodeInfo>(&v.value).ok());
    match existing.map(|i| i.status) {
        Some(NodeStatus::Trusted) => return trusted_answer(&shared, &node_id, &cert),
        Some(NodeStatus::Pending) => {
            return Ok(json_response(
                json!({"node_id": node_id, "node_status": "Pending"}),
            ));
        }
        Some(s) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "NodeRetired",
                format!("node {node_id} is {s:?}: a retired node joins again with a new key"),
            ));
        }
        None => {}
    }
    let verified = ccl_attest::verify(&req.quote_info, cert.spki_der(), &policy(&state))
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "InvalidQuote", e.to_string()))?;
    let info = NodeInfo {
        status: NodeStatus::Pending,
        public_key: cert.public_key().map_err(ApiError::internal)?.to_pem(),
        quote_info: serde_json::to_value(&req.quote_info).map_err(ApiError::internal)?,
        rpc_address: req.rpc_address.clone(),
        node_data: json!({
            "subject_alt_names": req.subject_alt_names,
            "measurement": hex::encode(verified.measurement),
            "host_data": hex::encode(verified.host_data),
        }),
        retired_committed: false,
        ledger_secret_seqno: 0,
    };
    {
        let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
        let mut tx = e.store().begin();
        tx.put(
            tables::NODES,
            node_id.as_bytes(),
            &serde_json::to_vec(&info).map_err(ApiError::internal)?,
        )
        .map_err(ApiError::internal)?;
        e.commit(tx, None).map_err(ApiError::internal)?;
    }
    tracing::info!(node = %node_id, address = %req.rpc_address, "node asks to join: Pending");
    Ok(json_response(
        json!({"node_id": node_id, "node_status": "Pending"}),
    ))
}

/// What a Trusted node gets: its endorsed certificate, the secrets, where to start.
fn trusted_answer(shared: &Shared, node_id: &str, cert: &Certificate) -> ApiResult {
    let state = shared.handle.store().state();
    let endorsed = state
        .get(tables::ENDORSED_CERTIFICATES, node_id.as_bytes())
        .map(|v| String::from_utf8_lossy(&v.value).into_owned())
        .ok_or_else(|| ApiError::internal("a Trusted node has no endorsed certificate"))?;
    let (secrets, service_key) = {
        let e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
        let secrets = e.ledger_secrets();
        // Only secrets whose rekey is committed are handed over (one that is rolled back must
        // not outlive it in the new node's sealed copy); later rekeys reach the node through the
        // ledger, since it is Trusted by then.
        if secrets
            .latest_from()
            .is_some_and(|from| from > e.committed_seqno() + 1)
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NotReady",
                "a ledger rekey is not committed yet: ask again",
            ));
        }
        (secrets, e.identity().service_key.to_pkcs8_pem().to_string())
    };
    let plain = serde_json::to_vec(&Secrets {
        ledger_secrets: secrets
            .iter()
            .map(|(from, s)| (from, hex::encode(s.raw())))
            .collect(),
        service_key,
    })
    .map_err(ApiError::internal)?;
    let key = cert.public_key().map_err(ApiError::internal)?;
    let sealed =
        ccl_crypto::ecies::seal_to(&key, SECRETS_INFO, &plain).map_err(ApiError::internal)?;
    // The latest committed snapshot, and the ledger up to the end of the Raft entry after it.
    let snapshot =
        ccl_engine::latest_committed_snapshot(&shared.data_dir).map_err(ApiError::internal)?;
    let from = snapshot.as_ref().map_or(0, |(name, _)| name.seqno);
    let base = shared.replica.applied_base(from).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotReady",
            "nothing is committed after the latest snapshot yet: ask again",
        )
    })?;
    let mut suffix = Vec::new();
    for s in from + 1..=base.seqno {
        suffix.push(b64(&shared
            .handle
            .raw_entry(s)
            .map_err(ApiError::internal)?));
    }
    Ok(json_response(json!({
        "node_id": node_id,
        "node_status": "Trusted",
        "network_info": {
            "service_certificate": shared.service_cert_pem,
            "endorsed_certificate": endorsed,
            "secrets": b64(&sealed),
            "snapshot_name": snapshot.as_ref().map(|(n, _)| n.file_name()),
            "snapshot": snapshot.as_ref().map(|(_, b)| b64(b)),
            "ledger_suffix": suffix,
            "raft_base": serde_json::to_value(&base).map_err(ApiError::internal)?,
        }
    })))
}

/// Host data of a joining node: SHA-256 of its configuration as the operator gave it.
pub fn host_data(config_text: &str) -> [u8; 32] {
    ccl_crypto::sha256(config_text.as_bytes())
}

/// Measurement of the running binary (virtual platform).
pub fn own_measurement() -> Result<[u8; 32], NodeError> {
    let exe = std::env::current_exe()?;
    Ok(ccl_attest::measurement_of_file(&std::fs::read(&exe)?))
}

/// The joining node's side: asks `target` until the members trust it, then writes its data
/// directory (identity, sealed secrets, snapshot, ledger suffix, Raft base). Afterwards the
/// directory opens like any node's ([`crate::open`]).
pub async fn join_network(
    cfg: &NodeConfig,
    target: &str,
    service_cert_pem: &str,
    config_text: &str,
) -> Result<String, NodeError> {
    let dir = &cfg.data_dir;
    if init::exists(dir) {
        return Err(NodeError::Config(format!(
            "{} already holds a node: start it with ccl start",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(cfg.names.iter().cloned());
    let node_key =
        SigningKey::generate(Curve::P384).map_err(|e| NodeError::Config(e.to_string()))?;
    let self_signed = cert::self_signed(
        &node_key,
        &CertSpec {
            common_name: "ccl joining node".into(),
            subject_alt_names: names.clone(),
            not_before: cert::now_unix() - 60,
            validity_days: 7,
            kind: CertKind::Node,
        },
    )
    .map_err(|e| NodeError::Config(e.to_string()))?;
    let quote = ccl_attest::virtual_quote(
        own_measurement()?,
        host_data(config_text),
        self_signed.spki_der(),
    );
    let req = JoinRequest {
        node_cert: self_signed.pem(),
        quote_info: quote,
        rpc_address: cfg.rpc_address(),
        subject_alt_names: cfg.names.clone(),
    };
    let body = serde_json::to_vec(&req).map_err(|e| NodeError::Config(e.to_string()))?;
    let identity_pem = format!("{}{}", self_signed.pem(), &*node_key.to_pkcs8_pem());
    let client = ccl_client::Client::new(target, service_cert_pem, Some(&identity_pem))
        .map_err(|e| NodeError::Config(e.to_string()))?;
    let node_id = hex::encode(self_signed.key_id());
    let mut told = false;
    let answer: Value = loop {
        let r = async {
            let mut c = client.connect().await?;
            c.request(
                ccl_client::Method::POST,
                "/node/join",
                Some(("application/json", body.clone())),
            )
            .await?
            .json()
        }
        .await;
        match r {
            Ok(v) if v["node_status"] == "Trusted" => break v,
            Ok(v) if v["node_status"] == "Pending" => {
                if !told {
                    println!(
                        "node {node_id} is Pending: the members admit it with the proposal\n  \
                         {{\"actions\":[{{\"name\":\"transition_node_to_trusted\",\"args\":{{\"node_id\":\"{node_id}\",\"valid_from\":\"20260101000000Z\",\"validity_period_days\":365}}}}]}}"
                    );
                    told = true;
                }
            }
            Ok(v) => return Err(NodeError::Config(format!("unexpected join answer: {v}"))),
            Err(ccl_client::ClientError::Api {
                status,
                code,
                message,
            }) if status.is_client_error() && status.as_u16() != 429 => {
                return Err(NodeError::Config(format!(
                    "the network refused to let this node join: {code}: {message}"
                )));
            }
            Err(e) => tracing::info!(error = %e, "join: will ask again"),
        }
        tokio::time::sleep(JOIN_POLL).await;
    };
    let info = &answer["network_info"];
    let bad = |m: String| NodeError::Config(format!("join answer: {m}"));
    let text = |k: &str| -> Result<String, NodeError> {
        info[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| bad(format!("no {k}")))
    };
    let service_cert =
        Certificate::from_pem(&text("service_certificate")?).map_err(|e| bad(e.to_string()))?;
    if service_cert.pem().trim() != service_cert_pem.trim()
        && Certificate::from_pem(service_cert_pem)
            .map(|c| c.der().to_vec())
            .ok()
            != Some(service_cert.der().to_vec())
    {
        return Err(bad("the service certificate is not the one we trust".into()));
    }
    let node_cert =
        Certificate::from_pem(&text("endorsed_certificate")?).map_err(|e| bad(e.to_string()))?;
    node_cert
        .verify_issued_by(&service_cert)
        .map_err(|_| bad("the node certificate is not endorsed by the service".into()))?;
    if node_cert.spki_der() != self_signed.spki_der() {
        return Err(bad("the endorsed certificate is for another key".into()));
    }
    let sealed = unb64(&text("secrets")?, "secrets").map_err(bad)?;
    let plain = ccl_crypto::ecies::open_with(&node_key, SECRETS_INFO, &sealed)
        .map_err(|e| bad(format!("secrets do not decrypt with this node's key: {e}")))?;
    let secrets: Secrets = serde_json::from_slice(&plain).map_err(|e| bad(e.to_string()))?;
    let mut all: Option<LedgerSecrets> = None;
    for (from, hexed) in &secrets.ledger_secrets {
        let raw: [u8; 32] = hex::decode(hexed)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("malformed ledger secret".into()))?;
        let s = LedgerSecret::from_bytes(raw);
        match &mut all {
            None => all = Some(LedgerSecrets::new(s)),
            Some(a) => a.push(*from, s),
        }
    }
    let all = all.ok_or_else(|| bad("no ledger secret".into()))?;
    let identity = Identity {
        node_key,
        node_cert,
        service_key: SigningKey::from_pem(&secrets.service_key).map_err(|e| bad(e.to_string()))?,
        service_cert,
    };
    // The snapshot must come with a receipt, signed by the service, for its digest.
    if let (Some(name), Some(snap)) = (info["snapshot_name"].as_str(), info["snapshot"].as_str()) {
        let bytes = unb64(snap, "snapshot").map_err(bad)?;
        check_snapshot(&bytes, service_cert_pem).map_err(bad)?;
        let parsed = ccl_ledger::snapshot::SnapshotName::parse(name)
            .filter(|n| n.committed)
            .ok_or_else(|| bad(format!("bad snapshot name {name}")))?;
        let sdir = dir.join(ccl_engine::SNAPSHOTS_DIR);
        std::fs::create_dir_all(&sdir)?;
        std::fs::write(sdir.join(parsed.file_name()), &bytes)?;
    }
    let base: Base =
        serde_json::from_value(info["raft_base"].clone()).map_err(|e| bad(e.to_string()))?;
    init::seal(dir, &identity, &all)?;
    std::fs::write(dir.join(init::SERVICE_CERT), identity.service_cert.pem())?;
    std::fs::write(dir.join(init::NODE_CERT), identity.node_cert.pem())?;
    let mut engine = Engine::open(dir, cfg.engine.clone(), identity, all)?;
    let suffix = info["ledger_suffix"]
        .as_array()
        .ok_or_else(|| bad("no ledger_suffix".into()))?;
    for s in suffix {
        let bytes = unb64(s.as_str().unwrap_or(""), "ledger entry").map_err(bad)?;
        engine.append_replicated(&bytes)?;
    }
    if engine.last_seqno() != base.seqno {
        return Err(bad(format!(
            "the ledger suffix ends at {} but Raft's log continues after {}",
            engine.last_seqno(),
            base.seqno
        )));
    }
    engine.sync()?;
    drop(engine);
    Replica::write_base(dir, &base)?;
    Ok(node_id)
}

/// A snapshot file's receipt must verify against the service certificate and bind the
/// snapshot's digest (its claims digest).
fn check_snapshot(bytes: &[u8], service_cert_pem: &str) -> Result<(), String> {
    let (entry, receipt) =
        ccl_ledger::snapshot::split_snapshot_file(bytes).map_err(|e| e.to_string())?;
    let r =
        ccl_receipt::Receipt::from_slice(receipt).map_err(|e| format!("snapshot receipt: {e}"))?;
    r.verify(service_cert_pem)
        .map_err(|e| format!("snapshot receipt does not verify: {e}"))?;
    if r.leaf.claims_digest != ccl_crypto::sha256(entry.raw) {
        return Err("the snapshot receipt is for other contents".into());
    }
    Ok(())
}
