//! `ccl`: run a node, verify ledgers and receipts offline, benchmark.

mod bench;
mod bench_api;
mod bench_net;
mod gov;
mod offline;
mod start;
mod user;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ccl", version, about = "ccl: a Confidential Consortium Ledger")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node: a single-node service on embedded defaults in ./ccl-data (identities
    /// generated on first start), recovered from disk on later starts.
    Start(start::StartArgs),
    /// Join a running network: attestation evidence to any node, then wait until the members
    /// admit this node (transition_node_to_trusted), catch up and serve. On later runs (the
    /// data directory exists) it restarts the node like `ccl start`.
    Join(start::JoinArgs),
    /// Disaster recovery: start a new service (new identity) from the ledger of a lost one. Its
    /// public state is replayed at once; the members open it (transition_service_to_open with
    /// the previous service identity) and submit their recovery shares (`ccl gov
    /// recovery-share`), which bring back the private state. Later runs restart the node.
    Recover(start::RecoverArgs),
    /// Write a ledger entry.
    Put {
        contents: String,
        #[arg(long)]
        collection: Option<String>,
        /// Wait until the entry is committed.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        conn: user::Conn,
    },
    /// Read the entry a transaction wrote.
    Get {
        transaction_id: String,
        #[command(flatten)]
        conn: user::Conn,
    },
    /// List the entries of a collection (committed ones), oldest first.
    List {
        #[arg(long)]
        collection: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        conn: user::Conn,
    },
    /// Private collections: who may read and write a collection.
    Collection {
        #[command(subcommand)]
        command: CollectionCommand,
    },
    /// Offline operations on ledger directories.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Offline operations on receipts.
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
    /// Governance, for members: propose, vote, withdraw, list, show, ack (COSE-signed with the
    /// member's key).
    Gov(gov::GovArgs),
    /// Measure throughput (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum CollectionCommand {
    /// Make a collection private to these readers and writers, or change them (its owner or an
    /// Administrator). Readers and writers are user ids or group:<name>.
    Access {
        collection: String,
        /// A user id or group:<name> who may read (repeatable).
        #[arg(long = "reader")]
        readers: Vec<String>,
        /// A user id or group:<name> who may read and write (repeatable).
        #[arg(long = "writer")]
        writers: Vec<String>,
        #[command(flatten)]
        conn: user::Conn,
    },
    /// Whether a collection is private, and to whom (not found if you may not see it).
    Show {
        collection: String,
        #[command(flatten)]
        conn: user::Conn,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Verify every chunk of a ledger directory: entries, Merkle roots, signatures, node
    /// endorsements and service status transitions. Exits non-zero naming the first bad
    /// transaction.
    Verify {
        /// The ledger directory (a node's `ledger/`).
        dir: PathBuf,
        /// PEM certificate of the service the ledger must belong to.
        #[arg(long)]
        service_cert: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Fetch a transaction's receipt from a node (and verify it with --verify).
    Get {
        transaction_id: String,
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        conn: user::Conn,
    },
    /// Verify a receipt (Azure Confidential Ledger or CCF shape) against a service certificate.
    Verify {
        /// The receipt, JSON.
        receipt: PathBuf,
        /// PEM certificate of the service.
        #[arg(long)]
        service_cert: PathBuf,
        /// Application claims (JSON array, as Azure Confidential Ledger returns them): their
        /// digest must be the receipt's claims digest.
        #[arg(long)]
        claims: Option<PathBuf>,
    },
}

/// mimalloc instead of glibc's malloc: a node allocates and frees many small buffers per request
/// across threads (TLS records, HTTP headers, write sets), where glibc's arenas spent about 12%
/// of the CPU under load (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ledger {
            command:
                LedgerCommand::Verify {
                    dir,
                    service_cert,
                    json,
                },
        } => offline::ledger_verify(&dir, service_cert.as_deref(), json),
        Command::Receipt {
            command:
                ReceiptCommand::Verify {
                    receipt,
                    service_cert,
                    claims,
                },
        } => offline::receipt_verify(&receipt, &service_cert, claims.as_deref()),
        Command::Bench(args) => bench::run(args),
        Command::Gov(args) => gov::run(&args),
        Command::Start(args) => start::run(args),
        Command::Join(args) => start::run_join(args),
        Command::Recover(args) => start::run_recover(args),
        Command::Put {
            contents,
            collection,
            wait,
            conn,
        } => user::put(&conn, &contents, collection.as_deref(), wait),
        Command::Get {
            transaction_id,
            conn,
        } => user::get(&conn, &transaction_id),
        Command::List {
            collection,
            from,
            to,
            conn,
        } => user::list(&conn, collection.as_deref(), from.as_deref(), to.as_deref()),
        Command::Collection {
            command:
                CollectionCommand::Access {
                    collection,
                    readers,
                    writers,
                    conn,
                },
        } => user::collection_access(&conn, &collection, &readers, &writers),
        Command::Collection {
            command: CollectionCommand::Show { collection, conn },
        } => user::collection_show(&conn, &collection),
        Command::Receipt {
            command:
                ReceiptCommand::Get {
                    transaction_id,
                    verify,
                    conn,
                },
        } => user::receipt_get(&conn, &transaction_id, verify),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
