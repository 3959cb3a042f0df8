//! `ccl start`: a node on embedded defaults.

use anyhow::{Context, Result};
use ccl_engine::EngineConfig;
use ccl_node::{NodeConfig, init};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct StartArgs {
    /// A TOML file with any of the options below (same names, with underscores); options given
    /// on the command line win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the node keeps its ledger, snapshots, identities and sealed secrets. Created with
    /// a new service (identities generated) when it holds none; recovered when it does.
    /// [default: ccl-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on (HTTPS). [default: 127.0.0.1:8443]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Extra DNS names or IP addresses for the node certificate (localhost and 127.0.0.1 are
    /// always in it). Repeatable.
    #[arg(long = "name")]
    names: Vec<String>,
    /// A signature transaction at least every this many transactions. [default: 5000]
    #[arg(long)]
    signature_interval_txs: Option<u64>,
    /// ...and at least this often (milliseconds) while there are unsigned transactions.
    /// [default: 100]
    #[arg(long)]
    signature_interval_ms: Option<u64>,
    /// A snapshot after this many transactions (0: never). [default: 100000]
    #[arg(long)]
    snapshot_interval_txs: Option<u64>,
    /// New service only: how many members to generate (certificate + key written to
    /// member<i>.pem in the data directory). [default: 1, or 0 with --member-cert]
    #[arg(long)]
    members: Option<usize>,
    /// New service only: a member's certificate (PEM); the member keeps its key. Repeatable.
    #[arg(long = "member-cert")]
    member_certs: Vec<PathBuf>,
    /// New service only: stay Opening until the members vote transition_service_to_open,
    /// rather than opening at once with the generated members' votes. A service with
    /// --member-cert members always waits for them.
    #[arg(long)]
    no_auto_open: bool,
}

/// The `--config` file.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    #[serde(default)]
    names: Vec<String>,
    signature_interval_txs: Option<u64>,
    signature_interval_ms: Option<u64>,
    snapshot_interval_txs: Option<u64>,
    members: Option<usize>,
    #[serde(default)]
    member_certs: Vec<PathBuf>,
    auto_open: Option<bool>,
}

/// Largest configuration file read.
const MAX_CONFIG_FILE: u64 = 1 << 20;

fn load_config(path: &std::path::Path) -> Result<ConfigFile> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > MAX_CONFIG_FILE {
        anyhow::bail!("{} is larger than {MAX_CONFIG_FILE} bytes", path.display());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid configuration {}", path.display()))
}

/// The node configuration from the command line over the file over the defaults.
fn node_config(args: StartArgs) -> Result<NodeConfig> {
    let file = match &args.config {
        Some(p) => load_config(p)?,
        None => ConfigFile::default(),
    };
    let default_listen: SocketAddr = ccl_node::DEFAULT_LISTEN
        .parse()
        .expect("a valid default address");
    let mut names = file.names;
    names.extend(args.names);
    let mut cert_paths = file.member_certs;
    cert_paths.extend(args.member_certs);
    let mut member_certs = Vec::new();
    for p in &cert_paths {
        let pem = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read member certificate {}", p.display()))?;
        member_certs.push(pem);
    }
    let generated_members = args
        .members
        .or(file.members)
        .unwrap_or(if member_certs.is_empty() { 1 } else { 0 });
    let auto_open = !args.no_auto_open && file.auto_open.unwrap_or(true);
    Ok(NodeConfig {
        generated_members,
        member_certs,
        auto_open,
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("ccl-data")),
        listen: args.listen.or(file.listen).unwrap_or(default_listen),
        names,
        engine: EngineConfig {
            signature_interval_txs: args
                .signature_interval_txs
                .or(file.signature_interval_txs)
                .unwrap_or(ccl_engine::DEFAULT_SIGNATURE_INTERVAL_TXS)
                .max(1),
            signature_interval: Duration::from_millis(
                args.signature_interval_ms
                    .or(file.signature_interval_ms)
                    .unwrap_or(ccl_engine::DEFAULT_SIGNATURE_INTERVAL.as_millis() as u64)
                    .max(1),
            ),
            snapshot_interval_txs: args
                .snapshot_interval_txs
                .or(file.snapshot_interval_txs)
                .unwrap_or(ccl_engine::DEFAULT_SNAPSHOT_INTERVAL_TXS),
            ..EngineConfig::default()
        },
    })
}

pub fn run(args: StartArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CCL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = node_config(args)?;
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
        if !shared.is_open() {
            println!("\nthe service is Opening: its members must acknowledge the state digest and vote transition_service_to_open (ccl gov ack, ccl gov propose, ccl gov vote)");
        }
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
            "ccl: new service in {} (user0 = {}, Administrator; {} generated member(s): {})",
            dir.display(),
            c.user0_id,
            c.members.len(),
            (0..c.members.len())
                .map(|i| dir.join(init::member_file(i)).display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
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
