//! `ccl start`: a node on embedded defaults.

use anyhow::{Context, Result};
use ccl_engine::EngineConfig;
use ccl_node::{NodeConfig, init};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct StartArgs {
    /// Where the node keeps its ledger, snapshots, identities and sealed secrets. Created with
    /// a new service (identities generated) when it holds none; recovered when it does.
    #[arg(long, default_value = "ccl-data")]
    data_dir: PathBuf,
    /// Address to listen on (HTTPS).
    #[arg(long, default_value = ccl_node::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Extra DNS names or IP addresses for the node certificate (localhost and 127.0.0.1 are
    /// always in it). Repeatable.
    #[arg(long = "name")]
    names: Vec<String>,
    /// A signature transaction at least every this many transactions.
    #[arg(long, default_value_t = ccl_engine::DEFAULT_SIGNATURE_INTERVAL_TXS)]
    signature_interval_txs: u64,
    /// ...and at least this often (milliseconds) while there are unsigned transactions.
    #[arg(long, default_value_t = ccl_engine::DEFAULT_SIGNATURE_INTERVAL.as_millis() as u64)]
    signature_interval_ms: u64,
    /// A snapshot after this many transactions (0: never).
    #[arg(long, default_value_t = ccl_engine::DEFAULT_SNAPSHOT_INTERVAL_TXS)]
    snapshot_interval_txs: u64,
}

pub fn run(args: StartArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CCL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = NodeConfig {
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        names: args.names,
        engine: EngineConfig {
            signature_interval_txs: args.signature_interval_txs.max(1),
            signature_interval: Duration::from_millis(args.signature_interval_ms.max(1)),
            snapshot_interval_txs: args.snapshot_interval_txs,
            ..EngineConfig::default()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let (shared, created) = tokio::task::spawn_blocking({
            let cfg = cfg.clone();
            move || ccl_node::open(&cfg)
        })
        .await??;
        let listener = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        print_banner(&cfg, addr, created.as_ref());
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        };
        ccl_node::serve(cfg, shared, listener, shutdown).await?;
        eprintln!("ccl stopped cleanly");
        Ok(())
    })
}

fn print_banner(cfg: &NodeConfig, addr: SocketAddr, created: Option<&init::Created>) {
    let dir = std::fs::canonicalize(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    let cert = dir.join(init::SERVICE_CERT);
    let user = dir.join(init::USER0);
    let host = if addr.ip().is_loopback() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    match created {
        Some(c) => println!(
            "ccl: new service in {} (user0 = {}, Administrator)",
            dir.display(),
            c.user0_id
        ),
        None => println!("ccl: recovered the service in {}", dir.display()),
    }
    println!(
        "listening on https://{host}\n\
         service certificate: {cert}\n\
         user0 credential (certificate + key): {user}\n\n\
         Python (azure-confidentialledger):\n\
         \x20 from azure.confidentialledger import ConfidentialLedgerClient, ConfidentialLedgerCertificateCredential\n\
         \x20 client = ConfidentialLedgerClient(\"https://{host}\", credential=ConfidentialLedgerCertificateCredential(\"{user}\"), ledger_certificate_path=\"{cert}\")\n\
         \x20 print(client.create_ledger_entry({{\"contents\": \"hello\"}}))\n\n\
         curl:\n\
         \x20 curl --cacert {cert} --cert {user} -H 'content-type: application/json' -d '{{\"contents\":\"hello\"}}' 'https://{host}/app/transactions?api-version={v}'",
        cert = cert.display(),
        user = user.display(),
        v = ccl_node::api::API_VERSION,
    );
}
