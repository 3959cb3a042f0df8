//! `ccl ledger verify` and `ccl receipt verify`.

use anyhow::{Context, Result, bail};
use ccl_crypto::cert::Certificate;
use ccl_ledger::verify::{VerifyOptions, verify_ledger};
use std::path::Path;

/// Largest receipt or claims file read.
pub const MAX_RECEIPT_FILE: u64 = ccl_receipt::MAX_RECEIPT_JSON as u64;
/// Largest certificate file read.
pub const MAX_CERT_FILE: u64 = 1 << 20;

/// Reads a file of at most `max` bytes.
fn read_limited(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if meta.len() > max {
        bail!(
            "{what} {} is {} bytes, more than the {max} allowed",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn read_cert(path: &Path) -> Result<Certificate> {
    let pem = read_limited(path, MAX_CERT_FILE, "service certificate")?;
    let pem = String::from_utf8(pem).context("service certificate is not PEM text")?;
    Certificate::from_pem(&pem)
        .with_context(|| format!("{} is not a PEM certificate", path.display()))
}

pub fn ledger_verify(dir: &Path, service_cert: Option<&Path>, json: bool) -> Result<()> {
    let opts = VerifyOptions {
        service_cert: service_cert.map(read_cert).transpose()?,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("static template"),
    );
    let started = std::time::Instant::now();
    let result = verify_ledger(dir, &opts, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = result.map_err(|e| anyhow::anyhow!("ledger verification failed: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "chunks": report.chunks,
                "transactions": report.transactions,
                "signatures": report.signatures,
                "bytes": report.bytes,
                "last_signed": report.last_signed.map(|t| t.to_string()),
                "last_seqno": report.last_seqno,
                "unsigned_tail": report.unsigned_tail,
                "torn_tail_bytes": report.torn_tail,
                "seconds": secs,
            })
        );
    } else {
        println!(
            "ledger OK: {} transactions in {} chunks, {} signatures, verified to {} ({:.1} MB in {:.2}s, {:.0} MB/s)",
            report.transactions,
            report.chunks,
            report.signatures,
            report
                .last_signed
                .map_or("nothing".into(), |t| t.to_string()),
            report.bytes as f64 / 1e6,
            secs,
            report.bytes as f64 / 1e6 / secs.max(1e-9),
        );
        if report.unsigned_tail > 0 {
            println!(
                "note: the last {} transactions are not covered by a signature yet",
                report.unsigned_tail
            );
        }
        if report.torn_tail > 0 {
            println!(
                "note: the in-progress chunk ends with {} bytes of an incomplete entry",
                report.torn_tail
            );
        }
    }
    Ok(())
}

pub fn receipt_verify(receipt: &Path, service_cert: &Path, claims: Option<&Path>) -> Result<()> {
    let bytes = read_limited(receipt, MAX_RECEIPT_FILE, "receipt")?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).context("the receipt is not JSON")?;
    let r = ccl_receipt::Receipt::from_json(&value)
        .map_err(|e| anyhow::anyhow!("invalid receipt: {e}"))?;
    let pem = read_limited(service_cert, MAX_CERT_FILE, "service certificate")?;
    let pem = String::from_utf8(pem).context("service certificate is not PEM text")?;
    match claims {
        Some(path) => {
            let c = read_limited(path, MAX_RECEIPT_FILE, "claims")?;
            let c: serde_json::Value =
                serde_json::from_slice(&c).context("the claims are not JSON")?;
            let claims = ccl_receipt::ApplicationClaims::from_json(&c)
                .map_err(|e| anyhow::anyhow!("invalid claims: {e}"))?;
            r.verify_with_claims(&pem, &claims)
                .map_err(|e| anyhow::anyhow!("receipt verification failed: {e}"))?;
        }
        None => r
            .verify(&pem)
            .map_err(|e| anyhow::anyhow!("receipt verification failed: {e}"))?,
    }
    println!(
        "receipt OK{}: signed by node {}",
        r.txid
            .as_ref()
            .map(|t| format!(" for transaction {t}"))
            .unwrap_or_default(),
        r.node_id
    );
    Ok(())
}
