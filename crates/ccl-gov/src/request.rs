//! Members' signed requests: COSE Sign1 with CCF's governance headers.
//!
//! Checked in this order, each failure a clear error and no change: the body is COSE Sign1; `kid`
//! names a member (hex SHA-256 of the certificate DER); the signature verifies under that member's
//! certificate with the algorithm of its key; `ccf.gov.msg.type` is the one the endpoint takes;
//! `ccf.gov.msg.proposal_id` is the one in the URL (ballots, withdrawals); `ccf.gov.msg.created_at`
//! is within [`MAX_CLOCK_SKEW`] of the node's clock; the request was not seen before (its digest is
//! kept in `public:ccf.gov.cose_recent_proposals` for the whole window, so a replay within the
//! window is refused, and one after it is stale).

use crate::{GovError, maps};
use ccl_crypto::cert::Certificate;
use ccl_crypto::cose::{Sign1, Value};
use ccl_store::Tx;
use std::ops::Bound;

/// How far `created_at` may be from the node's clock, in seconds (either way).
pub const MAX_CLOCK_SKEW: i64 = 600;
/// Latest `created_at` representable in the replay record's 10 digits (November 2286).
pub const MAX_CREATED_AT: i64 = 9_999_999_999;
/// Largest governance request, in bytes.
pub const MAX_REQUEST: usize = 1 << 20;

/// Governance message types (`ccf.gov.msg.type`).
pub mod msg {
    pub const PROPOSAL: &str = "proposal";
    pub const BALLOT: &str = "ballot";
    pub const WITHDRAWAL: &str = "withdrawal";
    pub const ACK: &str = "ack";
    pub const STATE_DIGEST: &str = "state_digest";
    pub const RECOVERY_SHARE: &str = "recovery_share";
}

/// A verified request.
#[derive(Clone, Debug)]
pub struct Signed {
    pub member_id: String,
    pub msg_type: String,
    pub proposal_id: Option<String>,
    pub created_at: i64,
    pub payload: Vec<u8>,
    /// SHA-256 of the request's signature (CCF's request digest).
    pub digest: [u8; 32],
}

fn unauthorized(message: impl Into<String>) -> GovError {
    GovError::new(401, "InvalidAuthenticationInfo", message)
}

fn text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    }
}

/// Verifies `body` as a request of type `expected` by a member (see the module documentation),
/// and records it against replay in `tx`.
pub fn verify(
    tx: &mut Tx,
    body: &[u8],
    expected: &str,
    proposal_id: Option<&str>,
    now: i64,
) -> Result<Signed, GovError> {
    if body.is_empty() {
        return Err(unauthorized(
            "governance requests are COSE Sign1 signed by a member (Content-Type: application/cose)",
        ));
    }
    if body.len() > MAX_REQUEST {
        return Err(GovError::new(
            413,
            "RequestTooLarge",
            format!("governance requests have at most {MAX_REQUEST} bytes"),
        ));
    }
    let msg = Sign1::parse(body)
        .map_err(|e| unauthorized(format!("the body is not a COSE Sign1 message: {e}")))?;
    let kid = std::str::from_utf8(msg.kid())
        .ok()
        .filter(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| unauthorized("the kid header must be a member id (64 hex digits)"))?
        .to_ascii_lowercase();
    let cert_pem = tx
        .get(maps::MEMBER_CERTS, kid.as_bytes())
        .ok_or_else(|| unauthorized(format!("{kid} is not a member")))?;
    let key = std::str::from_utf8(&cert_pem)
        .ok()
        .and_then(|p| Certificate::from_pem(p).ok())
        .and_then(|c| c.public_key().ok())
        .ok_or_else(|| GovError::internal("a member certificate does not parse"))?;
    msg.verify(&key, None)
        .map_err(|e| unauthorized(format!("the signature does not verify: {e}")))?;
    let msg_type = text(msg.text_header("ccf.gov.msg.type"))
        .ok_or_else(|| unauthorized("the ccf.gov.msg.type header is missing"))?;
    if msg_type != expected {
        return Err(unauthorized(format!(
            "this endpoint takes {expected:?} messages, not {msg_type:?}"
        )));
    }
    let header_proposal = text(msg.text_header("ccf.gov.msg.proposal_id"));
    if let Some(want) = proposal_id
        && header_proposal.as_deref() != Some(want)
    {
        return Err(unauthorized(format!(
            "the ccf.gov.msg.proposal_id header must be {want:?}"
        )));
    }
    let created_at = match msg.text_header("ccf.gov.msg.created_at") {
        Some(Value::Integer(i)) => {
            i64::try_from(*i).map_err(|_| unauthorized("ccf.gov.msg.created_at is out of range"))?
        }
        _ => {
            return Err(unauthorized(
                "the ccf.gov.msg.created_at header (integer seconds) is missing",
            ));
        }
    };
    if !(0..=MAX_CREATED_AT).contains(&created_at)
        || (created_at.saturating_sub(now)).abs() > MAX_CLOCK_SKEW
    {
        return Err(GovError::new(
            400,
            "InvalidCreatedAt",
            format!(
                "created_at {created_at} is more than {MAX_CLOCK_SKEW} s from the service's clock ({now})"
            ),
        ));
    }
    let digest = ccl_crypto::sha256(msg.signature());
    remember(tx, created_at, &digest, now, &msg_type)?;
    Ok(Signed {
        member_id: kid,
        msg_type,
        proposal_id: header_proposal,
        created_at,
        payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        digest,
    })
}

/// Records a request's digest for replay protection, forgetting those older than the window.
/// Keys are `{created_at}:{hex digest}` as CCF writes them (seconds, zero-padded to 10 digits so
/// that keys sort by time); the value is the message type (JSON).
fn remember(
    tx: &mut Tx,
    created_at: i64,
    digest: &[u8; 32],
    now: i64,
    msg_type: &str,
) -> Result<(), GovError> {
    let stamp = |t: i64| format!("{:010}", t.max(0));
    let key = format!("{}:{}", stamp(created_at), hex::encode(digest));
    if tx.get(maps::RECENT_REQUESTS, key.as_bytes()).is_some() {
        return Err(GovError::new(
            400,
            "ProposalReplay",
            "this signed request was already received",
        ));
    }
    let horizon = stamp(now - MAX_CLOCK_SKEW - 1);
    let old = tx.range(
        maps::RECENT_REQUESTS,
        (Bound::Unbounded, Bound::Excluded(horizon.as_bytes())),
        usize::MAX,
    );
    for (k, _) in old {
        tx.remove(maps::RECENT_REQUESTS, &k)
            .map_err(GovError::internal)?;
    }
    let value = serde_json::Value::String(msg_type.to_string()).to_string();
    tx.put(maps::RECENT_REQUESTS, key.as_bytes(), value.as_bytes())
        .map_err(GovError::internal)
}
