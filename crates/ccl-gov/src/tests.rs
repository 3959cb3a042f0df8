use super::*;
use ccl_crypto::cert::{CertSpec, self_signed};
use ccl_crypto::keys::{Curve, SigningKey};
use ccl_store::Store;

const NOW: i64 = 1_800_000_000;
const YES: &str = "export function vote (proposal, proposerId) { return true }";
const NO: &str = "export function vote (proposal, proposerId) { return false }";

struct Member {
    id: String,
    key: SigningKey,
}

struct World {
    store: Store,
    members: Vec<Member>,
    clock: i64,
}

fn cert(key: &SigningKey, name: &str) -> String {
    self_signed(key, &CertSpec::client(name)).unwrap().pem()
}

impl World {
    /// A service with `n` Active members and the default constitution.
    fn new(n: usize) -> World {
        let store = Store::new();
        let mut tx = store.begin();
        set_constitution(&mut tx, DEFAULT_CONSTITUTION).unwrap();
        let mut members = Vec::new();
        for i in 0..n {
            let key =
                SigningKey::generate(if i % 2 == 0 { Curve::P384 } else { Curve::P256 }).unwrap();
            let id = add_member(
                &mut tx,
                &cert(&key, &format!("member{i}")),
                MemberStatus::Active,
                None,
            )
            .unwrap();
            members.push(Member { id, key });
        }
        store.commit(tx).unwrap();
        World {
            store,
            members,
            clock: NOW,
        }
    }

    fn sign(&mut self, m: usize, ty: &str, pid: Option<&str>, payload: &str) -> Vec<u8> {
        self.clock += 1;
        let m = &self.members[m];
        sign_request(&m.key, &m.id, ty, pid, self.clock, payload.as_bytes()).unwrap()
    }

    /// Runs a call as the node does: commit on success, discard on error. Checks that an error
    /// changes nothing.
    fn run<R>(&self, f: impl FnOnce(&mut Tx) -> Result<R, GovError>) -> Result<R, GovError> {
        let before = self.store.version();
        let mut tx = self.store.begin();
        match f(&mut tx) {
            Ok(r) => {
                self.store.commit(tx).unwrap();
                Ok(r)
            }
            Err(e) => {
                assert_eq!(self.store.version(), before);
                Err(e)
            }
        }
    }

    fn propose(&mut self, m: usize, proposal: &Value) -> Result<Outcome, GovError> {
        let req = self.sign(m, msg::PROPOSAL, None, &proposal.to_string());
        let now = self.clock;
        self.run(|tx| {
            let s = request::verify(tx, &req, msg::PROPOSAL, None, now)?;
            propose(tx, &s, &req, &[7; 32])
        })
    }

    fn vote(&mut self, m: usize, pid: &str, script: &str) -> Result<Outcome, GovError> {
        let req = self.sign(
            m,
            msg::BALLOT,
            Some(pid),
            &json!({"ballot": script}).to_string(),
        );
        let now = self.clock;
        let member = self.members[m].id.clone();
        self.run(|tx| {
            let s = request::verify(tx, &req, msg::BALLOT, Some(pid), now)?;
            ballot(tx, &s, &req, pid, &member)
        })
    }

    fn get(&self, map: &str, key: &str) -> Option<Vec<u8>> {
        self.store
            .state()
            .get(map, key.as_bytes())
            .map(|v| v.value.to_vec())
    }

    fn info(&self, pid: &str) -> ProposalInfo {
        serde_json::from_slice(&self.get(maps::PROPOSALS_INFO, pid).unwrap()).unwrap()
    }
}

fn add_user(cert: &str) -> Value {
    json!({"actions": [{"name": "set_user", "args": {"cert": cert, "user_data": {"assignedRole": "Contributor"}}}]})
}

#[test]
fn majority_accepts_and_applies() {
    let mut w = World::new(3);
    let user_key = SigningKey::generate(Curve::P256).unwrap();
    let user_cert = cert(&user_key, "user1");
    let user_id = cert_id(&user_cert).unwrap();
    let p = w.propose(0, &add_user(&user_cert)).unwrap();
    assert_eq!(p.info.state, ProposalState::Open);
    let pid = p.proposal_id.clone();
    let one = w.vote(0, &pid, YES).unwrap();
    assert_eq!(
        one.info.state,
        ProposalState::Open,
        "one vote of three is not a majority"
    );
    assert!(w.get(maps::USER_CERTS, &user_id).is_none());
    let two = w.vote(1, &pid, YES).unwrap();
    assert_eq!(two.info.state, ProposalState::Accepted);
    assert_eq!(two.info.final_votes.as_ref().unwrap().len(), 2);
    assert_eq!(
        w.get(maps::USER_CERTS, &user_id).unwrap(),
        user_cert.as_bytes()
    );
    let info: Value = serde_json::from_slice(&w.get(maps::USER_INFO, &user_id).unwrap()).unwrap();
    assert_eq!(info["user_data"]["assignedRole"], "Contributor");
    // Closed: no more ballots.
    let e = w.vote(2, &pid, YES).unwrap_err();
    assert_eq!(e.code, "ProposalNotOpen");
    let api = w.info(&pid).to_api_json(&pid);
    assert_eq!(api["proposalState"], "Accepted");
    assert_eq!(api["ballotCount"], 2);
    assert_eq!(api["proposerId"], w.members[0].id);
}

#[test]
fn rejecting_majority_rejects() {
    let mut w = World::new(3);
    let c = cert(&SigningKey::generate(Curve::P256).unwrap(), "u");
    let pid = w.propose(1, &add_user(&c)).unwrap().proposal_id;
    assert_eq!(w.vote(0, &pid, NO).unwrap().info.state, ProposalState::Open);
    assert_eq!(
        w.vote(2, &pid, YES).unwrap().info.state,
        ProposalState::Open
    );
    assert_eq!(
        w.vote(1, &pid, NO).unwrap().info.state,
        ProposalState::Rejected
    );
    assert!(w.get(maps::USER_CERTS, &cert_id(&c).unwrap()).is_none());
}

#[test]
fn withdrawal_by_proposer_only() {
    let mut w = World::new(3);
    let c = cert(&SigningKey::generate(Curve::P256).unwrap(), "u");
    let pid = w.propose(0, &add_user(&c)).unwrap().proposal_id;
    for (m, want) in [
        (1, Err("AuthorizationFailed")),
        (0, Ok(ProposalState::Withdrawn)),
        (0, Ok(ProposalState::Withdrawn)),
    ] {
        let req = w.sign(m, msg::WITHDRAWAL, Some(&pid), "");
        let now = w.clock;
        let r = w.run(|tx| {
            let s = request::verify(tx, &req, msg::WITHDRAWAL, Some(&pid), now)?;
            withdraw(tx, &s, &req, &pid)
        });
        match want {
            Ok(st) => assert_eq!(r.unwrap().info.state, st),
            Err(code) => assert_eq!(r.unwrap_err().code, code),
        }
    }
    assert_eq!(w.vote(1, &pid, YES).unwrap_err().code, "ProposalNotOpen");
}

#[test]
fn apply_that_throws_fails_and_writes_nothing() {
    let mut w = World::new(1);
    // set_member_data on a member that does not exist: validate passes, apply throws.
    let p = json!({"actions": [
        {"name": "set_user", "args": {"cert": cert(&SigningKey::generate(Curve::P256).unwrap(), "u")}},
        {"name": "set_member_data", "args": {"member_id": "ab".repeat(32), "member_data": 1}},
    ]});
    let pid = w.propose(0, &p).unwrap().proposal_id;
    let out = w.vote(0, &pid, YES).unwrap();
    assert_eq!(out.info.state, ProposalState::Failed);
    let failure = out.info.failure.unwrap();
    assert!(failure.reason.contains("no member"), "{failure:?}");
    assert!(
        w.store
            .state()
            .map(maps::USER_CERTS)
            .is_none_or(|m| m.is_empty()),
        "the first action's write is discarded"
    );
    assert_eq!(w.info(&pid).state, ProposalState::Failed);
}

#[test]
fn validate_refuses_bad_proposals() {
    let mut w = World::new(1);
    for (p, needle) in [
        (
            json!({"actions": [{"name": "launch_missiles", "args": {}}]}),
            "unknown action",
        ),
        (
            json!({"actions": [{"name": "set_user", "args": {"cert": "not a cert"}}]}),
            "cert",
        ),
        (
            json!({"actions": [{"name": "set_user", "args": {"cert": 5}}]}),
            "cert",
        ),
        (
            json!({"actions": [{"name": "remove_member", "args": {"member_id": "x", "extra": 1}}]}),
            "unknown argument",
        ),
        (json!({"actions": []}), "no actions"),
        (json!({"nope": 1}), "actions"),
        (json!([1, 2]), "actions"),
    ] {
        let e = w.propose(0, &p).unwrap_err();
        assert_eq!(e.code, "ProposalFailedToValidate", "{p}");
        assert!(e.message.contains(needle), "{p}: {}", e.message);
    }
    let req = w.sign(0, msg::PROPOSAL, None, "{not json");
    let now = w.clock;
    let e = w
        .run(|tx| {
            let s = request::verify(tx, &req, msg::PROPOSAL, None, now)?;
            propose(tx, &s, &req, &[7; 32])
        })
        .unwrap_err();
    assert_eq!(e.code, "InvalidProposal");
}

#[test]
fn ballots_that_throw_or_loop_are_refused() {
    let mut w = World::new(3);
    let c = cert(&SigningKey::generate(Curve::P256).unwrap(), "u");
    let pid = w.propose(0, &add_user(&c)).unwrap().proposal_id;
    for (script, needle) in [
        (
            "export function vote(p, id) { throw new Error('nope') }",
            "nope",
        ),
        (
            "export function vote(p, id) { while (true) {} }",
            "out of work",
        ),
        (
            "export function vote(p, id) { return Math.random() > 0.5 }",
            "deterministically",
        ),
        (
            "export function vote(p, id) { return Date.now() > 0 }",
            "deterministically",
        ),
        ("export function vote(p, id) { return 1 }", "true or false"),
        ("export function vote(p, id) { return f(", "does not load"),
        ("export function elect() { return true }", "vote"),
        (
            "export function vote(p, id) { let a = []; while (true) a.push(new Array(1e6).fill(1)); }",
            "limits",
        ),
        (
            "export function vote(p, id) { return ccf.kv['ccl.app.entries'].has(ccf.strToBuf('x')) }",
            "not public",
        ),
        (
            "export function vote(p, id) { ccf.kv['public:ccf.gov.users.certs'].set(ccf.strToBuf('x'), ccf.strToBuf('y')); return true }",
            "read-only",
        ),
    ] {
        let e = w.vote(1, &pid, script).unwrap_err();
        assert_eq!(e.code, "BallotFailed", "{script}");
        assert!(e.message.contains(needle), "{script}: {}", e.message);
    }
    assert!(w.info(&pid).ballots.is_empty());
    // A ballot may read public maps.
    let reads =
        "export function vote(p, id) { return ccf.kv['public:ccf.gov.members.info'].size === 3 }";
    assert_eq!(w.vote(1, &pid, reads).unwrap().info.ballots.len(), 1);
    assert_eq!(w.vote(1, &pid, YES).unwrap_err().code, "VoteAlreadyExists");
}

/// Installs `constitution` by a unanimous vote of a one-member service.
fn install(w: &mut World, constitution: &str) -> Result<Outcome, GovError> {
    let p =
        json!({"actions": [{"name": "set_constitution", "args": {"constitution": constitution}}]});
    let pid = w.propose(0, &p)?.proposal_id;
    w.vote(0, &pid, YES)
}

#[test]
fn constitutions_that_throw_loop_or_do_not_parse() {
    let mut w = World::new(1);
    let e = install(
        &mut w,
        "export function validate(input) { return {valid: true ",
    )
    .unwrap_err();
    assert_eq!(e.code, "InvalidConstitution");
    let e = install(
        &mut w,
        "export function validate(input) { return {valid: true} }",
    )
    .unwrap_err();
    assert_eq!(e.code, "InvalidConstitution");
    assert!(e.message.contains("resolve"), "{}", e.message);

    // A constitution that throws in validate for one action and loops for another.
    let tricky = DEFAULT_CONSTITUTION.replace(
        "export function validate(input) {",
        "export function validate(input) {\n  if (input.includes('\"explode\"')) throw new Error('boom');\n  if (input.includes('\"spin\"')) { for (;;) {} }",
    );
    assert_eq!(
        install(&mut w, &tricky).unwrap().info.state,
        ProposalState::Accepted
    );
    let e = w
        .propose(0, &json!({"actions": [{"name": "explode"}]}))
        .unwrap_err();
    assert_eq!(e.code, "ProposalFailedToValidate");
    assert!(e.message.contains("boom"), "{}", e.message);
    let e = w
        .propose(0, &json!({"actions": [{"name": "spin"}]}))
        .unwrap_err();
    assert!(e.message.contains("out of work"), "{}", e.message);

    // A resolve that throws refuses the proposal; nothing is stored.
    let bad_resolve = DEFAULT_CONSTITUTION.replace(
        "export function resolve(proposal, proposerId, votes) {",
        "export function resolve(proposal, proposerId, votes) {\n  if (proposal.includes('\"poison\"')) throw new Error('resolve broke');",
    );
    assert_eq!(
        install(&mut w, &bad_resolve).unwrap().info.state,
        ProposalState::Accepted
    );
    let before = w.store.state().map(maps::PROPOSALS).map(|m| m.len());
    let e = w
        .propose(0, &json!({"actions": [{"name": "set_member_data", "args": {"member_id": w.members[0].id.clone(), "member_data": "poison"}}]}))
        .unwrap_err();
    assert_eq!(e.code, "ProposalFailedToResolve");
    assert!(e.message.contains("resolve broke"));
    assert_eq!(
        w.store.state().map(maps::PROPOSALS).map(|m| m.len()),
        before
    );
}

#[test]
fn set_constitution_drops_other_open_proposals() {
    let mut w = World::new(3);
    let c = cert(&SigningKey::generate(Curve::P256).unwrap(), "u");
    let other = w.propose(0, &add_user(&c)).unwrap().proposal_id;
    let p = json!({"actions": [{"name": "set_constitution", "args": {"constitution": DEFAULT_CONSTITUTION}}]});
    let pid = w.propose(1, &p).unwrap().proposal_id;
    w.vote(0, &pid, YES).unwrap();
    assert_eq!(
        w.vote(2, &pid, YES).unwrap().info.state,
        ProposalState::Accepted
    );
    assert_eq!(w.info(&other).state, ProposalState::Dropped);
    assert_eq!(w.vote(1, &other, YES).unwrap_err().code, "ProposalNotOpen");
}

#[test]
fn requests_are_checked() {
    let mut w = World::new(2);
    let now = w.clock;
    let verify = |w: &World, req: &[u8], ty: &str, pid: Option<&str>, now: i64| {
        w.run(|tx| request::verify(tx, req, ty, pid, now).map(|_| ()))
            .unwrap_err()
    };
    let body = add_user(&cert(&SigningKey::generate(Curve::P256).unwrap(), "u")).to_string();
    // Unsigned, garbage.
    assert_eq!(
        verify(&w, b"", msg::PROPOSAL, None, now).code,
        "InvalidAuthenticationInfo"
    );
    assert_eq!(
        verify(&w, body.as_bytes(), msg::PROPOSAL, None, now).code,
        "InvalidAuthenticationInfo"
    );
    // Unknown member.
    let stranger = SigningKey::generate(Curve::P384).unwrap();
    let sid = cert_id(&cert(&stranger, "stranger")).unwrap();
    let req = sign_request(&stranger, &sid, msg::PROPOSAL, None, now, body.as_bytes()).unwrap();
    let e = verify(&w, &req, msg::PROPOSAL, None, now);
    assert!(e.message.contains("not a member"), "{}", e.message);
    // A member's kid, someone else's signature.
    let forged = sign_request(
        &stranger,
        &w.members[0].id,
        msg::PROPOSAL,
        None,
        now,
        body.as_bytes(),
    )
    .unwrap();
    let e = verify(&w, &forged, msg::PROPOSAL, None, now);
    assert!(
        e.message.contains("signature") || e.message.contains("algorithm"),
        "{}",
        e.message
    );
    // Wrong type, wrong proposal id.
    let req = w.sign(0, msg::BALLOT, Some("p1"), &body);
    let e = verify(&w, &req, msg::PROPOSAL, None, now);
    assert!(e.message.contains("takes \"proposal\""), "{}", e.message);
    let e = verify(&w, &req, msg::BALLOT, Some("p2"), now);
    assert!(e.message.contains("proposal_id"), "{}", e.message);
    // Stale and future.
    let m = &w.members[0];
    for t in [
        now - request::MAX_CLOCK_SKEW - 1,
        now + request::MAX_CLOCK_SKEW + 1,
    ] {
        let req = sign_request(&m.key, &m.id, msg::PROPOSAL, None, t, body.as_bytes()).unwrap();
        assert_eq!(
            verify(&w, &req, msg::PROPOSAL, None, now).code,
            "InvalidCreatedAt"
        );
    }
    // Replay: the second time is refused, even later within the window.
    let req = w.sign(0, msg::PROPOSAL, None, &body);
    let t = w.clock;
    w.run(|tx| {
        let s = request::verify(tx, &req, msg::PROPOSAL, None, t)?;
        propose(tx, &s, &req, &[7; 32])
    })
    .unwrap();
    assert_eq!(
        verify(&w, &req, msg::PROPOSAL, None, t + 5).code,
        "ProposalReplay"
    );
    // Much later, it is stale instead.
    assert_eq!(
        verify(&w, &req, msg::PROPOSAL, None, t + 10_000).code,
        "InvalidCreatedAt"
    );
}

#[test]
fn replay_records_expire() {
    let mut w = World::new(1);
    for i in 0..5 {
        let req = w.sign(0, msg::STATE_DIGEST, None, "");
        let now = w.clock + i * 400;
        w.run(|tx| request::verify(tx, &req, msg::STATE_DIGEST, None, now).map(|_| ()))
            .ok();
    }
    let kept = w
        .store
        .state()
        .map(maps::RECENT_REQUESTS)
        .map_or(0, |m| m.len());
    assert!(kept < 5, "old records are pruned ({kept} kept)");
}

#[test]
fn members_ack_to_become_active() {
    let mut w = World::new(1);
    let key = SigningKey::generate(Curve::P384).unwrap();
    let c = cert(&key, "newcomer");
    let p = json!({"actions": [{"name": "set_member", "args": {"cert": c, "member_data": {"org": "bank2"}}}]});
    let pid = w.propose(0, &p).unwrap().proposal_id;
    assert_eq!(
        w.vote(0, &pid, YES).unwrap().info.state,
        ProposalState::Accepted
    );
    let id = cert_id(&c).unwrap();
    w.members.push(Member {
        id: id.clone(),
        key,
    });
    let mut tx = w.store.begin();
    assert_eq!(member_status(&mut tx, &id), Some(MemberStatus::Accepted));
    drop(tx);
    // Accepted members cannot propose yet.
    let e = w.propose(1, &add_user(&c)).unwrap_err();
    assert_eq!(e.code, "MemberNotActive");
    // Ack without a digest, then with the wrong one, then the right one.
    let ack_req = |w: &mut World, digest: &str| {
        let req = w.sign(
            1,
            msg::ACK,
            None,
            &json!({"stateDigest": digest}).to_string(),
        );
        let now = w.clock;
        let id = w.members[1].id.clone();
        w.run(|tx| {
            let s = request::verify(tx, &req, msg::ACK, None, now)?;
            ack(tx, &s, &req, &id)
        })
    };
    assert_eq!(
        ack_req(&mut w, "aa").unwrap_err().code,
        "StateDigestNotFound"
    );
    let req = w.sign(1, msg::STATE_DIGEST, None, "");
    let now = w.clock;
    w.run(|tx| {
        let s = request::verify(tx, &req, msg::STATE_DIGEST, None, now)?;
        update_state_digest(tx, &s, &id, "cafe")
    })
    .unwrap();
    assert_eq!(
        ack_req(&mut w, "beef").unwrap_err().code,
        "StateDigestMismatch"
    );
    ack_req(&mut w, "cafe").unwrap();
    let mut tx = w.store.begin();
    assert_eq!(member_status(&mut tx, &id), Some(MemberStatus::Active));
    drop(tx);
    // Now two active members: one vote is not enough.
    let c2 = cert(&SigningKey::generate(Curve::P256).unwrap(), "u");
    let pid = w.propose(1, &add_user(&c2)).unwrap().proposal_id;
    assert_eq!(
        w.vote(1, &pid, YES).unwrap().info.state,
        ProposalState::Open
    );
    assert_eq!(
        w.vote(0, &pid, YES).unwrap().info.state,
        ProposalState::Accepted
    );
}

#[test]
fn node_effects_and_role_actions() {
    let mut w = World::new(1);
    let p = json!({"actions": [
        {"name": "transition_service_to_open", "args": {}},
        {"name": "set_user_role", "args": {"user_id": "AA:BB", "role": "Reader"}},
    ]});
    let pid = w.propose(0, &p).unwrap().proposal_id;
    let out = w.vote(0, &pid, YES).unwrap();
    assert_eq!(out.info.state, ProposalState::Accepted);
    assert!(out.effects.open_service);
    assert!(!out.effects.rekey);
    let pid = w
        .propose(0, &json!({"actions": [{"name": "trigger_snapshot", "args": {}}, {"name": "trigger_ledger_rekey", "args": {}}]}))
        .unwrap()
        .proposal_id;
    let out = w.vote(0, &pid, YES).unwrap();
    assert!(out.effects.snapshot && out.effects.rekey && !out.effects.open_service);
    let e = w
        .propose(
            0,
            &json!({"actions": [{"name": "set_service_certificate_validity", "args": {}}]}),
        )
        .unwrap_err();
    assert!(e.message.contains("not supported"), "{}", e.message);
    let info: Value = serde_json::from_slice(&w.get(maps::USER_INFO, "AA:BB").unwrap()).unwrap();
    assert_eq!(info["user_data"]["assignedRole"], "Reader");
    let e = w
        .propose(0, &json!({"actions": [{"name": "set_user_role", "args": {"user_id": "x", "role": "God"}}]}))
        .unwrap_err();
    assert!(e.message.contains("role"), "{}", e.message);
}

#[test]
fn user_keys() {
    let fp = "5F:23:3D:26:E2:28:88:9C:06:E0:88:21:FA:C7:B2:9A:F8:81:30:6B:F9:15:41:F2:34:05:05:44:4C:AD:5A:B5";
    assert_eq!(user_key(fp), fp.replace(':', "").to_lowercase());
    assert_eq!(user_key("a0b1c2d3-e4f5"), "a0b1c2d3-e4f5");
    assert_eq!(user_key("AB:CD"), "AB:CD");
}

#[test]
fn default_constitution_loads() {
    check_constitution(DEFAULT_CONSTITUTION).unwrap();
}

#[test]
fn set_collection_access_is_checked_and_becomes_an_effect() {
    let mut w = World::new(1);
    let p = json!({"actions": [{"name": "set_collection_access", "args": {
        "collection_id": "deal", "readers": ["group:auditors"], "writers": ["AB:CD"],
    }}]});
    let pid = w.propose(0, &p).unwrap().proposal_id;
    let out = w.vote(0, &pid, YES).unwrap();
    assert_eq!(out.info.state, ProposalState::Accepted);
    let access: Value = serde_json::from_str(&out.effects.collection_access[0]).unwrap();
    assert_eq!(
        access,
        json!({"collection_id": "deal", "owner": "", "readers": ["group:auditors"], "writers": ["AB:CD"]})
    );
    for args in [
        json!({"collection_id": ""}),
        json!({"collection_id": 5}),
        json!({"collection_id": "x".repeat(257)}),
        json!({"collection_id": "deal", "readers": "all"}),
        json!({"collection_id": "deal", "writers": [1]}),
        json!({"collection_id": "deal", "everyone": true}),
    ] {
        let e = w
            .propose(
                0,
                &json!({"actions": [{"name": "set_collection_access", "args": args}]}),
            )
            .unwrap_err();
        assert!(e.message.contains("validate"), "{args}: {}", e.message);
    }
}
