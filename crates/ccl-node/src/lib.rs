//! ccl's node: the engine behind HTTPS.
//!
//! One engine per node, behind a mutex: request handlers commit transactions into it (cheap: no
//! I/O), and a committer task writes signatures when due, fsyncs outside the lock (group commit:
//! one fsync for every transaction since the last) and then marks what is durable as committed.

pub mod api;
pub mod init;
pub mod tls;

use ccl_engine::{Engine, EngineConfig, EngineHandle};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Maps of the service (everything is a map, so the ledger is the audit).
pub mod maps {
    /// Users: key user id (certificate fingerprint), value `{"assignedRole", "cert"}`.
    pub const USERS: &str = "public:ccl.gov.users";
    /// Members: key member id (hex SHA-256 of the certificate DER), value certificate PEM.
    pub const MEMBERS: &str = "public:ccf.gov.members.certs";
    /// The constitution: key singleton, value the JavaScript source.
    pub const CONSTITUTION: &str = "public:ccf.gov.constitution";
    /// Ledger entries (private: encrypted in every ledger and snapshot file): key collection id,
    /// value `{"contents"}`; every write is a transaction, the map holds the latest per collection.
    pub const ENTRIES: &str = "ccl.app.entries";
    /// Which transactions wrote to which collection (private): key collection id, 0x00, seqno
    /// (u64 big-endian), so that a range scan lists a collection's entries in order.
    pub const ENTRY_INDEX: &str = "ccl.app.entry_index";
    /// Collections (private): key collection id, value the transaction id that created it.
    pub const COLLECTIONS: &str = "ccl.app.collections";
}

/// Default address `ccl start` listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// How often the committer looks for work.
pub const COMMIT_TICK: Duration = Duration::from_millis(1);

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// DNS names and IP addresses for the node certificate, besides localhost and 127.0.0.1.
    pub names: Vec<String>,
    pub engine: EngineConfig,
}

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
}

/// What the node shares with its request handlers.
pub struct Shared {
    pub engine: Mutex<Engine>,
    pub handle: EngineHandle,
    pub service_cert_pem: String,
    pub node_id: String,
    pub started: Instant,
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
        let (identity, secrets) = init::load(dir)?;
        let mut e = Engine::open(dir, cfg.engine.clone(), identity, secrets)?;
        // A restart is a new term: later transactions cannot be confused with lost ones.
        let v = e.view() + 1;
        e.set_view(v);
        (e, None)
    } else {
        let (identity, secret, created) = init::create(dir, &names)?;
        let (user_id, user_cert) = (created.user0_id.clone(), created.user0_cert.pem());
        let (member_id, member_cert) = (created.member0_id.clone(), created.member0_cert.pem());
        let e = Engine::create(dir, cfg.engine.clone(), identity, secret, |tx| {
            let user = serde_json::json!({"assignedRole": "Administrator", "cert": user_cert});
            tx.put(maps::USERS, user_id.as_bytes(), user.to_string().as_bytes())?;
            tx.put(maps::MEMBERS, member_id.as_bytes(), member_cert.as_bytes())?;
            tx.put(
                maps::CONSTITUTION,
                &ccl_ledger::tables::SINGLETON_KEY,
                api::DEFAULT_CONSTITUTION.as_bytes(),
            )
        })?;
        (e, Some(created))
    };
    let shared = Arc::new(Shared {
        handle: engine.handle(),
        service_cert_pem: engine.identity().service_cert.pem(),
        node_id: engine.identity().node_id(),
        engine: Mutex::new(engine),
        started: Instant::now(),
    });
    // Everything recovered (or the genesis) is durable: commit it before serving.
    {
        let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
        e.emit_signature()?;
        let s = e.sync()?;
        e.commit_up_to(s)?;
    }
    Ok((shared, created))
}

/// One round of the committer: a signature if due, fsync outside the lock, commit.
pub fn commit_round(shared: &Shared) -> Result<bool, NodeError> {
    let handle = {
        let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
        if e.last_seqno() == e.committed_seqno() {
            return Ok(false);
        }
        e.maybe_emit_signature(Instant::now())?;
        e.sync_handle()?
    };
    let durable = handle.sync()?;
    let mut e = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    e.commit_up_to(durable)?;
    Ok(true)
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
    let _ = cfg;
    let app = api::router(shared.clone());
    let committer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COMMIT_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = shared.clone();
                match tokio::task::spawn_blocking(move || commit_round(&s)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "committer"),
                    Err(e) => tracing::error!(error = %e, "committer task"),
                }
            }
        })
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => { tracing::warn!(error = %e, "accept"); continue; }
                };
                let tls = tls.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => { tracing::debug!(%peer, error = %e, "TLS handshake"); return; }
                        Err(_) => { tracing::debug!(%peer, "TLS handshake timed out"); return; }
                    };
                    let caller = api::Caller {
                        user_id: stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| tls::fingerprint(c)),
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
    committer.abort();
    let shared2 = shared.clone();
    tokio::task::spawn_blocking(move || -> Result<(), NodeError> {
        let mut e = shared2.engine.lock().unwrap_or_else(|p| p.into_inner());
        let last = e.finish()?;
        e.commit_up_to(last)?;
        Ok(())
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    Ok(())
}
