//! Issue 6: ledger secrets on a network (rekey through the ledger), recovery shares and disaster
//! recovery, with real `ccl` processes on loopback.

mod common;

use common::cluster::Cluster;
use common::*;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One network at a time (see cluster.rs).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

const API: &str = "api-version=2022-05-13";

/// Writes `contents` through node `i` (into `collection` if given); returns the transaction id
/// once it is committed.
fn write(c: &Cluster, i: usize, collection: Option<&str>, contents: &str) -> String {
    let client = c.client(i);
    let contents = contents.to_string();
    let collection = collection.map(str::to_string);
    c.runtime().block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = async {
                let mut conn = client.connect().await?;
                let txid = conn.write_entry(collection.as_deref(), &contents).await?;
                for _ in 0..1000 {
                    if conn.status(&txid).await? == "Committed" {
                        return Ok(Some(txid));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<_, ccl_client::ClientError>(None)
            }
            .await;
            match r {
                Ok(Some(txid)) => return txid,
                other => assert!(Instant::now() < deadline, "write {contents}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Node `i` serves every written entry with its contents, and a receipt for it that verifies
/// against the service certificate `cert` (with the endorsements it carries).
fn check_entries(c: &Cluster, i: usize, written: &[(String, String)], cert: &str) {
    for (txid, contents) in written {
        let v = c
            .get(i, &format!("/app/transactions/{txid}?{API}"))
            .unwrap_or_else(|e| panic!("node {i}: {txid}: {e}"));
        assert_eq!(v["entry"]["contents"], contents.as_str(), "node {i}: {v}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = c
                .get(i, &format!("/app/transactions/{txid}/receipt?{API}"))
                .unwrap();
            if r["state"] == "Ready" {
                let receipt = ccl_receipt::Receipt::from_json(&r).unwrap();
                receipt
                    .verify(cert)
                    .unwrap_or_else(|e| panic!("node {i}: receipt of {txid}: {e}"));
                break;
            }
            assert!(Instant::now() < deadline, "no receipt for {txid}: {r}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// CCF's own check of the chain of ledger secrets.
fn check_secrets_chain(data: &Path) {
    let out = std::process::Command::new(python())
        .args(["-m", "ccf.verify_ledger_secrets_chain"])
        .arg(data.join("ledger"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify_ledger_secrets_chain: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rekey(c: &Cluster, name: &str) {
    c.propose(
        name,
        serde_json::json!({"actions": [{"name": "trigger_ledger_rekey", "args": {}}]}),
    );
}

#[test]
fn rekey_on_three_nodes_everything_stays_readable_and_verifiable() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(root.path(), 3, &[]);
    let cert = std::fs::read_to_string(c.service_cert_path()).unwrap();
    let mut written = Vec::new();
    for i in 0..6 {
        let contents = format!("before the rekey {i}");
        written.push((write(&c, i % 3, None, &contents), contents));
    }
    // member0 is the one recovery member: its share is issued again at every rekey.
    let m0 = std::fs::read_to_string(c.nodes[0].dir.join("member0.pem")).unwrap();
    let m0_id = hex::encode(ccl_crypto::sha256(
        ccl_crypto::Certificate::from_pem(&m0).unwrap().der(),
    ));
    let share_path = format!("/gov/recovery/encrypted-shares/{m0_id}?api-version=2024-07-01");
    let share_before = c.get(1, &share_path).unwrap()["encryptedShare"].clone();
    assert!(share_before.is_string());
    rekey(&c, "rekey-1");
    c.wait_caught_up();
    let share_after = c.get(2, &share_path).unwrap()["encryptedShare"].clone();
    assert!(share_after.is_string() && share_after != share_before);
    // A threshold that one recovery member cannot meet is refused: the service stays recoverable.
    let proposal = root.path().join("threshold.json");
    let (ok, out) = propose_and_vote(
        &c.nodes[0].endpoint(),
        &c.service_cert_path(),
        &c.nodes[0].dir,
        &proposal,
        &serde_json::json!({"actions": [{"name": "set_recovery_threshold", "args": {
            "recovery_threshold": 2}}]}),
        &[0],
    );
    assert!(!ok && out.contains("InvalidRecoveryThreshold"), "{out}");
    for i in 0..6 {
        let contents = format!("after the first rekey {i}");
        written.push((write(&c, i % 3, None, &contents), contents));
    }
    // A second rekey, with a backup down: it gets the secret from the ledger when it catches up.
    let backup = (0..3).find(|i| Some(*i) != c.primary()).unwrap();
    c.stop(backup);
    rekey(&c, "rekey-2");
    let live = (0..3).find(|i| *i != backup).unwrap();
    for i in 0..4 {
        let contents = format!("after the second rekey {i}");
        written.push((write(&c, live, None, &contents), contents));
    }
    c.launch(backup);
    c.wait_caught_up();
    for i in 0..3 {
        check_entries(&c, i, &written, &cert);
    }
    // Every node restarted: each replays its ledger and learns the secrets from it.
    for i in 0..3 {
        c.stop(i);
    }
    for i in 0..3 {
        c.launch(i);
    }
    c.wait_voters(3);
    let contents = "after the restart".to_string();
    written.push((write(&c, 0, None, &contents), contents));
    c.wait_caught_up();
    for i in 0..3 {
        check_entries(&c, i, &written, &cert);
    }
    for i in 0..3 {
        c.stop(i);
    }
    for i in 0..3 {
        let data = &c.nodes[i].dir;
        validate_data_dir(data, false);
        check_secrets_chain(data);
        // The rekeys' secrets are in the ledger sealed to nodes, never in the clear: the
        // entries' plaintexts are nowhere on disk.
        for f in files(data) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes.windows(12).any(|w| w == b"second rekey"),
                "{} holds a plaintext",
                f.display()
            );
        }
    }
}

/// `ccl gov` against `endpoint` as generated member `m` of `dir` (service certificate `cert`).
fn gov(endpoint: &str, cert: &Path, dir: &Path, m: usize, args: &[&str]) -> (bool, String) {
    let out = ccl()
        .arg("gov")
        .args(args)
        .args(["--json", "--endpoint", endpoint, "--service-cert"])
        .arg(cert)
        .arg("--member")
        .arg(dir.join(format!("member{m}.pem")))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Writes the proposal `actions` to `file`; member 0 of `dir` proposes it and `voters` vote to
/// accept it in turn. Returns the last vote's answer.
fn propose_and_vote(
    endpoint: &str,
    cert: &Path,
    dir: &Path,
    file: &Path,
    actions: &serde_json::Value,
    voters: &[usize],
) -> (bool, String) {
    std::fs::write(file, actions.to_string()).unwrap();
    let (ok, out) = gov(endpoint, cert, dir, 0, &["propose", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    let id = serde_json::from_str::<serde_json::Value>(out.lines().next().unwrap()).unwrap()
        ["proposalId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut last = (false, String::new());
    for m in voters {
        last = gov(endpoint, cert, dir, *m, &["vote", "--accept", &id]);
    }
    last
}

/// A client of `endpoint` trusting `cert`, as `identity`.
fn client(endpoint: &str, cert: &Path, identity: &Path) -> ccl_client::Client {
    ccl_client::Client::new(
        endpoint,
        &std::fs::read_to_string(cert).unwrap(),
        Some(&std::fs::read_to_string(identity).unwrap()),
    )
    .unwrap()
}

fn get(
    rt: &tokio::runtime::Runtime,
    c: &ccl_client::Client,
    path: &str,
) -> Result<serde_json::Value, ccl_client::ClientError> {
    let path = path.to_string();
    rt.block_on(async {
        let mut conn = c.connect().await?;
        conn.request(ccl_client::Method::GET, &path, None)
            .await?
            .json()
    })
}

/// The Azure SDK's `verify_receipt` on a receipt answer (with its application claims).
fn azure_verify(answer: &serde_json::Value, cert: &Path, dir: &Path) {
    let file = dir.join("receipt.json");
    std::fs::write(&file, answer.to_string()).unwrap();
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(
            "import json, sys\n\
             from azure.confidentialledger.receipt import verify_receipt\n\
             a = json.load(open(sys.argv[1]))\n\
             verify_receipt(a['receipt'], open(sys.argv[2]).read(), application_claims=a.get('applicationClaims'))\n",
        )
        .arg(&file)
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify_receipt: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process killed when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Kill {
    /// SIGTERM, and wait for it to stop.
    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` (stderr appended to `log`) and waits for a stdout line starting with `ready`;
/// returns the process and that line.
fn spawn(mut cmd: std::process::Command, log: &Path, ready: &str) -> (Kill, String) {
    use std::io::BufRead;
    let mut child = cmd
        .env("CCL_LOG", "info,openraft=warn")
        .stdout(std::process::Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let child = Kill(child);
    let line = loop {
        let l = lines
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "the process exited: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .unwrap();
        if l.starts_with(ready) {
            break l;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, line)
}

#[test]
fn disaster_recovery_from_one_nodes_ledger_with_two_of_three_shares() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(root.path(), 3, &["--members", "3"]);
    let old_cert = std::fs::read_to_string(c.service_cert_path()).unwrap();
    let node0 = c.nodes[0].dir.clone();
    // Private data (entries), then a rekey (so that the chain of secrets has two links), more
    // private data, and public data (a governance change: a user added).
    let mut written = Vec::new();
    for i in 0..4 {
        let contents = format!("before the disaster {i}");
        written.push((write(&c, i % 3, None, &contents), contents));
    }
    rekey(&c, "dr-rekey");
    for i in 0..4 {
        let contents = format!("after the rekey {i}");
        written.push((write(&c, i % 3, None, &contents), contents));
    }
    c.propose(
        "dr-user",
        serde_json::json!({"actions": [{"name": "set_user_data", "args": {
            "user_id": "dr-public-user", "user_data": {"assignedRole": "Reader"}}}]}),
    );
    c.wait_caught_up();
    check_entries(&c, 0, &written, &old_cert);
    // Every node is lost.
    for i in 0..3 {
        c.kill(i);
    }

    // A new service from node 0's ledger.
    let rec = root.path().join("recovered");
    let port = common::cluster::free_ports(1)[0];
    let endpoint = format!("https://127.0.0.1:{port}");
    let recover = || {
        let mut cmd = ccl();
        cmd.args(["recover", "--ledger-dir"])
            .arg(node0.join("ledger"))
            .arg("--data-dir")
            .arg(&rec)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--signature-interval-ms", "20"]);
        spawn(cmd, &root.path().join("recovered.log"), "listening on ").0
    };
    let mut child = recover();
    let new_cert_path = rec.join("service_cert.pem");
    let new_cert = std::fs::read_to_string(&new_cert_path).unwrap();
    assert_ne!(new_cert, old_cert, "a new service identity");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let user = client(&endpoint, &new_cert_path, &node0.join("user0.pem"));
    let status = |rt: &tokio::runtime::Runtime| {
        get(rt, &user, "/gov/service/info?api-version=2024-07-01").unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // The public state is back at once (users, members), the private state is not.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&rt, &user, "/node/network").map_or(true, |v| !v["primary_id"].is_string()) {
        assert!(
            Instant::now() < deadline,
            "the recovered node never became primary"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&rt), "Recovering");
    let users = get(&rt, &user, "/gov/service/users?api-version=2024-07-01").unwrap();
    assert!(users.to_string().contains("dr-public-user"), "{users}");
    let early = get(
        &rt,
        &user,
        &format!("/app/transactions/{}?{API}", written[0].0),
    );
    assert!(
        early.is_err(),
        "no private data while Recovering: {early:?}"
    );

    // Members open it, naming the previous identity: then it waits for shares.
    let proposal = root.path().join("open.json");
    let open = |previous: &str| {
        serde_json::json!({"actions": [{"name": "transition_service_to_open", "args": {
            "previous_service_identity": previous, "next_service_identity": new_cert}}]})
    };
    let (_, out) = propose_and_vote(
        &endpoint,
        &new_cert_path,
        &node0,
        &proposal,
        &open(&new_cert),
        &[0, 1],
    );
    assert!(
        out.contains("InvalidPreviousServiceIdentity")
            || out.contains("Failed")
            || !out.contains("Accepted"),
        "the wrong previous identity is refused: {out}"
    );
    assert_eq!(status(&rt), "Recovering");
    let (_, out) = propose_and_vote(
        &endpoint,
        &new_cert_path,
        &node0,
        &proposal,
        &open(&old_cert),
        &[0, 1],
    );
    assert!(out.contains("Accepted"), "{out}");
    assert_eq!(status(&rt), "WaitingForRecoveryShares");
    // No rekey while the old shares are still needed.
    let (ok, out) = propose_and_vote(
        &endpoint,
        &new_cert_path,
        &node0,
        &proposal,
        &serde_json::json!({"actions": [{"name": "trigger_ledger_rekey", "args": {}}]}),
        &[0, 1],
    );
    assert!(!ok && out.contains("ServiceRecovering"), "{out}");

    // A wrong share is refused with a clear error, and changes nothing.
    let m1 = std::fs::read_to_string(node0.join("member1.pem")).unwrap();
    let m1_cert = ccl_crypto::Certificate::from_pem(&m1).unwrap();
    let m1_id = hex::encode(ccl_crypto::sha256(m1_cert.der()));
    let m1_key = ccl_crypto::SigningKey::from_pem(&m1).unwrap();
    let wrong = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([7u8; 33])
    };
    let req = ccl_gov::sign_request(
        &m1_key,
        &m1_id,
        "recovery_share",
        None,
        ccl_crypto::cert::now_unix(),
        serde_json::json!({"share": wrong}).to_string().as_bytes(),
    )
    .unwrap();
    let anon = ccl_client::Client::new(&endpoint, &new_cert, None).unwrap();
    let r = rt.block_on(async {
        let mut conn = anon.connect().await.unwrap();
        conn.request(
            ccl_client::Method::POST,
            &format!("/gov/recovery/members/{m1_id}:recover?api-version=2024-07-01"),
            Some(("application/cose", req)),
        )
        .await
    });
    match r {
        Err(ccl_client::ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!(status.as_u16(), 400);
            assert_eq!(code, "InvalidRecoveryShare", "{message}");
            assert!(message.contains("not member"), "{message}");
        }
        other => panic!("a wrong share was not refused: {other:?}"),
    }
    // Its own share decrypts only with its own key.
    let (ok, out) = gov(
        &endpoint,
        &new_cert_path,
        &node0,
        1,
        &[
            "recovery-share",
            "--encryption-key",
            node0.join("member0_enc_privk.pem").to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("does not decrypt"), "{out}");

    // One share is not enough.
    let (ok, out) = gov(
        &endpoint,
        &new_cert_path,
        &node0,
        0,
        &[
            "recovery-share",
            "--encryption-key",
            node0.join("member0_enc_privk.pem").to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("\"submittedCount\":1"), "{out}");
    assert_eq!(status(&rt), "WaitingForRecoveryShares");
    assert!(
        get(
            &rt,
            &user,
            &format!("/app/transactions/{}?{API}", written[0].0)
        )
        .is_err()
    );
    // The recovering node restarts (the same command) without losing the submitted share.
    child.stop();
    child = recover();
    assert_eq!(status(&rt), "WaitingForRecoveryShares");
    // The second opens it.
    let (ok, out) = gov(
        &endpoint,
        &new_cert_path,
        &node0,
        1,
        &[
            "recovery-share",
            "--encryption-key",
            node0.join("member1_enc_privk.pem").to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("\"submittedCount\":2"), "{out}");
    assert_eq!(status(&rt), "Open");

    // Everything is readable; receipts from before the disaster verify against the new service
    // certificate through the endorsement (ccl's check and the Azure SDK's).
    for (txid, contents) in &written {
        let v = get(&rt, &user, &format!("/app/transactions/{txid}?{API}"))
            .unwrap_or_else(|e| panic!("{txid}: {e}"));
        assert_eq!(v["entry"]["contents"], contents.as_str(), "{v}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let answer = loop {
            let r = get(
                &rt,
                &user,
                &format!("/app/transactions/{txid}/receipt?{API}"),
            )
            .unwrap();
            if r["state"] == "Ready" {
                break r;
            }
            assert!(Instant::now() < deadline, "no receipt for {txid}: {r}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            answer["receipt"]["serviceEndorsements"].is_array(),
            "{answer}"
        );
        let receipt = ccl_receipt::Receipt::from_json(&answer).unwrap();
        receipt.verify(&new_cert).unwrap();
        assert!(receipt.verify(&old_cert).is_err() || receipt.service_endorsements.is_empty());
        azure_verify(&answer, &new_cert_path, root.path());
    }
    // The recovered service issued new shares; CCF's way of decrypting one (openssl) works.
    let m2 = std::fs::read_to_string(node0.join("member2.pem")).unwrap();
    let m2_id = hex::encode(ccl_crypto::sha256(
        ccl_crypto::Certificate::from_pem(&m2).unwrap().der(),
    ));
    let v = get(
        &rt,
        &user,
        &format!("/gov/recovery/encrypted-shares/{m2_id}?api-version=2024-07-01"),
    )
    .unwrap();
    let encrypted = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(v["encryptedShare"].as_str().unwrap())
            .unwrap()
    };
    let enc_file = root.path().join("member2_share.enc");
    std::fs::write(&enc_file, &encrypted).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkeyutl", "-decrypt", "-inkey"])
        .arg(node0.join("member2_enc_privk.pem"))
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-in",
        ])
        .arg(&enc_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), ccl_crypto::shamir::SHARE_LEN);
    // New writes work, under the new identity.
    let txid = rt.block_on(async {
        let mut conn = user.connect().await.unwrap();
        conn.write_entry(None, "after the recovery").await.unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(
        &rt,
        &user,
        &format!("/app/transactions/{txid}/status?{API}"),
    )
    .unwrap()["state"]
        != "Committed"
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another node joins the recovered service: it replays the whole ledger, old part included.
    let jport = common::cluster::free_ports(1)[0];
    let mut cmd = ccl();
    cmd.args(["join", "--target", &endpoint, "--service-cert"])
        .arg(&new_cert_path)
        .arg("--data-dir")
        .arg(root.path().join("joined"))
        .args(["--listen", &format!("127.0.0.1:{jport}")])
        .args(["--signature-interval-ms", "20"]);
    let joiner_log = root.path().join("joined.log");
    let (joiner, line) = spawn(cmd, &joiner_log, "node ");
    let node_id = line.split_whitespace().nth(1).unwrap().to_string();
    let trust = root.path().join("trust.json");
    let (_, out) = propose_and_vote(
        &endpoint,
        &new_cert_path,
        &node0,
        &trust,
        &serde_json::json!({"actions": [{"name": "transition_node_to_trusted", "args": {
            "node_id": node_id, "valid_from": "20260101000000Z", "validity_period_days": 365}}]}),
        &[0, 1],
    );
    assert!(out.contains("Accepted"), "{out}");
    let joined = client(
        &format!("https://127.0.0.1:{jport}"),
        &new_cert_path,
        &node0.join("user0.pem"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match get(
            &rt,
            &joined,
            &format!("/app/transactions/{}?{API}", written[0].0),
        ) {
            Ok(v) if v["entry"]["contents"] == written[0].1.as_str() => break,
            other => assert!(
                Instant::now() < deadline,
                "the joined node does not serve old entries: {other:?}\n{}",
                std::fs::read_to_string(&joiner_log).unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    joiner.stop();

    // The recovered node restarts like any other (every secret sealed now).
    child.stop();
    let mut cmd = ccl();
    cmd.arg("start")
        .arg("--data-dir")
        .arg(&rec)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    let (child, _) = spawn(cmd, &root.path().join("recovered.log"), "listening on ");
    for (txid, contents) in &written {
        let v = get(&rt, &user, &format!("/app/transactions/{txid}?{API}")).unwrap();
        assert_eq!(v["entry"]["contents"], contents.as_str(), "{v}");
    }
    child.stop();
    validate_data_dir(&rec, false);
    check_secrets_chain(&rec);
}
