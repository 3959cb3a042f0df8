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
    /// ...and sooner, as soon as the previous signature is committed, but no more often than
    /// this (milliseconds; at least --signature-interval-ms: never early; a signature covering
    /// fewer than 64 transactions waits that share of it). [default: 4]
    #[arg(long)]
    signature_min_interval_ms: Option<u64>,
    /// A snapshot after this many transactions (0: never). [default: 100000]
    #[arg(long)]
    snapshot_interval_txs: Option<u64>,
    /// A ledger chunk completes at the first signature after it reaches this many bytes (every
    /// node of a network must use the same value). [default: 5242880]
    #[arg(long)]
    chunk_size: Option<u64>,
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
    /// The host:port other nodes reach this node at. [default: the listen address]
    #[arg(long)]
    rpc_address: Option<String>,
    /// Development: a local network of this many nodes, one process each, on consecutive ports
    /// from --listen, with data in <data-dir>/node<i>. Node 0 starts the service; the others
    /// join it and the generated members admit them. Run the same command to restart it.
    #[arg(long)]
    nodes: Option<usize>,
}

/// Smallest ledger chunk size accepted.
pub const MIN_CHUNK_SIZE: u64 = 4096;

/// Most nodes `ccl start --nodes` runs.
pub const MAX_LOCAL_NODES: usize = 9;

#[derive(clap::Args)]
pub struct JoinArgs {
    /// Any node of the network to join (https://host:port); a backup forwards to the primary.
    #[arg(long)]
    target: String,
    /// The network's service certificate (PEM): the only certificate trusted.
    #[arg(long)]
    service_cert: PathBuf,
    #[command(flatten)]
    start: StartArgs,
}

#[derive(clap::Args)]
pub struct RecoverArgs {
    /// The ledger directory of the lost service (one node's `ledger/`: the one with the longest
    /// ledger). It is verified, then copied into the new data directory.
    #[arg(long)]
    ledger_dir: PathBuf,
    #[command(flatten)]
    start: StartArgs,
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
    signature_min_interval_ms: Option<u64>,
    snapshot_interval_txs: Option<u64>,
    chunk_size: Option<u64>,
    members: Option<usize>,
    #[serde(default)]
    member_certs: Vec<PathBuf>,
    auto_open: Option<bool>,
    rpc_address: Option<String>,
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
        rpc_address: args.rpc_address.or(file.rpc_address),
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
            signature_min_interval: Duration::from_millis(
                args.signature_min_interval_ms
                    .or(file.signature_min_interval_ms)
                    .unwrap_or(ccl_engine::DEFAULT_SIGNATURE_MIN_INTERVAL.as_millis() as u64)
                    .max(1),
            ),
            snapshot_interval_txs: args
                .snapshot_interval_txs
                .or(file.snapshot_interval_txs)
                .unwrap_or(ccl_engine::DEFAULT_SNAPSHOT_INTERVAL_TXS),
            chunk_size: args
                .chunk_size
                .or(file.chunk_size)
                .unwrap_or(ccl_ledger::ledger::DEFAULT_CHUNK_SIZE)
                .clamp(MIN_CHUNK_SIZE, ccl_ledger::chunk::MAX_CHUNK_FILE_SIZE / 2),
            ..EngineConfig::default()
        },
    })
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CCL_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(args: StartArgs) -> Result<()> {
    init_logging();
    let nodes = args.nodes.unwrap_or(1);
    if nodes == 0 || nodes > MAX_LOCAL_NODES {
        anyhow::bail!("--nodes is 1 to {MAX_LOCAL_NODES}");
    }
    let cfg = node_config(args)?;
    if nodes > 1 {
        return local_network(cfg, nodes);
    }
    run_node(cfg, None)
}

/// `ccl recover`: a new service (new identity) from a lost one's ledger, waiting for its members
/// (transition_service_to_open naming the previous identity, then their recovery shares).
pub fn run_recover(args: RecoverArgs) -> Result<()> {
    init_logging();
    if args.start.nodes.is_some() {
        anyhow::bail!("--nodes is for ccl start: recover one node, then join others to it");
    }
    let cfg = node_config(args.start)?;
    if !init::exists(&cfg.data_dir) {
        let p = ccl_node::recovery::prepare(&cfg, &args.ledger_dir)
            .with_context(|| format!("cannot recover {}", args.ledger_dir.display()))?;
        let dir = std::fs::canonicalize(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
        let previous = dir.join("previous_service_cert.pem");
        std::fs::write(&previous, &p.previous_service_cert)
            .with_context(|| format!("cannot write {}", previous.display()))?;
        let proposal = format!(
            "{{\"actions\":[{{\"name\":\"transition_service_to_open\",\"args\":{{\"previous_service_identity\":<{}>,\"next_service_identity\":<{}>}}}}]}}",
            previous.display(),
            dir.join(init::SERVICE_CERT).display()
        );
        println!(
            "ccl: recovering the ledger of {} up to transaction {} as a new service in {}\n\
             the service is Recovering: its members vote {proposal}\n\
             then each recovery member submits its share: ccl gov recovery-share --member memberN.pem --encryption-key memberN_enc_privk.pem",
            args.ledger_dir.display(),
            p.last_signed,
            dir.display(),
        );
    }
    run_node(cfg, None)
}

/// `ccl join`: asks the network to admit this node (once), then runs it.
pub fn run_join(args: JoinArgs) -> Result<()> {
    init_logging();
    let config_text = match &args.start.config {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => String::new(),
    };
    let service_pem = std::fs::read_to_string(&args.service_cert)
        .with_context(|| format!("cannot read {}", args.service_cert.display()))?;
    if args.start.nodes.is_some() {
        anyhow::bail!("--nodes is for ccl start");
    }
    let cfg = node_config(args.start)?;
    let join = (!init::exists(&cfg.data_dir)).then_some((args.target, service_pem, config_text));
    run_node(cfg, join)
}

/// Runs a node until SIGTERM or Ctrl-C; `join` (target, service certificate, configuration
/// text) first makes the data directory by joining a network.
fn run_node(cfg: NodeConfig, join: Option<(String, String, String)>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        if let Some((target, service_pem, config_text)) = join {
            let id = ccl_node::join::join_network(&cfg, &target, &service_pem, &config_text).await?;
            println!("joined the network as node {id}");
        }
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

/// `ccl start --nodes N`: node 0 here, the others as child processes that join it; the generated
/// members admit every node that asks.
fn local_network(base: NodeConfig, n: usize) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the ccl executable")?;
    let port = base.listen.port();
    if port == 0 || usize::from(port) + n > usize::from(u16::MAX) {
        anyhow::bail!("--nodes needs a fixed --listen port with {n} free ports after it");
    }
    let mut cfg0 = base.clone();
    cfg0.data_dir = base.data_dir.join("node0");
    let service_cert = cfg0.data_dir.join(init::SERVICE_CERT);
    let root = base.data_dir.clone();
    let host = base.listen.ip();
    let target = format!("https://{}", cfg0.listen);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let (shared, created) = tokio::task::spawn_blocking({
            let cfg = cfg0.clone();
            move || ccl_node::open(&cfg)
        })
        .await??;
        let listener = tokio::net::TcpListener::bind(cfg0.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg0.listen))?;
        print_banner(&cfg0, cfg0.listen, created.as_ref());
        let mut children = Vec::new();
        for i in 1..n {
            let addr = std::net::SocketAddr::new(host, port + i as u16);
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("join")
                .arg("--target")
                .arg(&target)
                .arg("--service-cert")
                .arg(&service_cert)
                .arg("--data-dir")
                .arg(root.join(format!("node{i}")))
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--signature-interval-ms")
                .arg(base.engine.signature_interval.as_millis().to_string())
                .arg("--signature-interval-txs")
                .arg(base.engine.signature_interval_txs.to_string())
                .arg("--snapshot-interval-txs")
                .arg(base.engine.snapshot_interval_txs.to_string())
                .arg("--chunk-size")
                .arg(base.engine.chunk_size.to_string())
                .stdout(std::process::Stdio::null());
            children.push(cmd.spawn().context("cannot start a node process")?);
            println!("node {i}: https://{addr} (data in {})", root.join(format!("node{i}")).display());
        }
        // Development only: the generated members' keys are at hand, so they admit joiners.
        let admit = {
            let shared = shared.clone();
            let dir = cfg0.data_dir.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let (s, d) = (shared.clone(), dir.clone());
                    let r = tokio::task::spawn_blocking(move || admit_pending(&s, &d)).await;
                    if let Ok(Err(e)) = r {
                        eprintln!("admitting nodes: {e}");
                    }
                }
            })
        };
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        };
        let r = ccl_node::serve(cfg0, shared, listener, shutdown).await;
        admit.abort();
        for mut c in children {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
        r?;
        eprintln!("ccl network stopped cleanly");
        Ok(())
    })
}

/// Admits Pending nodes with the votes of the members whose keys are in `dir` (member<i>.pem).
fn admit_pending(shared: &ccl_node::Shared, dir: &std::path::Path) -> Result<()> {
    if !shared.is_primary() {
        return Ok(());
    }
    let pending = ccl_node::pending_nodes(shared);
    if pending.is_empty() {
        return Ok(());
    }
    let mut members = Vec::new();
    for i in 0..ccl_node::MAX_INITIAL_MEMBERS {
        let Ok(pem) = std::fs::read_to_string(dir.join(init::member_file(i))) else {
            break;
        };
        let cert = ccl_crypto::cert::Certificate::from_pem(&pem)?;
        let key = ccl_crypto::keys::SigningKey::from_pem(&pem)?;
        members.push((hex::encode(ccl_crypto::sha256(cert.der())), cert, key));
    }
    for node in pending {
        let proposal =
            serde_json::json!({"actions": [{"name": "transition_node_to_trusted", "args": {
            "node_id": node, "valid_from": "20260101000000Z", "validity_period_days": 365}}]})
            .to_string();
        let state = ccl_node::propose_and_approve(shared, &members, &proposal)?;
        println!("node {node}: transition_node_to_trusted {state:?}");
    }
    Ok(())
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
    if let Some(c) = created
        && !c.members.is_empty()
    {
        println!(
            "recovery members' encryption keys (their recovery shares decrypt with them; any {} of {} recover the service): {}",
            c.members.len() / 2 + 1,
            c.members.len(),
            (0..c.members.len())
                .map(|i| dir
                    .join(init::member_enc_privk_file(i))
                    .display()
                    .to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
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
