//! ccl's node: the engine behind HTTPS, replicated by Raft.
//!
//! One engine per node, behind a mutex. On the primary, request handlers execute transactions
//! in it (cheap: no I/O); the proposer ([`ccl_consensus::proposer`]) writes signatures when due
//! and hands new entries to Raft, which makes them durable on a majority (group commit: one fsync
//! per batch) and then commits them. A backup forwards writes to the primary and serves reads
//! from its own copy.

pub mod access;
pub mod api;
pub mod batch;
pub mod forward;
pub mod gov;
pub mod init;
pub mod join;
pub mod recovery;
pub mod replication;
pub mod secrets;
pub mod tls;

use ccl_consensus::Raft;
use ccl_consensus::log::Replica;
use ccl_engine::{Engine, EngineConfig, EngineHandle};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Maps of the service (everything is a map, so the ledger is the audit).
pub mod maps {
    /// Users' certificates: key user id (hex SHA-256 of the certificate DER), value PEM.
    pub const USER_CERTS: &str = ccl_gov::maps::USER_CERTS;
    /// Users' data: key user id (or an Azure user id that is not a certificate fingerprint),
    /// value `{"user_data": {"assignedRole": "Administrator" | "Contributor" | "Reader", …}}`.
    pub const USER_INFO: &str = ccl_gov::maps::USER_INFO;
    /// Members: key member id (hex SHA-256 of the certificate DER), value certificate PEM.
    pub const MEMBERS: &str = ccl_gov::maps::MEMBER_CERTS;
    /// The constitution: key singleton, value the JavaScript source.
    pub const CONSTITUTION: &str = ccl_gov::maps::CONSTITUTION;
    /// Ledger entries (private: encrypted in every ledger and snapshot file): key collection id,
    /// value `{"contents"}`; every write is a transaction, the map holds the latest per collection.
    pub const ENTRIES: &str = "ccl.app.entries";
    /// Which transactions wrote to which collection (private): key collection id, 0x00, seqno
    /// (u64 big-endian), so that a range scan lists a collection's entries in order.
    pub const ENTRY_INDEX: &str = "ccl.app.entry_index";
    /// Collections (private): key collection id, value the transaction id that created it.
    pub const COLLECTIONS: &str = "ccl.app.collections";
}

/// A new single-node service's configuration in `data_dir`, listening on `listen`, with one
/// generated member and opened at once (unit tests).
#[cfg(test)]
pub(crate) fn test_config(data_dir: PathBuf, listen: SocketAddr) -> NodeConfig {
    NodeConfig {
        data_dir,
        listen,
        names: vec![],
        engine: Default::default(),
        generated_members: 1,
        member_certs: vec![],
        auto_open: true,
        rpc_address: None,
    }
}

/// Default address `ccl start` listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// At shutdown, how long the primary waits for its last signature to commit.
pub const SHUTDOWN_COMMIT_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// DNS names and IP addresses for the node certificate, besides localhost and 127.0.0.1.
    pub names: Vec<String>,
    pub engine: EngineConfig,
    /// Members a new service starts with: this many generated (keys in the data directory)...
    pub generated_members: usize,
    /// ...plus these certificates (PEM) of members who keep their own keys.
    pub member_certs: Vec<String>,
    /// Whether a new service whose members were all generated here opens itself at once (its
    /// members acknowledge and vote `transition_service_to_open`, signed with their keys, on the
    /// ledger like any vote). Otherwise it stays Opening until its members open it.
    pub auto_open: bool,
    /// The `host:port` other nodes reach this one at (default: the listen address).
    pub rpc_address: Option<String>,
}

impl NodeConfig {
    pub fn rpc_address(&self) -> String {
        self.rpc_address
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

/// How long a single-node network waits for its own election before serving.
pub const SINGLE_NODE_ELECTION_WAIT: Duration = Duration::from_secs(5);

/// Node certificates whose endorsement check is remembered.
pub const MAX_CACHED_NODE_CERTS: usize = 1024;

/// Most members a service starts with.
pub const MAX_INITIAL_MEMBERS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Init(#[from] init::InitError),
    #[error(transparent)]
    Engine(#[from] ccl_engine::EngineError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tx(#[from] ccl_store::TxError),
    #[error("{0}")]
    Config(String),
    #[error("consensus: {0}")]
    Consensus(String),
}

/// What the node shares with its request handlers.
pub struct Shared {
    pub engine: Arc<Mutex<Engine>>,
    /// Entry writes waiting to be executed in a batch (by the thread [`batch::start`] starts).
    pub writes: Arc<batch::WriteQueue>,
    /// Raft's view of the engine (log and state machine).
    pub replica: Arc<Replica>,
    /// Raft, once [`serve`] started it.
    pub raft: OnceLock<Raft>,
    /// This node's Raft id.
    pub raft_id: u64,
    /// Certificate ids of nodes already checked: certificate id -> node id.
    pub node_certs: Mutex<std::collections::HashMap<String, String>>,
    /// Connections to the primary, for forwarded writes.
    pub forwarder: forward::Forwarder,
    pub handle: EngineHandle,
    pub service_cert_pem: String,
    pub node_id: String,
    pub started: Instant,
    /// The data directory (sealed secrets are rewritten there on rekey).
    pub data_dir: PathBuf,
    /// Whether the service is Open (cached from the service info map, refreshed by governance).
    open: std::sync::atomic::AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.writes.close();
    }
}

impl Shared {
    /// The service info (identity and status) from the store.
    pub fn service_info(&self) -> Result<ccl_ledger::tables::ServiceInfo, String> {
        let state = self.handle.store().state();
        let v = state
            .get(
                ccl_ledger::tables::SERVICE_INFO,
                &ccl_ledger::tables::SINGLETON_KEY,
            )
            .ok_or("no service info")?;
        serde_json::from_slice(&v.value).map_err(|e| e.to_string())
    }

    /// Whether the service is Open (users may use it).
    pub fn is_open(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this node is the primary (executes writes).
    pub fn is_primary(&self) -> bool {
        self.raft
            .get()
            .is_some_and(|r| ccl_consensus::proposer::is_primary(&self.replica, r, self.raft_id))
    }

    /// Nodes in Raft's membership (voters and learners); 1 before Raft starts.
    pub fn network_size(&self) -> usize {
        self.raft.get().map_or(1, |r| {
            r.metrics()
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .count()
        })
    }

    /// Re-reads the service status after a change.
    pub fn refresh_status(&self) {
        let open = self
            .service_info()
            .is_ok_and(|i| i.status == ccl_ledger::tables::ServiceStatus::Open);
        self.open.store(open, std::sync::atomic::Ordering::Release);
    }

    /// The constitution's source.
    pub fn constitution(&self) -> String {
        let state = self.handle.store().state();
        state
            .get(maps::CONSTITUTION, &ccl_gov::SINGLETON_KEY)
            .map(|v| String::from_utf8_lossy(&v.value).into_owned())
            .unwrap_or_default()
    }
}

/// A started node: its address, and what `ccl start` prints.
pub struct Started {
    pub addr: SocketAddr,
    pub created: Option<init::Created>,
    pub shared: Arc<Shared>,
}

/// Opens (or creates) the node in `cfg.data_dir`.
pub fn open(cfg: &NodeConfig) -> Result<(Arc<Shared>, Option<init::Created>), NodeError> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(cfg.names.iter().cloned());
    let dir = &cfg.data_dir;
    let (engine, created) = if init::exists(dir) {
        let (identity, secrets, recovering) = init::load_with(dir)?;
        let e = if recovering {
            Engine::open_public_only(dir, cfg.engine.clone(), identity, secrets)?
        } else {
            Engine::open(dir, cfg.engine.clone(), identity, secrets)?
        };
        (e, None)
    } else {
        if cfg.generated_members + cfg.member_certs.len() == 0
            || cfg.generated_members + cfg.member_certs.len() > MAX_INITIAL_MEMBERS
        {
            return Err(NodeError::Config(format!(
                "a service starts with 1 to {MAX_INITIAL_MEMBERS} members"
            )));
        }
        for pem in &cfg.member_certs {
            ccl_gov::cert_id(pem)
                .map_err(|e| NodeError::Config(format!("member certificate: {e}")))?;
        }
        let measurement = join::own_measurement()?;
        let (identity, secret, created) = init::create(dir, &names, cfg.generated_members)?;
        let user_key = hex::encode(ccl_crypto::sha256(created.user0_cert.der()));
        let user_cert = created.user0_cert.pem();
        // Generated members are recovery members (with encryption keys); a majority of them must
        // submit their shares to recover the service (set_recovery_threshold changes it).
        let mut member_pems: Vec<(String, Option<String>)> = created
            .members
            .iter()
            .zip(&created.member_encryption_keys)
            .map(|(m, k)| (m.1.pem(), Some(k.clone())))
            .collect();
        member_pems.extend(cfg.member_certs.iter().map(|c| (c.clone(), None)));
        let threshold = (created.members.len() / 2 + 1)
            .min(created.members.len())
            .max(1);
        let mut gov_error = None;
        let e = Engine::create(dir, cfg.engine.clone(), identity, secret, |tx| {
            let user = serde_json::json!({"user_data": {"assignedRole": "Administrator"}});
            tx.put(maps::USER_CERTS, user_key.as_bytes(), user_cert.as_bytes())?;
            tx.put(
                maps::USER_INFO,
                user_key.as_bytes(),
                user.to_string().as_bytes(),
            )?;
            for (pem, key) in &member_pems {
                if let Err(e) =
                    ccl_gov::add_member(tx, pem, ccl_gov::MemberStatus::Accepted, key.as_deref())
                {
                    gov_error = Some(e);
                }
            }
            if let Err(e) = secrets::write_genesis(tx, threshold) {
                gov_error = Some(e);
            }
            if let Err(e) = ccl_gov::set_constitution(tx, ccl_gov::DEFAULT_CONSTITUTION) {
                gov_error = Some(e);
            }
            // Nodes running this very binary may join (virtual platform).
            tx.put(
                join::VIRTUAL_MEASUREMENTS,
                hex::encode(measurement).as_bytes(),
                b"\"AllowedToJoin\"",
            )?;
            Ok(())
        })?;
        if let Some(err) = gov_error {
            return Err(NodeError::Config(format!("genesis: {err}")));
        }
        (e, Some(created))
    };
    let node_id = engine.identity().node_id();
    let raft_id = ccl_consensus::raft_id(&node_id)
        .ok_or_else(|| NodeError::Config("node id is not hex".into()))?;
    let handle = engine.handle();
    let service_cert_pem = engine.identity().service_cert.pem();
    let identity_pem = format!(
        "{}{}",
        engine.identity().node_cert.pem(),
        &*engine.identity().node_key.to_pkcs8_pem()
    );
    let engine = Arc::new(Mutex::new(engine));
    let replica = Replica::open(engine.clone(), dir)?;
    let shared = Arc::new(Shared {
        handle,
        forwarder: forward::Forwarder::new(service_cert_pem.clone(), identity_pem),
        service_cert_pem,
        node_id,
        engine,
        writes: Default::default(),
        replica,
        raft: OnceLock::new(),
        raft_id,
        node_certs: Mutex::new(Default::default()),
        started: Instant::now(),
        data_dir: dir.to_path_buf(),
        open: Default::default(),
    });
    batch::start(&shared)?;
    shared.refresh_status();
    if let Some(c) = &created
        && cfg.auto_open
        && cfg.member_certs.is_empty()
    {
        open_by_members(&shared, &c.members)?;
    }
    Ok((shared, created))
}

/// Opens a new service with the votes of its generated members: each acknowledges the state
/// digest (becoming Active), the first proposes `transition_service_to_open`, and they vote until
/// the constitution accepts it. Every step is a signed request on the ledger, as if sent over HTTP.
fn open_by_members(
    shared: &Shared,
    members: &[(
        String,
        ccl_crypto::cert::Certificate,
        ccl_crypto::keys::SigningKey,
    )],
) -> Result<(), NodeError> {
    use ccl_gov::{msg, request::verify};
    let gov_err = |e: api::ApiError| NodeError::Config(format!("opening the service: {e:?}"));
    let now = ccl_crypto::cert::now_unix;
    let sign = |(id, _, key): &(String, _, ccl_crypto::keys::SigningKey),
                ty: &str,
                pid: Option<&str>,
                payload: &str| {
        ccl_gov::sign_request(key, id, ty, pid, now(), payload.as_bytes())
            .map_err(|e| NodeError::Config(e.to_string()))
    };
    for m in members {
        let id = m.0.as_str();
        let req = sign(m, msg::STATE_DIGEST, None, "")?;
        let digest = gov::transact(shared, |tx, root| {
            let s = verify(tx, &req, msg::STATE_DIGEST, None, now())?;
            let digest = hex::encode(root);
            ccl_gov::update_state_digest(tx, &s, id, &digest)?;
            Ok((digest, Default::default()))
        })
        .map_err(gov_err)?;
        let req = sign(
            m,
            msg::ACK,
            None,
            &serde_json::json!({"stateDigest": digest}).to_string(),
        )?;
        gov::transact(shared, |tx, _| {
            let s = verify(tx, &req, msg::ACK, None, now())?;
            ccl_gov::ack(tx, &s, &req, id)?;
            Ok(((), Default::default()))
        })
        .map_err(gov_err)?;
    }
    let proposal = r#"{"actions":[{"name":"transition_service_to_open","args":{}}]}"#;
    let state = propose_and_approve(shared, members, proposal)?;
    if !shared.is_open() {
        return Err(NodeError::Config(format!(
            "the service did not open: the proposal is {state:?}"
        )));
    }
    Ok(())
}

/// A proposal by the first of `members`, and a ballot in favour by each until it is decided;
/// every step a signed request on the ledger, as if sent over HTTP (development networks whose
/// members' keys are at hand). Returns the proposal's final state.
pub fn propose_and_approve(
    shared: &Shared,
    members: &[(
        String,
        ccl_crypto::cert::Certificate,
        ccl_crypto::keys::SigningKey,
    )],
    proposal: &str,
) -> Result<ccl_gov::ProposalState, NodeError> {
    use ccl_gov::{msg, request::verify};
    let gov_err = |e: api::ApiError| NodeError::Config(format!("governance: {e:?}"));
    let now = ccl_crypto::cert::now_unix;
    let sign = |(id, _, key): &(String, _, ccl_crypto::keys::SigningKey),
                ty: &str,
                pid: Option<&str>,
                payload: &str| {
        ccl_gov::sign_request(key, id, ty, pid, now(), payload.as_bytes())
            .map_err(|e| NodeError::Config(e.to_string()))
    };
    let first = members
        .first()
        .ok_or_else(|| NodeError::Config("no member to propose".into()))?;
    let req = sign(first, msg::PROPOSAL, None, proposal)?;
    let mut out = gov::transact(shared, |tx, root| {
        let s = verify(tx, &req, msg::PROPOSAL, None, now())?;
        ccl_gov::propose(tx, &s, &req, root).map(gov::with_effects)
    })
    .map_err(gov_err)?;
    let ballot = r#"{"ballot":"export function vote (proposal, proposerId) { return true }"}"#;
    for m in members {
        if out.info.state != ccl_gov::ProposalState::Open {
            break;
        }
        let pid = out.proposal_id.clone();
        let req = sign(m, msg::BALLOT, Some(&pid), ballot)?;
        out = gov::transact(shared, |tx, _| {
            let s = verify(tx, &req, msg::BALLOT, Some(&pid), now())?;
            ccl_gov::ballot(tx, &s, &req, &pid, &m.0).map(gov::with_effects)
        })
        .map_err(gov_err)?;
    }
    Ok(out.info.state)
}

/// Nodes waiting to join (Pending in the nodes map): their ids.
pub fn pending_nodes(shared: &Shared) -> Vec<String> {
    let state = shared.handle.store().state();
    let Some(m) = state.map(ccl_ledger::tables::NODES) else {
        return Vec::new();
    };
    m.iter()
        .filter(|(_, v)| {
            serde_json::from_slice::<ccl_ledger::tables::NodeInfo>(&v.value)
                .is_ok_and(|i| i.status == ccl_ledger::tables::NodeStatus::Pending)
        })
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// Runs the node until `shutdown` resolves; then writes a final signature and syncs.
pub async fn serve(
    cfg: NodeConfig,
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let (chain, key) = {
        let e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
        let id = e.identity();
        (
            vec![id.node_cert.der().to_vec(), id.service_cert.der().to_vec()],
            id.node_key.to_pkcs8_der(),
        )
    };
    let tls = tokio_rustls::TlsAcceptor::from(tls::server_config(chain, &key)?);
    let tasks = replication::start(&shared, &cfg).await?;
    // A network of one node elects itself at once: wait for it (bounded), so that the first
    // requests do not meet an election under way.
    let deadline = Instant::now() + SINGLE_NODE_ELECTION_WAIT;
    // (Before Raft's metrics show the initial membership, the network counts 0 nodes.)
    while shared.network_size() <= 1 && !shared.is_primary() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let app = forward::with_batches(api::router(shared.clone()), shared.clone());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => { tracing::warn!(error = %e, "accept"); continue; }
                };
                // Answers go out as written (requests and answers are whole messages; Nagle's
                // algorithm would hold a short answer back for the peer's ACK).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "TCP_NODELAY");
                }
                let tls = tls.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => { tracing::debug!(%peer, error = %e, "TLS handshake"); return; }
                        Err(_) => { tracing::debug!(%peer, "TLS handshake timed out"); return; }
                    };
                    let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.to_vec()));
                    let caller = api::Caller {
                        cert_id: cert.as_ref().map(|c| hex::encode(ccl_crypto::sha256(c))),
                        cert,
                    };
                    let svc = hyper_util::service::TowerToHyperService::new(
                        tower::ServiceBuilder::new().layer(axum::Extension(caller)).service(app),
                    );
                    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    if let Err(e) = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await {
                        tracing::debug!(%peer, error = %e, "connection");
                    }
                });
            }
        }
    }
    replication::stop(&shared, tasks).await;
    Ok(())
}
