//! Disaster recovery: a new service (new identity) from the ledger of a lost one.
//!
//! `ccl recover` replays the public part of the old ledger and starts a new service in status
//! Recovering; the members vote `transition_service_to_open` naming the previous service
//! identity (WaitingForRecoveryShares), then submit their decrypted recovery shares. At the
//! threshold the shares give back the key that wrapped the old latest ledger secret, the chain
//! gives back every older one, the private state is replayed, and the service opens under its
//! new identity, which endorses the previous one so that old receipts still verify.

use ccl_gov::{GovError, Tx};
use ccl_ledger::tables;

/// The previous service identity: key [`tables::SINGLETON_KEY`], value the PEM as a JSON string
/// (CCF's map).
pub const PREVIOUS_SERVICE_IDENTITY: &str = "public:ccf.gov.service.previous_service_identity";

/// Whether the service is being recovered (Recovering or WaitingForRecoveryShares).
pub fn is_recovering(tx: &mut Tx) -> bool {
    tx.get(tables::SERVICE_INFO, &tables::SINGLETON_KEY)
        .and_then(|v| serde_json::from_slice::<tables::ServiceInfo>(&v).ok())
        .is_some_and(|i| {
            matches!(
                i.status,
                tables::ServiceStatus::Recovering | tables::ServiceStatus::WaitingForRecoveryShares
            )
        })
}

/// A recovering service opens only for a proposal that names the previous service identity.
pub fn check_previous_identity(tx: &mut Tx, given: Option<&str>) -> Result<(), GovError> {
    let recorded = tx
        .get(PREVIOUS_SERVICE_IDENTITY, &tables::SINGLETON_KEY)
        .and_then(|v| serde_json::from_slice::<String>(&v).ok())
        .ok_or_else(|| GovError::internal("a recovering service without a previous identity"))?;
    let given = given.ok_or_else(|| {
        GovError::bad(
            "MissingPreviousServiceIdentity",
            "opening a recovering service requires previous_service_identity (the certificate \
             of the service whose ledger it recovers)",
        )
    })?;
    let der = |pem: &str| ccl_crypto::Certificate::from_pem(pem).map(|c| c.der().to_vec());
    match (der(&recorded), der(given)) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        _ => Err(GovError::bad(
            "InvalidPreviousServiceIdentity",
            "previous_service_identity is not the certificate of the service being recovered",
        )),
    }
}

use crate::api::{ApiError, ApiResult, json_response};
use crate::{NodeConfig, NodeError, Shared, init};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use ccl_engine::{Engine, Identity};
use ccl_ledger::secrets::{LedgerSecret, LedgerSecrets};
use ccl_ledger::tables::{
    EncryptedLedgerSecretInfo, NodeInfo, NodeStatus, RecoverySharesInfo, ServiceEndorsement,
    ServiceInfo, ServiceStatus,
};
use ccl_ledger::txid::TxId;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Shares submitted so far (private: encrypted under the recovered service's own ledger
/// secret, and removed once the recovery completes): key member id, value the share.
pub const SUBMITTED_SHARES: &str = "ccl.internal.submitted_recovery_shares";
/// Links of the chain of ledger secrets followed back from the latest (bounds the walk).
pub const MAX_CHAIN_LINKS: usize = 100_000;

/// What `ccl recover` prints.
pub struct Prepared {
    /// The last signed transaction of the old ledger, where the new service continues.
    pub last_signed: TxId,
    pub previous_service_cert: String,
    pub service_cert: String,
}

fn config(m: impl std::fmt::Display) -> NodeError {
    NodeError::Config(m.to_string())
}

/// `ccl recover`: makes `cfg.data_dir` a new service (new identity) that continues the verified
/// ledger in `old_ledger` from its last signature: the ledger's chunks are copied, its public
/// domain replayed, and a recovery transaction written (status Recovering, the previous service
/// identity, the old nodes Retired, this node Trusted). The directory then opens like any node's.
pub fn prepare(cfg: &NodeConfig, old_ledger: &Path) -> Result<Prepared, NodeError> {
    let dir = &cfg.data_dir;
    if init::exists(dir) {
        return Err(config(format!(
            "{} already holds a node: recover into a new data directory",
            dir.display()
        )));
    }
    let report = ccl_ledger::verify::verify_ledger(
        old_ledger,
        &ccl_ledger::verify::VerifyOptions::default(),
        &mut |_, _| {},
    )
    .map_err(|e| config(format!("the ledger to recover does not verify: {e}")))?;
    let last_signed = report
        .last_signed
        .ok_or_else(|| config("the ledger to recover has no signature transaction"))?;
    let previous_service_cert = report
        .service_cert
        .ok_or_else(|| config("the ledger to recover names no service"))?;
    // The old chunks, copied: the new service appends to its own copy.
    let ledger_dir = dir.join(ccl_engine::LEDGER_DIR);
    std::fs::create_dir_all(&ledger_dir)?;
    for entry in std::fs::read_dir(old_ledger)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("ledger_") && entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), ledger_dir.join(&name))?;
        }
    }
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(cfg.names.iter().cloned());
    let identity = Identity::generate(&names).map_err(config)?;
    let recovery_secret = LedgerSecret::generate().map_err(config)?;
    let from = last_signed.seqno + 1;
    let mut secrets = LedgerSecrets::default();
    secrets.push(from, LedgerSecret::from_bytes(*recovery_secret.raw()));
    let mut e = Engine::open_public_only(dir, cfg.engine.clone(), identity.clone(), secrets)?;
    if e.last_seqno() > last_signed.seqno {
        // What no signature covers is not recovered (as in CCF).
        e.rollback(last_signed.seqno)?;
    }
    if e.store()
        .state()
        .get(tables::RECOVERY_SHARES, &tables::SINGLETON_KEY)
        .is_none()
    {
        return Err(config(
            "the lost service issued no recovery shares (it had no recovery members): its \
             private state cannot be recovered",
        ));
    }
    e.set_view(last_signed.view + 1);
    let view = e.view();
    let node_id = identity.node_id();
    let mut tx = e.store().begin();
    let old = tx
        .get_versioned(tables::SERVICE_INFO, &tables::SINGLETON_KEY)
        .ok_or_else(|| config("the ledger to recover has no service info"))?;
    let mut info: ServiceInfo = serde_json::from_slice(&old.value).map_err(config)?;
    info.status = ServiceStatus::Recovering;
    info.cert = identity.service_cert.pem();
    info.previous_service_identity_version = Some(old.version);
    info.recovery_count += 1;
    info.current_service_create_txid = TxId::new(view, from).to_string();
    tx.put(
        tables::SERVICE_INFO,
        &tables::SINGLETON_KEY,
        &serde_json::to_vec(&info).map_err(config)?,
    )?;
    tx.put(
        PREVIOUS_SERVICE_IDENTITY,
        &tables::SINGLETON_KEY,
        &serde_json::to_vec(&previous_service_cert).map_err(config)?,
    )?;
    // The old nodes are gone: Retired.
    let old_nodes = tx.range(
        tables::NODES,
        (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        crate::secrets::MAX_REKEY_NODES,
    );
    for (id, v) in old_nodes {
        if let Ok(mut n) = serde_json::from_slice::<NodeInfo>(&v)
            && n.status != NodeStatus::Retired
        {
            n.status = NodeStatus::Retired;
            n.retired_committed = true;
            tx.put(tables::NODES, &id, &serde_json::to_vec(&n).map_err(config)?)?;
        }
    }
    let node = NodeInfo {
        status: NodeStatus::Trusted,
        public_key: identity.node_key.verifying_key().to_pem(),
        quote_info: serde_json::Value::Null,
        rpc_address: cfg.rpc_address(),
        node_data: serde_json::Value::Null,
        retired_committed: false,
        ledger_secret_seqno: from,
    };
    tx.put(
        tables::NODES,
        node_id.as_bytes(),
        &serde_json::to_vec(&node).map_err(config)?,
    )?;
    tx.put(
        tables::ENDORSED_CERTIFICATES,
        node_id.as_bytes(),
        identity.node_cert.pem().as_bytes(),
    )?;
    // The recovery secret, for this node, through the ledger like any other.
    let sealed = ccl_crypto::ecies::seal_to(
        &identity.node_key.verifying_key(),
        tables::LEDGER_SECRET_ECIES_INFO,
        recovery_secret.raw(),
    )
    .map_err(config)?;
    let mut for_nodes = tables::LedgerSecretsForNodes::new();
    for_nodes.insert(
        node_id.clone(),
        vec![tables::EncryptedLedgerSecret {
            version: Some(from),
            encrypted_secret: sealed,
            previous_secret_stored_version: None,
        }],
    );
    tx.put(
        tables::ENCRYPTED_LEDGER_SECRETS,
        &tables::SINGLETON_KEY,
        &serde_json::to_vec(&for_nodes).map_err(config)?,
    )?;
    e.commit(tx, None)?;
    let last = e.finish()?;
    e.commit_up_to(last)?;
    let mut sealed_secrets = LedgerSecrets::default();
    sealed_secrets.push(from, recovery_secret);
    drop(e);
    init::seal_with(dir, &identity, &sealed_secrets, true)?;
    std::fs::write(dir.join(init::SERVICE_CERT), identity.service_cert.pem())?;
    std::fs::write(dir.join(init::NODE_CERT), identity.node_cert.pem())?;
    // Raft starts after what was recovered, in a term after the ledger's views.
    let raft_id = ccl_consensus::raft_id(&node_id).ok_or_else(|| config("node id is not hex"))?;
    let log_id = ccl_consensus::log_id(view, 0);
    let me = ccl_consensus::NodeAddr {
        rpc_address: cfg.rpc_address(),
        node_id: node_id.clone(),
    };
    let membership = ccl_consensus::Membership::new(
        vec![std::collections::BTreeSet::from([raft_id])],
        std::collections::BTreeMap::from([(raft_id, me)]),
    );
    ccl_consensus::log::Replica::write_base(
        dir,
        &ccl_consensus::log::Base {
            log_id,
            seqno: last,
            membership: ccl_consensus::StoredMembership::new(Some(log_id), membership),
        },
    )?;
    ccl_consensus::log::Replica::write_vote(dir, view, raft_id)?;
    Ok(Prepared {
        last_signed,
        previous_service_cert,
        service_cert: identity.service_cert.pem(),
    })
}

/// `GET /gov/recovery/encrypted-shares/{memberId}` (CCF's): the member's share, RSA-OAEP
/// encrypted to its encryption key.
pub async fn encrypted_share(
    State(shared): State<Arc<Shared>>,
    UrlPath(member): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    crate::gov::gov_version(&q)?;
    let info = recovery_shares(&shared.handle.store().state())?;
    let share = info.encrypted_shares.get(&member).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!("Recovery share not found for member {member}."),
        )
    })?;
    Ok(json_response(
        json!({"memberId": member, "encryptedShare": share}),
    ))
}

fn recovery_shares(state: &ccl_store::State) -> Result<RecoverySharesInfo, ApiError> {
    let v = state
        .get(tables::RECOVERY_SHARES, &tables::SINGLETON_KEY)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                "this service has no recovery shares",
            )
        })?;
    serde_json::from_slice(&v.value).map_err(ApiError::internal)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// `POST /gov/recovery/members/{memberId}:recover` (CCF 6's): an Active member's decrypted
/// recovery share, `{"share": base64}`, COSE Sign1 signed (`recovery_share`). A share that is not
/// the member's is refused and changes nothing; at the threshold the private state is recovered
/// and the service opens.
pub async fn submit_share(
    State(shared): State<Arc<Shared>>,
    UrlPath(rest): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    crate::gov::gov_version(&q)?;
    let Some(member) = rest.strip_suffix(":recover") else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "no such endpoint",
        ));
    };
    let body = crate::gov::cose_body(&headers, &body)?;
    let shared2 = shared.clone();
    let member = member.to_string();
    let body = body.to_vec();
    let out = tokio::task::spawn_blocking(move || submit(&shared2, &member, &body))
        .await
        .map_err(ApiError::internal)??;
    shared.refresh_status();
    Ok(json_response(out))
}

fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

fn submit(shared: &Shared, member: &str, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    let mut tx = e.store().begin();
    let signed = ccl_gov::request::verify(
        &mut tx,
        body,
        ccl_gov::msg::RECOVERY_SHARE,
        None,
        crate::gov::now(),
    )?;
    if signed.member_id != member {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationInfo",
            format!(
                "the request is signed by {}, not by member {member}",
                signed.member_id
            ),
        ));
    }
    if ccl_gov::member_status(&mut tx, member) != Some(ccl_gov::MemberStatus::Active) {
        return Err(forbidden(
            "AuthorizationFailed",
            format!("member {member} is not Active"),
        ));
    }
    let info: ServiceInfo = tx
        .get(tables::SERVICE_INFO, &tables::SINGLETON_KEY)
        .and_then(|v| serde_json::from_slice(&v).ok())
        .ok_or_else(|| ApiError::internal("no service info"))?;
    if info.status != ServiceStatus::WaitingForRecoveryShares {
        return Err(forbidden(
            "ServiceNotWaitingForRecoveryShares",
            "Service is not waiting for recovery shares.",
        ));
    }
    let payload: serde_json::Value = serde_json::from_slice(&signed.payload)
        .map_err(|e| ApiError::bad("InvalidInput", format!("the payload is not JSON: {e}")))?;
    let share = payload["share"]
        .as_str()
        .and_then(unb64)
        .map(zeroize::Zeroizing::new)
        .ok_or_else(|| {
            ApiError::bad(
                "InvalidInput",
                "the payload is {\"share\": the decrypted recovery share, base64}",
            )
        })?;
    let shares_info = recovery_shares(tx.snapshot())?;
    crate::secrets::check_share(&shares_info, member, &share)
        .map_err(|m| ApiError::bad("InvalidRecoveryShare", m))?;
    tx.put(SUBMITTED_SHARES, member.as_bytes(), &share)
        .map_err(ApiError::internal)?;
    let submitted = tx.range(
        SUBMITTED_SHARES,
        (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        crate::secrets::MAX_RECOVERY_MEMBERS,
    );
    let threshold = shares_info.threshold.max(1);
    let mut message = format!(
        "{}/{threshold} recovery shares successfully submitted",
        submitted.len()
    );
    if submitted.len() >= threshold {
        complete(&mut e, &mut tx, &shares_info, &submitted)?;
        message.push_str("\nEnd of recovery procedure initiated");
    }
    e.commit(tx, None).map_err(ApiError::internal)?;
    if submitted.len() >= threshold {
        // Every secret is known now: sealed, and the service is an ordinary one again.
        crate::init::seal_with(&shared.data_dir, e.identity(), &e.ledger_secrets(), false)
            .map_err(ApiError::internal)?;
        tracing::info!("disaster recovery complete: the service is Open");
    }
    Ok(json!({
        "message": message,
        "submittedCount": submitted.len(),
        "recoveryThreshold": threshold,
    }))
}

/// At the threshold: the shares give the wrapping key, which unwraps the old latest secret; the
/// chain gives every older one; the private state is replayed; the new identity endorses the
/// previous one; new shares are issued; the service opens.
fn complete(
    e: &mut Engine,
    tx: &mut Tx,
    shares_info: &RecoverySharesInfo,
    submitted: &[(Bytes, Bytes)],
) -> Result<(), ApiError> {
    let parts: Vec<&[u8]> = submitted.iter().map(|(_, s)| &s[..]).collect();
    let key = ccl_crypto::shamir::combine(&parts).map_err(ApiError::internal)?;
    let latest = ccl_crypto::aead::open_blob(&key, &shares_info.wrapped_latest_ledger_secret)
        .map_err(|_| ApiError::internal("the recovery shares do not unwrap the ledger secret"))?;
    let latest: [u8; 32] = latest[..]
        .try_into()
        .map_err(|_| ApiError::internal("a wrapped ledger secret of the wrong length"))?;
    // The chain, followed back from its latest link through each previous write's seqno.
    let handle = e.handle();
    let mut links = Vec::new();
    let mut at = tx
        .get_versioned(
            tables::HISTORICAL_ENCRYPTED_LEDGER_SECRET,
            &tables::SINGLETON_KEY,
        )
        .map(|v| v.version);
    while let Some(seqno) = at {
        if links.len() >= MAX_CHAIN_LINKS {
            return Err(ApiError::internal(
                "the chain of ledger secrets is too long",
            ));
        }
        let h = handle.read_public(seqno).map_err(ApiError::internal)?;
        let v = h
            .written(
                tables::HISTORICAL_ENCRYPTED_LEDGER_SECRET,
                &tables::SINGLETON_KEY,
            )
            .ok_or_else(|| {
                ApiError::internal(format!("no link of the secrets chain at seqno {seqno}"))
            })?;
        let info: EncryptedLedgerSecretInfo =
            serde_json::from_slice(v).map_err(ApiError::internal)?;
        at = info
            .previous_ledger_secret
            .as_ref()
            .and_then(|p| p.previous_secret_stored_version);
        links.push(crate::secrets::ChainLink { seqno, info });
    }
    links.reverse();
    let old = crate::secrets::walk_chain(&links, LedgerSecret::from_bytes(latest))
        .map_err(ApiError::internal)?;
    let current = e.ledger_secrets();
    let (Some(recovery_from), Some(recovery_secret)) = (
        current.iter().next().map(|(f, _)| f),
        current
            .iter()
            .next()
            .map(|(_, s)| LedgerSecret::from_bytes(*s.raw())),
    ) else {
        return Err(ApiError::internal("no recovery secret"));
    };
    let restored = e
        .recover_private(old.duplicate())
        .map_err(ApiError::internal)?;
    tracing::info!(
        secrets = old.len(),
        maps = restored,
        "private state recovered"
    );
    crate::secrets::write_recovered(tx, &old, &recovery_secret, recovery_from)?;
    // The new identity endorses the previous one: receipts from before stay verifiable.
    let previous: String = tx
        .get(PREVIOUS_SERVICE_IDENTITY, &tables::SINGLETON_KEY)
        .and_then(|v| serde_json::from_slice(&v).ok())
        .ok_or_else(|| ApiError::internal("no previous service identity"))?;
    let previous = ccl_crypto::Certificate::from_pem(&previous).map_err(ApiError::internal)?;
    let id = e.identity().clone();
    let endorsement = ccl_crypto::cert::issue(
        &previous.public_key().map_err(ApiError::internal)?,
        &ccl_crypto::cert::CertSpec {
            common_name: "ccl previous service".into(),
            subject_alt_names: vec![],
            not_before: previous.not_before(),
            validity_days: ccl_engine::identity::DEFAULT_CERT_VALIDITY_DAYS,
            kind: ccl_crypto::cert::CertKind::Ca,
        },
        &id.service_key,
        &id.service_cert,
    )
    .map_err(ApiError::internal)?;
    let mut endorsements: Vec<ServiceEndorsement> = tx
        .get(tables::SERVICE_ENDORSEMENTS, &tables::SINGLETON_KEY)
        .and_then(|v| serde_json::from_slice(&v).ok())
        .unwrap_or_default();
    endorsements.push(ServiceEndorsement {
        cert: endorsement.pem(),
        to_seqno: recovery_from - 1,
    });
    tx.put(
        tables::SERVICE_ENDORSEMENTS,
        &tables::SINGLETON_KEY,
        &serde_json::to_vec(&endorsements).map_err(ApiError::internal)?,
    )
    .map_err(ApiError::internal)?;
    for (member, _) in submitted {
        tx.remove(SUBMITTED_SHARES, member)
            .map_err(ApiError::internal)?;
    }
    let mut info: ServiceInfo = tx
        .get(tables::SERVICE_INFO, &tables::SINGLETON_KEY)
        .and_then(|v| serde_json::from_slice(&v).ok())
        .ok_or_else(|| ApiError::internal("no service info"))?;
    info.status = ServiceStatus::Open;
    tx.put(
        tables::SERVICE_INFO,
        &tables::SINGLETON_KEY,
        &serde_json::to_vec(&info).map_err(ApiError::internal)?,
    )
    .map_err(ApiError::internal)?;
    Ok(())
}
