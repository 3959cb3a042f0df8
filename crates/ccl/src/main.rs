//! `ccl`: run a node, verify ledgers and receipts offline, benchmark.

mod bench;
mod bench_api;
mod offline;
mod start;

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
    /// Measure throughput (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
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
        Command::Start(args) => start::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
