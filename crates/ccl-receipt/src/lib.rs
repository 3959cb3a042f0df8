//! Receipts: see the crate description.
