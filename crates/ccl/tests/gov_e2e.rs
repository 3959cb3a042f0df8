//! End-to-end governance (issue 4 acceptance): a real `ccl start` with three members, driven by
//! CCF's own `ccf_cose_sign1` (tests/python/gov_ccf.py) and by `ccl gov`; users added and removed
//! by governance; the ledger validated by `ccl ledger verify` and CCF's `read_ledger.py`.

mod common;

use ccl_crypto::cert::{CertSpec, self_signed};
use ccl_crypto::keys::{Curve, SigningKey};
use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

struct Node {
    child: Child,
    endpoint: String,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn member(&self, i: usize) -> PathBuf {
        self.dir.join(format!("member{i}.pem"))
    }

    /// `ccl gov … --json` as member `i`: (success, stdout JSON or text, stderr).
    fn gov(&self, i: usize, args: &[&str]) -> (bool, Value, String) {
        let out = ccl()
            .arg("gov")
            .args(args)
            .arg("--json")
            .arg("--endpoint")
            .arg(&self.endpoint)
            .arg("--service-cert")
            .arg(self.dir.join("service_cert.pem"))
            .arg("--member")
            .arg(self.member(i))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.success(),
            serde_json::from_str(stdout.trim()).unwrap_or(Value::String(stdout)),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    fn propose(&self, i: usize, proposal: &Value) -> String {
        let file = self
            .dir
            .with_extension(format!("proposal{}.json", rand_suffix()));
        std::fs::write(&file, proposal.to_string()).unwrap();
        let (ok, v, err) = self.gov(i, &["propose", file.to_str().unwrap()]);
        assert!(ok, "propose: {err}");
        assert_eq!(v["proposalState"], "Open", "{v}");
        v["proposalId"].as_str().unwrap().to_string()
    }

    fn vote(&self, i: usize, pid: &str, how: &str) -> Value {
        let (ok, v, err) = self.gov(i, &["vote", pid, how]);
        assert!(ok, "vote: {err}");
        v
    }

    /// `ccl put` as `identity`: (success, stderr).
    fn put(&self, identity: &Path, contents: &str) -> (bool, String) {
        let out = ccl()
            .args(["put", contents, "--wait", "--endpoint", &self.endpoint])
            .arg("--service-cert")
            .arg(self.dir.join("service_cert.pem"))
            .arg("--identity")
            .arg(identity)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

fn rand_suffix() -> String {
    hex::encode(ccl_crypto::random_array::<4>().unwrap())
}

#[test]
fn a_consortium_of_three_governs_by_majority() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let (child, endpoint) = spawn_node(&dir, &["--members", "3", "--no-auto-open"]);
    let node = Node {
        child,
        endpoint,
        dir: dir.clone(),
    };
    let admin = dir.join("user0.pem");

    // Opening: users wait for the members.
    let (ok, err) = node.put(&admin, "too early");
    assert!(!ok && err.contains("ServiceNotOpen"), "{err}");

    // CCF's own signing tool: members ack, open the service by vote; bad requests are refused.
    let py = Command::new(python())
        .arg(format!(
            "{}/tests/python/gov_ccf.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(&node.endpoint)
        .arg(dir.join("service_cert.pem"))
        .arg(tmp.path())
        .args((0..3).map(|i| node.member(i)))
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "gov_ccf.py failed:\n{}\n{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );
    let (ok, err) = node.put(&admin, "open now");
    assert!(ok, "{err}");

    // A user added by governance: Open with one vote, Accepted with two, usable at once.
    let key = SigningKey::generate(Curve::P256).unwrap();
    let cert = self_signed(&key, &CertSpec::client("supplier1")).unwrap();
    let user = tmp.path().join("supplier1.pem");
    std::fs::write(&user, format!("{}{}", cert.pem(), &*key.to_pkcs8_pem())).unwrap();
    let user_id = hex::encode(cert.fingerprint());
    let pid = node.propose(
        0,
        &json!({"actions": [{"name": "set_user", "args": {"cert": cert.pem(), "user_data": {"assignedRole": "Contributor"}}}]}),
    );
    assert_eq!(node.vote(0, &pid, "--accept")["proposalState"], "Open");
    let (ok, err) = node.put(&user, "not yet");
    assert!(!ok && err.contains("401"), "{err}");
    let v = node.vote(1, &pid, "--accept");
    assert_eq!(v["proposalState"], "Accepted", "{v}");
    let (ok, err) = node.put(&user, "supplier1 writes");
    assert!(ok, "a user added by governance writes at once: {err}");
    // A third ballot on the closed proposal is refused.
    let (ok, _, err) = node.gov(2, &["vote", &pid, "--accept"]);
    assert!(!ok && err.contains("ProposalNotOpen"), "{err}");

    // A rejecting majority.
    let data = |d: i32| json!({"actions": [{"name": "set_member_data", "args": {"member_id": hex::encode(ccl_crypto::sha256(ccl_crypto::cert::Certificate::from_pem(&std::fs::read_to_string(node.member(0)).unwrap()).unwrap().der())), "member_data": {"d": d}}}]});
    let pid = node.propose(1, &data(1));
    assert_eq!(node.vote(0, &pid, "--reject")["proposalState"], "Open");
    assert_eq!(node.vote(2, &pid, "--reject")["proposalState"], "Rejected");

    // Withdrawal, then no more ballots.
    let pid = node.propose(2, &data(2));
    let (ok, v, err) = node.gov(2, &["withdraw", &pid]);
    assert!(ok && v["proposalState"] == "Withdrawn", "{v} {err}");
    let (ok, _, err) = node.gov(0, &["vote", &pid, "--accept"]);
    assert!(!ok && err.contains("ProposalNotOpen"), "{err}");

    // An apply that throws: Failed, with the reason, and nothing of it applied.
    let pid = node.propose(
        0,
        &json!({"actions": [
            {"name": "set_user_role", "args": {"user_id": user_id, "role": "Reader"}},
            {"name": "set_member_data", "args": {"member_id": "ab".repeat(32), "member_data": 1}},
        ]}),
    );
    node.vote(0, &pid, "--accept");
    let v = node.vote(1, &pid, "--accept");
    assert_eq!(v["proposalState"], "Failed", "{v}");
    assert!(
        v["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("no member"),
        "{v}"
    );
    let (ok, err) = node.put(&user, "still a Contributor");
    assert!(ok, "the failed proposal changed nothing: {err}");

    // A custom ballot.
    let ballot = tmp.path().join("ballot.js");
    std::fs::write(
        &ballot,
        "export function vote (proposal, proposerId) { return JSON.parse(proposal).actions.every(a => a.name === 'remove_user') }",
    )
    .unwrap();
    let pid = node.propose(
        1,
        &json!({"actions": [{"name": "remove_user", "args": {"user_id": user_id}}]}),
    );
    node.vote(1, &pid, &format!("--ballot={}", ballot.display()));
    let v = node.vote(2, &pid, &format!("--ballot={}", ballot.display()));
    assert_eq!(v["proposalState"], "Accepted", "{v}");
    let (ok, err) = node.put(&user, "removed");
    assert!(
        !ok && err.contains("401"),
        "a removed user is refused at once: {err}"
    );

    let (ok, v, _) = node.gov(0, &["list"]);
    assert!(ok);
    let states: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["proposalState"].as_str().unwrap())
        .collect();
    for s in ["Accepted", "Rejected", "Withdrawn", "Failed"] {
        assert!(states.contains(&s), "{s} in {states:?}");
    }

    // Rekey and snapshot by vote; after a restart, entries from before and after still read.
    let pid = node.propose(
        2,
        &json!({"actions": [{"name": "trigger_ledger_rekey", "args": {}}, {"name": "trigger_snapshot", "args": {}}]}),
    );
    node.vote(0, &pid, "--accept");
    assert_eq!(node.vote(1, &pid, "--accept")["proposalState"], "Accepted");
    let (ok, err) = node.put(&admin, "after the rekey");
    assert!(ok, "{err}");
    let mut node = node;
    let stop = |node: &mut Node| {
        let status = Command::new("kill")
            .args(["-TERM", &node.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(node.child.wait().unwrap().success());
    };
    stop(&mut node);
    let (child, endpoint) = spawn_node(&dir, &[]);
    node.child = child;
    node.endpoint = endpoint;
    let out = ccl()
        .args(["list", "--endpoint", &node.endpoint])
        .arg("--service-cert")
        .arg(dir.join("service_cert.pem"))
        .arg("--identity")
        .arg(&admin)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("open now") && listed.contains("after the rekey"),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_dir(dir.join("snapshots")).unwrap().count() > 0,
        "trigger_snapshot wrote a snapshot"
    );

    // All of it is on the ledger, which validates.
    stop(&mut node);
    let (stdout, stderr) = validate_data_dir(&dir, true);
    let text = format!("{stdout}{stderr}");
    for table in [
        "public:ccf.gov.proposals_info",
        "public:ccf.gov.members.acks",
        "public:ccf.gov.users.certs",
        "public:ccf.gov.history",
    ] {
        assert!(text.contains(table), "{table} is on the ledger");
    }
}
