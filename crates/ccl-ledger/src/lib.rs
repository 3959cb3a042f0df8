//! The ledger of ccl: CCF-compatible entries and chunk files, the Merkle tree, ledger secrets and
//! commit evidence, snapshots, and the offline verifier.
//!
//! This crate is pure: no async runtime and no network. It does file I/O (chunks, snapshots, the
//! tree's node files) with plain `std::fs` and explicit fsyncs.

pub mod chunk;
pub mod codec;
pub mod entry;
pub mod ledger;
pub mod merkle;
pub mod secrets;
pub mod snapshot;
pub mod tables;
pub mod txid;
pub mod verify;

pub use txid::TxId;
