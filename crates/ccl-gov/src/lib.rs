//! ccl's consortium governance (CCF's model): members sign requests (COSE Sign1), propose
//! actions, vote with ballots, and a JavaScript constitution decides and applies. All of it lives
//! in `public:ccf.gov.*` maps, so the ledger is the complete audit of governance.
//!
//! Pure: no async runtime, no network. The node opens a transaction, calls in, and commits the
//! transaction only when the call succeeds: every error leaves the state unchanged.
//!
//! A proposal's life: [`propose`] runs the constitution's `validate`, stores the proposal Open and
//! resolves it at once (a constitution may accept without votes). [`ballot`] adds a member's ballot
//! (a module exporting `vote(proposal, proposerId)`), then every ballot is run and the
//! constitution's `resolve(proposal, proposerId, votes)` decides: Open, Accepted or Rejected. An
//! Accepted proposal is applied (`apply(proposal, proposalId)`) at once, in the same transaction;
//! if apply throws, or leaves a constitution that does not load, its writes are discarded and the
//! proposal is Failed. [`withdraw`] lets the proposer withdraw an Open proposal. Actions that
//! change the rules drop the other Open proposals (the default constitution does it).

pub mod js;
pub mod request;

use js::{Access, Effects, JsError, JsErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub use ccl_store::Tx;
pub use request::{Signed, msg};

/// The governance maps (CCF's names). Keys are ids as UTF-8 strings unless noted.
pub mod maps {
    /// Member id -> certificate PEM.
    pub const MEMBER_CERTS: &str = "public:ccf.gov.members.certs";
    /// Member id -> `{"status": "Accepted" | "Active", "member_data"}`.
    pub const MEMBER_INFO: &str = "public:ccf.gov.members.info";
    /// Member id -> encryption public key PEM (recovery members).
    pub const MEMBER_KEYS: &str = "public:ccf.gov.members.encryption_public_keys";
    /// Member id -> `{"state_digest"}`: what the member must acknowledge to become Active.
    pub const MEMBER_ACKS: &str = "public:ccf.gov.members.acks";
    /// User id -> certificate PEM.
    pub const USER_CERTS: &str = "public:ccf.gov.users.certs";
    /// User id -> `{"user_data"}`; `user_data.assignedRole` is the Azure API role.
    pub const USER_INFO: &str = "public:ccf.gov.users.info";
    /// Proposal id -> the proposal as submitted (JSON bytes).
    pub const PROPOSALS: &str = "public:ccf.gov.proposals";
    /// Proposal id -> [`ProposalInfo`] JSON.
    pub const PROPOSALS_INFO: &str = "public:ccf.gov.proposals_info";
    /// Singleton (8 zero bytes) -> the constitution's JavaScript source.
    pub const CONSTITUTION: &str = "public:ccf.gov.constitution";
    /// Member id -> the last signed request of the member (COSE Sign1 bytes).
    pub const HISTORY: &str = "public:ccf.gov.history";
    /// `{created_at}:{hex SHA-256}` of recent signed requests (replay protection).
    pub const RECENT_REQUESTS: &str = "public:ccf.gov.cose_recent_proposals";
}

/// The key of singleton maps (CCF's `kv::Value`s): 8 zero bytes.
pub const SINGLETON_KEY: [u8; 8] = [0; 8];

/// ccl's default constitution (see `js/constitution.js`).
pub const DEFAULT_CONSTITUTION: &str = include_str!("../js/constitution.js");

/// Most ballots on one proposal.
pub const MAX_BALLOTS: usize = 1000;

/// A governance error: HTTP status, code, message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct GovError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl GovError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        GovError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(500, "InternalError", e.to_string())
    }
    fn js(code: &'static str, what: &str, e: JsError) -> Self {
        let kind = match e.kind {
            JsErrorKind::Limit => "ran out of its limits",
            JsErrorKind::Syntax => "does not load",
            JsErrorKind::Exception => "threw",
            JsErrorKind::Interface => "has the wrong interface",
        };
        Self::bad(code, format!("{what} {kind}: {}", e.message))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposalState {
    Open,
    Accepted,
    Withdrawn,
    Rejected,
    Failed,
    Dropped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl From<JsError> for Failure {
    fn from(e: JsError) -> Self {
        Failure {
            reason: e.message,
            trace: e.trace,
        }
    }
}

/// A proposal's state (CCF's `ProposalInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalInfo {
    pub proposer_id: String,
    pub state: ProposalState,
    /// Member id -> ballot script.
    #[serde(default)]
    pub ballots: BTreeMap<String, String>,
    /// The votes that decided it (once not Open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_votes: Option<BTreeMap<String, bool>>,
    /// Ballots that failed when last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote_failures: Option<BTreeMap<String, Failure>>,
    /// Why apply failed (Failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

impl ProposalInfo {
    /// CCF's `api-version=2024-07-01` shape.
    pub fn to_api_json(&self, proposal_id: &str) -> Value {
        let mut v = json!({
            "proposalId": proposal_id,
            "proposerId": self.proposer_id,
            "proposalState": self.state,
            "ballotCount": self.ballots.len(),
        });
        if let Some(f) = &self.final_votes {
            v["finalVotes"] = json!(f);
        }
        if let Some(f) = &self.vote_failures {
            v["voteFailures"] = json!(f);
        }
        if let Some(f) = &self.failure {
            v["failure"] = json!(f);
        }
        v
    }
}

/// What a governance call did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub proposal_id: String,
    pub info: ProposalInfo,
    /// Node actions the applied proposal asked for (after the transaction commits).
    pub effects: Effects,
}

/// A member's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberStatus {
    Accepted,
    Active,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub status: MemberStatus,
    #[serde(default)]
    pub member_data: Value,
}

/// A member's or user's id: hex SHA-256 of the certificate's DER (CCF's ids).
pub fn cert_id(pem: &str) -> Result<String, String> {
    let cert = ccl_crypto::cert::Certificate::from_pem(pem)
        .map_err(|e| format!("not a certificate: {e}"))?;
    Ok(hex::encode(cert.fingerprint()))
}

/// The key of an Azure API user id in the users maps: a certificate fingerprint
/// (`AB:CD:…`, SHA-256) becomes CCF's id (lowercase hex); other ids (e.g. Entra object ids) are
/// kept as they are.
pub fn user_key(azure_id: &str) -> String {
    let hex: String = azure_id.chars().filter(|c| *c != ':').collect();
    if azure_id.contains(':') && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex.to_ascii_lowercase()
    } else {
        azure_id.to_string()
    }
}

/// Adds a member (genesis or tests): certificate, status, optional encryption key.
pub fn add_member(
    tx: &mut Tx,
    cert_pem: &str,
    status: MemberStatus,
    encryption_pub_key: Option<&str>,
) -> Result<String, GovError> {
    let id = cert_id(cert_pem).map_err(|e| GovError::bad("InvalidCertificate", e))?;
    let err = GovError::internal;
    tx.put(maps::MEMBER_CERTS, id.as_bytes(), cert_pem.as_bytes())
        .map_err(err)?;
    let info = MemberInfo {
        status,
        member_data: Value::Null,
    };
    tx.put(maps::MEMBER_INFO, id.as_bytes(), &json_bytes(&info))
        .map_err(err)?;
    if let Some(k) = encryption_pub_key {
        tx.put(maps::MEMBER_KEYS, id.as_bytes(), k.as_bytes())
            .map_err(err)?;
    }
    Ok(id)
}

/// Sets the constitution (genesis); refuses one that does not load.
pub fn set_constitution(tx: &mut Tx, source: &str) -> Result<(), GovError> {
    check_constitution(source)?;
    tx.put(maps::CONSTITUTION, &SINGLETON_KEY, source.as_bytes())
        .map_err(GovError::internal)
}

fn json_bytes(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("governance types serialise")
}

/// A member's status, if it is one.
pub fn member_status(tx: &mut Tx, member_id: &str) -> Option<MemberStatus> {
    tx.get(maps::MEMBER_INFO, member_id.as_bytes())
        .and_then(|v| serde_json::from_slice::<MemberInfo>(&v).ok())
        .map(|i| i.status)
}

fn require_active(tx: &mut Tx, member_id: &str) -> Result<(), GovError> {
    match member_status(tx, member_id) {
        Some(MemberStatus::Active) => Ok(()),
        Some(MemberStatus::Accepted) => Err(GovError::new(
            403,
            "MemberNotActive",
            format!(
                "member {member_id} is Accepted but not Active: acknowledge the state digest first"
            ),
        )),
        None => Err(GovError::new(
            401,
            "InvalidAuthenticationInfo",
            format!("{member_id} is not a member"),
        )),
    }
}

fn constitution(tx: &mut Tx) -> Result<String, GovError> {
    let v = tx
        .get(maps::CONSTITUTION, &SINGLETON_KEY)
        .ok_or_else(|| GovError::new(500, "NoConstitution", "the service has no constitution"))?;
    String::from_utf8(v.to_vec()).map_err(GovError::internal)
}

/// Loads a constitution (in a scratch transaction) and checks it exports `validate`, `resolve`
/// and `apply`.
pub fn check_constitution(source: &str) -> Result<(), GovError> {
    let mut scratch = Tx::default();
    js::with_module(
        &mut scratch,
        Access::Read,
        "constitution",
        source,
        |_, ns| {
            for f in ["validate", "resolve", "apply"] {
                js::export(ns, f)?;
            }
            Ok(())
        },
    )
    .map(|_| ())
    .map_err(|e| GovError::js("InvalidConstitution", "the constitution", e))
}

fn record_history(tx: &mut Tx, member_id: &str, request: &[u8]) -> Result<(), GovError> {
    tx.put(maps::HISTORY, member_id.as_bytes(), request)
        .map_err(GovError::internal)
}

fn read_info(tx: &mut Tx, proposal_id: &str) -> Result<ProposalInfo, GovError> {
    let v = tx
        .get(maps::PROPOSALS_INFO, proposal_id.as_bytes())
        .ok_or_else(|| {
            GovError::new(
                404,
                "ProposalNotFound",
                format!("no proposal {proposal_id}"),
            )
        })?;
    serde_json::from_slice(&v).map_err(GovError::internal)
}

fn write_info(tx: &mut Tx, proposal_id: &str, info: &ProposalInfo) -> Result<(), GovError> {
    tx.put(
        maps::PROPOSALS_INFO,
        proposal_id.as_bytes(),
        &json_bytes(info),
    )
    .map_err(GovError::internal)
}

fn proposal_text(tx: &mut Tx, proposal_id: &str) -> Result<String, GovError> {
    let v = tx
        .get(maps::PROPOSALS, proposal_id.as_bytes())
        .ok_or_else(|| GovError::internal(format!("proposal {proposal_id} has no body")))?;
    String::from_utf8(v.to_vec()).map_err(GovError::internal)
}

/// Creates a proposal from a verified `proposal` request (`request` is its COSE bytes). Its id
/// binds it to the state it was made in, as CCF's does: hex SHA-256(`root` ‖ request digest),
/// `root` being the Merkle root when the request is executed.
pub fn propose(
    tx: &mut Tx,
    signed: &Signed,
    request: &[u8],
    root: &[u8; 32],
) -> Result<Outcome, GovError> {
    assert_eq!(signed.msg_type, msg::PROPOSAL);
    require_active(tx, &signed.member_id)?;
    let proposal = std::str::from_utf8(&signed.payload)
        .map_err(|_| GovError::bad("InvalidProposal", "the proposal is not UTF-8"))?
        .to_string();
    let parsed: Value = serde_json::from_str(&proposal)
        .map_err(|e| GovError::bad("InvalidProposal", format!("the proposal is not JSON: {e}")))?;
    let source = constitution(tx)?;
    let (verdict, _) = js::with_module(tx, Access::Read, "constitution", &source, |ctx, ns| {
        let r = js::export(ns, "validate")?.call::<_, rquickjs::Value>((proposal.as_str(),))?;
        js::to_json(ctx, r)
    })
    .map_err(|e| GovError::js("ProposalFailedToValidate", "the constitution's validate", e))?;
    if verdict["valid"] != Value::Bool(true) {
        let why = verdict["description"]
            .as_str()
            .unwrap_or("the constitution's validate refused it");
        return Err(GovError::bad(
            "ProposalFailedToValidate",
            format!("Proposal failed to validate: {why}"),
        ));
    }
    // No proposal may install a constitution that does not load.
    for action in parsed["actions"].as_array().into_iter().flatten() {
        if action["name"] == "set_constitution" {
            let src = action["args"]["constitution"].as_str().ok_or_else(|| {
                GovError::bad(
                    "InvalidConstitution",
                    "set_constitution needs a constitution",
                )
            })?;
            check_constitution(src)?;
        }
    }
    let proposal_id = hex::encode(ccl_crypto::sha256_parts(&[root, &signed.digest]));
    if tx
        .get(maps::PROPOSALS_INFO, proposal_id.as_bytes())
        .is_some()
    {
        return Err(GovError::bad(
            "ProposalAlreadyExists",
            format!("proposal {proposal_id} exists"),
        ));
    }
    tx.put(maps::PROPOSALS, proposal_id.as_bytes(), proposal.as_bytes())
        .map_err(GovError::internal)?;
    let info = ProposalInfo {
        proposer_id: signed.member_id.clone(),
        state: ProposalState::Open,
        ballots: BTreeMap::new(),
        final_votes: None,
        vote_failures: None,
        failure: None,
    };
    record_history(tx, &signed.member_id, request)?;
    decide(tx, &proposal_id, info, &proposal, &source)
}

/// Runs one ballot script: `vote(proposal, proposerId)` must return a boolean.
fn run_ballot(
    tx: &mut Tx,
    script: &str,
    proposal: &str,
    proposer_id: &str,
) -> Result<bool, JsError> {
    js::with_module(tx, Access::Read, "ballot", script, |ctx, ns| {
        let r = js::export(ns, "vote")?.call::<_, rquickjs::Value>((proposal, proposer_id))?;
        r.as_bool()
            .ok_or_else(|| rquickjs::Exception::throw_type(ctx, "vote must return true or false"))
    })
    .map(|(v, _)| v)
}

/// Submits a verified `ballot` request of `member_id` on `proposal_id`.
pub fn ballot(
    tx: &mut Tx,
    signed: &Signed,
    request: &[u8],
    proposal_id: &str,
    member_id: &str,
) -> Result<Outcome, GovError> {
    assert_eq!(signed.msg_type, msg::BALLOT);
    if signed.member_id != member_id {
        return Err(GovError::new(
            401,
            "InvalidAuthenticationInfo",
            format!(
                "the ballot is signed by {}, not by member {member_id}",
                signed.member_id
            ),
        ));
    }
    require_active(tx, member_id)?;
    let mut info = read_info(tx, proposal_id)?;
    if info.state != ProposalState::Open {
        return Err(GovError::bad(
            "ProposalNotOpen",
            format!(
                "proposal {proposal_id} is {:?}: it takes no ballots",
                info.state
            ),
        ));
    }
    if info.ballots.contains_key(member_id) {
        return Err(GovError::bad(
            "VoteAlreadyExists",
            format!("member {member_id} has already voted on {proposal_id}"),
        ));
    }
    if info.ballots.len() >= MAX_BALLOTS {
        return Err(GovError::bad(
            "TooManyBallots",
            "the proposal has too many ballots",
        ));
    }
    let body: Value = serde_json::from_slice(&signed.payload)
        .map_err(|e| GovError::bad("InvalidBallot", format!("the ballot is not JSON: {e}")))?;
    let script = body["ballot"]
        .as_str()
        .ok_or_else(|| {
            GovError::bad(
                "InvalidBallot",
                "a ballot is {\"ballot\": \"export function vote (proposal, proposerId) {...}\"}",
            )
        })?
        .to_string();
    let proposal = proposal_text(tx, proposal_id)?;
    // A ballot that does not run is refused, rather than counted as a failure.
    run_ballot(tx, &script, &proposal, &info.proposer_id)
        .map_err(|e| GovError::js("BallotFailed", "the ballot", e))?;
    info.ballots.insert(member_id.to_string(), script);
    record_history(tx, member_id, request)?;
    let source = constitution(tx)?;
    decide(tx, proposal_id, info, &proposal, &source)
}

/// Withdraws an Open proposal, at its proposer's (verified `withdrawal`) request.
pub fn withdraw(
    tx: &mut Tx,
    signed: &Signed,
    request: &[u8],
    proposal_id: &str,
) -> Result<Outcome, GovError> {
    assert_eq!(signed.msg_type, msg::WITHDRAWAL);
    let mut info = read_info(tx, proposal_id)?;
    if info.proposer_id != signed.member_id {
        return Err(GovError::new(
            403,
            "AuthorizationFailed",
            format!(
                "proposal {proposal_id} can only be withdrawn by its proposer {}",
                info.proposer_id
            ),
        ));
    }
    if info.state == ProposalState::Withdrawn {
        // Idempotent, as in CCF.
        return Ok(Outcome {
            proposal_id: proposal_id.to_string(),
            info,
            effects: Effects::default(),
        });
    }
    if info.state != ProposalState::Open {
        return Err(GovError::bad(
            "ProposalNotOpen",
            format!(
                "proposal {proposal_id} is {:?}: it cannot be withdrawn",
                info.state
            ),
        ));
    }
    info.state = ProposalState::Withdrawn;
    write_info(tx, proposal_id, &info)?;
    record_history(tx, &signed.member_id, request)?;
    Ok(Outcome {
        proposal_id: proposal_id.to_string(),
        info,
        effects: Effects::default(),
    })
}

/// Runs the ballots and the constitution's resolve; applies an Accepted proposal.
fn decide(
    tx: &mut Tx,
    proposal_id: &str,
    mut info: ProposalInfo,
    proposal: &str,
    source: &str,
) -> Result<Outcome, GovError> {
    let mut votes = BTreeMap::new();
    let mut failures = BTreeMap::new();
    for (member, script) in &info.ballots {
        match run_ballot(tx, script, proposal, &info.proposer_id) {
            Ok(v) => {
                votes.insert(member.clone(), v);
            }
            Err(e) => {
                failures.insert(member.clone(), Failure::from(e));
            }
        }
    }
    info.vote_failures = (!failures.is_empty()).then_some(failures);
    let votes_js: Vec<Value> = votes
        .iter()
        .map(|(m, v)| json!({"member_id": m, "vote": v}))
        .collect();
    let votes_json = Value::Array(votes_js).to_string();
    let (state, _) = js::with_module(tx, Access::Read, "constitution", source, |ctx, ns| {
        let votes = ctx.json_parse(votes_json.as_str())?;
        let r = js::export(ns, "resolve")?.call::<_, rquickjs::Value>((
            proposal,
            info.proposer_id.as_str(),
            votes,
            proposal_id,
        ))?;
        r.as_string()
            .and_then(|s| s.to_string().ok())
            .ok_or_else(|| rquickjs::Exception::throw_type(ctx, "resolve must return a state"))
    })
    .map_err(|e| GovError::js("ProposalFailedToResolve", "the constitution's resolve", e))?;
    info.state = match state.as_str() {
        "Open" => ProposalState::Open,
        "Accepted" => ProposalState::Accepted,
        "Rejected" => ProposalState::Rejected,
        other => {
            return Err(GovError::bad(
                "ProposalFailedToResolve",
                format!(
                    "the constitution's resolve returned {other:?}, not Open, Accepted or Rejected"
                ),
            ));
        }
    };
    let mut effects = Effects::default();
    if info.state != ProposalState::Open {
        info.final_votes = Some(votes);
    }
    if info.state == ProposalState::Accepted {
        write_info(tx, proposal_id, &info)?;
        // Apply on a savepoint: if it fails, none of its writes happen.
        let mut attempt = tx.clone();
        let before = attempt.get(maps::CONSTITUTION, &SINGLETON_KEY);
        let applied = js::with_module(
            &mut attempt,
            Access::Write,
            "constitution",
            source,
            |_, ns| js::export(ns, "apply")?.call::<_, ()>((proposal, proposal_id)),
        )
        .map_err(Failure::from)
        .and_then(|((), fx)| {
            let after = attempt.get(maps::CONSTITUTION, &SINGLETON_KEY);
            if after != before {
                let src = after
                    .map(|a| String::from_utf8_lossy(&a).into_owned())
                    .unwrap_or_default();
                check_constitution(&src).map_err(|e| Failure {
                    reason: e.message,
                    trace: None,
                })?;
            }
            Ok(fx)
        });
        match applied {
            Ok(fx) => {
                *tx = attempt;
                effects = fx;
            }
            Err(f) => {
                info.state = ProposalState::Failed;
                info.failure = Some(f);
            }
        }
    }
    write_info(tx, proposal_id, &info)?;
    Ok(Outcome {
        proposal_id: proposal_id.to_string(),
        info,
        effects,
    })
}

/// Records the state digest a member must acknowledge (a verified `state_digest` request).
pub fn update_state_digest(
    tx: &mut Tx,
    signed: &Signed,
    member_id: &str,
    state_digest: &str,
) -> Result<Value, GovError> {
    assert_eq!(signed.msg_type, msg::STATE_DIGEST);
    same_member(signed, member_id)?;
    member_status(tx, member_id)
        .ok_or_else(|| GovError::new(404, "MemberNotFound", format!("no member {member_id}")))?;
    tx.put(
        maps::MEMBER_ACKS,
        member_id.as_bytes(),
        &json_bytes(&json!({"state_digest": state_digest})),
    )
    .map_err(GovError::internal)?;
    Ok(json!({"memberId": member_id, "stateDigest": state_digest}))
}

/// Acknowledges the recorded state digest (a verified `ack` request with payload
/// `{"stateDigest"}`): the member becomes Active.
pub fn ack(tx: &mut Tx, signed: &Signed, request: &[u8], member_id: &str) -> Result<(), GovError> {
    assert_eq!(signed.msg_type, msg::ACK);
    same_member(signed, member_id)?;
    let Some(v) = tx.get(maps::MEMBER_INFO, member_id.as_bytes()) else {
        return Err(GovError::new(
            404,
            "MemberNotFound",
            format!("no member {member_id}"),
        ));
    };
    let mut info: MemberInfo = serde_json::from_slice(&v).map_err(GovError::internal)?;
    let recorded = tx
        .get(maps::MEMBER_ACKS, member_id.as_bytes())
        .and_then(|v| serde_json::from_slice::<Value>(&v).ok())
        .and_then(|v| v["state_digest"].as_str().map(str::to_string))
        .ok_or_else(|| {
            GovError::bad(
                "StateDigestNotFound",
                "no state digest to acknowledge: update it first",
            )
        })?;
    let body: Value = serde_json::from_slice(&signed.payload)
        .map_err(|e| GovError::bad("InvalidAck", format!("the ack is not JSON: {e}")))?;
    if body["stateDigest"].as_str() != Some(recorded.as_str()) {
        return Err(GovError::bad(
            "StateDigestMismatch",
            format!("the acknowledged state digest is not the recorded one ({recorded})"),
        ));
    }
    info.status = MemberStatus::Active;
    tx.put(maps::MEMBER_INFO, member_id.as_bytes(), &json_bytes(&info))
        .map_err(GovError::internal)?;
    record_history(tx, member_id, request)
}

fn same_member(signed: &Signed, member_id: &str) -> Result<(), GovError> {
    if signed.member_id == member_id {
        Ok(())
    } else {
        Err(GovError::new(
            401,
            "InvalidAuthenticationInfo",
            format!(
                "the request is signed by {}, not by member {member_id}",
                signed.member_id
            ),
        ))
    }
}

/// Signs a governance request as a member would (`ccl gov`, genesis and tests): COSE Sign1 with
/// `kid` = member id and CCF's governance headers.
pub fn sign_request(
    key: &ccl_crypto::keys::SigningKey,
    member_id: &str,
    msg_type: &str,
    proposal_id: Option<&str>,
    created_at: i64,
    payload: &[u8],
) -> Result<Vec<u8>, ccl_crypto::CryptoError> {
    use ccl_crypto::cose::Label;
    use ccl_crypto::cose::Value as Cbor;
    let mut extra = vec![(
        Label::Text("ccf.gov.msg.type".into()),
        Cbor::Text(msg_type.into()),
    )];
    if let Some(p) = proposal_id {
        extra.push((
            Label::Text("ccf.gov.msg.proposal_id".into()),
            Cbor::Text(p.into()),
        ));
    }
    extra.push((
        Label::Text("ccf.gov.msg.created_at".into()),
        Cbor::Integer(created_at.into()),
    ));
    ccl_crypto::cose::sign1(key, member_id.as_bytes(), extra, payload, false)
}

#[cfg(test)]
mod tests;
