//! Replication (issue 5): networks of real `ccl` processes on loopback, under continuous writes,
//! with nodes killed, restarted, cut off and added.

mod common;

use common::cluster::Cluster;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `tests/python/<script>` with `args`: it must succeed and print `ok`.
fn run_python(script: &str, args: &[std::ffi::OsString], ok: &str) {
    let out = std::process::Command::new(python())
        .arg(format!(
            "{}/tests/python/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains(ok),
        "{script}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops every node; then their committed chunks are byte-identical and every data directory
/// validates with `ccl ledger verify` and read_ledger.py.
fn stop_and_validate(c: &mut Cluster) {
    for i in 0..c.nodes.len() {
        c.stop(i);
    }
    committed_chunks_identical(c);
    for n in &c.nodes {
        validate_data_dir(&n.dir, false);
    }
}

/// Waits (at most `timeout`) until one of `candidates` is primary.
fn wait_primary_among(c: &Cluster, candidates: &[usize], timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = candidates
            .iter()
            .copied()
            .find(|i| c.network(*i)["is_primary"] == true)
        {
            return Some(p);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `contents` through node `i` and waits (10 s at most) until it is committed.
fn commit_one(c: &Cluster, i: usize, contents: &str) -> String {
    let client = c.client(i);
    c.runtime().block_on(async {
        let mut conn = client.connect().await.unwrap();
        let t = conn.write_entry(None, contents).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.status(&t).await.unwrap() != "Committed" {
            assert!(Instant::now() < deadline, "node {i} cannot commit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t
    })
}

/// The tests of this file run one at a time: each runs a network of processes, and several at
/// once on a small machine would measure the machine, not the network.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// A write acknowledged as Committed.
#[derive(Clone, Debug)]
struct Acked {
    txid: String,
    contents: String,
    started: Instant,
}

/// Writers spread over the nodes, each waiting for its writes to commit; what they saw.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(c: &Cluster, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let clients: Vec<_> = (0..c.nodes.len()).map(|i| c.client(i)).collect();
        let mut handles = Vec::new();
        for w in 0..writers {
            let (stop, acked, clients) = (stop.clone(), acked.clone(), clients.clone());
            handles.push(c.runtime().spawn(async move {
                let mut n = 0u64;
                let mut target = w;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    target = (target + 1) % clients.len();
                    let contents = format!("w{w}-{n}");
                    let started = Instant::now();
                    let r = async {
                        let mut conn = clients[target].connect().await?;
                        let txid = conn.write_entry(None, &contents).await?;
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while Instant::now() < deadline {
                            match conn.status(&txid).await?.as_str() {
                                "Committed" => return Ok(Some(txid)),
                                "Pending" => {}
                                _ => return Ok(None),
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Ok::<_, ccl_client::ClientError>(None)
                    };
                    match tokio::time::timeout(Duration::from_secs(15), r).await {
                        Ok(Ok(Some(txid))) => acked.lock().unwrap().push(Acked {
                            txid,
                            contents,
                            started,
                        }),
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        Load {
            stop,
            acked,
            handles,
        }
    }

    fn acked(&self) -> Vec<Acked> {
        self.acked.lock().unwrap().clone()
    }

    fn finish(self, c: &Cluster) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = c.runtime().block_on(h);
        }
        self.acked.lock().unwrap().clone()
    }
}

fn seqno(txid: &str) -> u64 {
    txid.split_once('.').unwrap().1.parse().unwrap()
}

/// Every acknowledged write is served by node `i` with its contents.
fn check_present(c: &Cluster, i: usize, acked: &[Acked]) {
    let max = acked.iter().map(|a| seqno(&a.txid)).max().unwrap_or(0);
    c.wait_committed(max, Duration::from_secs(60));
    for a in acked {
        let v = c
            .get(i, &format!("/app/transactions/{}?api-version=2022-05-13", a.txid))
            .unwrap_or_else(|e| {
                let statuses: Vec<_> = (0..c.nodes.len())
                    .map(|j| c.get(j, &format!("/node/tx?transaction_id={}", a.txid)).map(|v| v["status"].clone()).ok())
                    .collect();
                let keep = c.root.join("kept");
                let _ = std::process::Command::new("cp").arg("-r").arg(&c.root).arg("/tmp/cluster-failure").status();
                panic!("node {i} lost {}: {e}; statuses {statuses:?} (directories copied to /tmp/cluster-failure) {keep:?}", a.txid)
            });
        assert_eq!(v["entry"]["contents"], a.contents.as_str(), "node {i}: {v}");
    }
}

/// A receipt for `txid` from node `i` verifies against the service certificate.
fn check_receipt(c: &Cluster, i: usize, txid: &str) {
    let cert = std::fs::read_to_string(c.service_cert_path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = c
            .get(
                i,
                &format!("/app/transactions/{txid}/receipt?api-version=2022-05-13"),
            )
            .unwrap();
        if v["state"] == "Ready" {
            let r = ccl_receipt::Receipt::from_json(&v).unwrap();
            r.verify(&cert).unwrap();
            return;
        }
        assert!(Instant::now() < deadline, "no receipt for {txid}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The committed chunks of all nodes are byte-identical (each node has the same names).
fn committed_chunks_identical(c: &Cluster) {
    let chunks = |i: usize| -> Vec<(String, Vec<u8>)> {
        let dir = c.nodes[i].dir.join("ledger");
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".committed"))
            .map(|n| {
                let b = std::fs::read(dir.join(&n)).unwrap();
                (n, b)
            })
            .collect();
        v.sort();
        v
    };
    let first = chunks(0);
    assert!(!first.is_empty(), "node 0 has committed chunks");
    for i in 1..c.nodes.len() {
        let other = chunks(i);
        let common: Vec<_> = other
            .iter()
            .filter(|(n, _)| first.iter().any(|(m, _)| m == n))
            .collect();
        assert!(
            !common.is_empty(),
            "node {i} shares committed chunks with node 0"
        );
        for (name, bytes) in common {
            let mine = &first.iter().find(|(m, _)| m == name).unwrap().1;
            assert!(
                mine == bytes,
                "committed chunk {name} differs between node 0 and node {i}"
            );
        }
    }
}

#[test]
fn killing_the_primary_loses_no_committed_write() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let load = Load::start(&c, 4);
    std::thread::sleep(Duration::from_secs(2));
    let p = c.primary().expect("a primary");
    let before = load.acked();
    assert!(
        before.len() > 10,
        "writes commit before the kill: {}",
        before.len()
    );
    let killed_at = Instant::now();
    c.kill(p);
    // A new primary serves writes within 3 s: a write started after the kill commits.
    let recovered = loop {
        if let Some(a) = load.acked().iter().find(|a| a.started > killed_at) {
            break a.started.duration_since(killed_at);
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "no write committed after the primary was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(1));
    let all = load.finish(&c);
    let after_kill = Instant::now().duration_since(killed_at);
    eprintln!("a write started {recovered:?} after the kill committed ({after_kill:?} in all)");
    assert!(
        recovered < Duration::from_secs(3),
        "writes resumed {recovered:?} after the primary was killed"
    );
    let new_primary = c.primary().expect("a new primary");
    assert_ne!(new_primary, p);
    for i in (0..3).filter(|i| *i != p) {
        check_present(&c, i, &before);
        check_present(&c, i, &all);
    }
    let later = all.iter().find(|a| a.started > killed_at).unwrap();
    let survivor = (0..3).find(|i| *i != p).unwrap();
    check_receipt(&c, survivor, &before[0].txid);
    check_receipt(&c, survivor, &later.txid);
    // The killed node comes back and catches up.
    c.launch(p);
    check_present(&c, p, &all);
    check_receipt(&c, p, &later.txid);
    stop_and_validate(&mut c);
}

/// openraft fixes each node's election timeout when Raft starts. Voters whose timeouts are equal
/// (forced here) time out together after losing the primary and split every vote, term after
/// term; a voter that has known no leader for a while calls an election at a random moment, so
/// a primary is still elected.
#[test]
fn voters_with_equal_election_timeouts_still_elect_a_primary() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // The nodes inherit it (only while they start: restarts would not).
    // SAFETY: the tests of this file run one at a time (ONE_AT_A_TIME) and no other thread
    // reads the environment meanwhile.
    unsafe { std::env::set_var("CCL_TEST_ELECTION_TIMEOUT_MS", "1000") };
    let mut c = Cluster::start(dir.path(), 3, &[]);
    unsafe { std::env::remove_var("CCL_TEST_ELECTION_TIMEOUT_MS") };
    let p = c.primary().expect("a primary");
    c.kill(p);
    let started = Instant::now();
    let others: Vec<usize> = (0..3).filter(|i| *i != p).collect();
    let new_primary = wait_primary_among(&c, &others, Duration::from_secs(30))
        .expect("no primary 30 s after the kill");
    eprintln!("primary after {:?}", started.elapsed());
    commit_one(&c, new_primary, "after a split vote");
}

#[test]
fn the_azure_sdk_works_against_a_backup_of_three_nodes() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let p = c.primary().expect("a primary");
    let backup = (0..3).find(|i| *i != p).unwrap();
    run_python(
        "sdk_e2e.py",
        &[
            c.nodes[backup].endpoint().into(),
            c.service_cert_path().into(),
            c.user_pem().into(),
        ],
        "sdk e2e OK",
    );
    stop_and_validate(&mut c);
}

/// Issue 6: supplier1 and retailer1 share a private collection on a 3-node network; supplier2,
/// retailer2, an auditor and the Administrator see nothing of it through any read endpoint
/// (supply_chain.py lists them), on any node; no file of any node (chunks, snapshots, logs)
/// holds its plaintext; every ledger still validates with `ccl ledger verify` and CCF's
/// read_ledger.py.
#[test]
fn a_private_collection_is_invisible_to_outsiders_on_every_node() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    const MARKER: &str = "PRIVATE-DEAL-e41c7b";
    let tmp = dir.path().join("identities");
    std::fs::create_dir_all(&tmp).unwrap();
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.endpoint()).collect();
    run_python(
        "supply_chain.py",
        &[
            endpoints.join(",").into(),
            c.service_cert_path().into(),
            c.user_pem().into(),
            MARKER.into(),
            tmp.clone().into(),
        ],
        "supply chain OK",
    );
    // The members, by governance, let supplier2 read the deal (ccl's set_collection_access);
    // retailer2 still sees nothing.
    let sees = |who: &str| -> bool {
        let cert = std::fs::read_to_string(c.service_cert_path()).unwrap();
        let id = std::fs::read_to_string(tmp.join(format!("{who}.pem"))).unwrap();
        let client = ccl_client::Client::new(&c.nodes[2].endpoint(), &cert, Some(&id)).unwrap();
        c.runtime().block_on(async {
            let mut conn = client.connect().await.unwrap();
            let path = "/app/collections/deal-7f3a?api-version=2022-05-13";
            match conn.request(ccl_client::Method::GET, path, None).await {
                Ok(r) => r.json().unwrap()["readers"] == serde_json::json!(["group:supplier2"]),
                Err(ccl_client::ClientError::Api { status, .. }) if status == 404 => false,
                Err(e) => panic!("{e}"),
            }
        })
    };
    assert!(!sees("supplier2"));
    c.propose(
        "deal-access",
        serde_json::json!({"actions": [{"name": "set_collection_access", "args": {
            "collection_id": "deal-7f3a",
            "writers": ["group:supplier1", "group:retailer1"],
            "readers": ["group:supplier2"],
        }}]}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sees("supplier2") {
        assert!(
            Instant::now() < deadline,
            "the members' access list did not apply"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!sees("retailer2"));
    std::fs::remove_dir_all(&tmp).unwrap();
    stop_and_validate(&mut c);
    // The operator's view: every file of every node, logs included.
    let all = files(dir.path());
    assert!(
        all.iter()
            .any(|f| f.extension().is_some_and(|e| e == "log"))
    );
    for f in all {
        let b = std::fs::read(&f).unwrap();
        assert!(
            !b.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "private plaintext in {}",
            f.display()
        );
    }
}

#[test]
fn restarting_each_node_in_turn_under_load_loses_nothing() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let load = Load::start(&c, 3);
    let restarts = std::env::var("CCL_TEST_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20usize);
    for k in 0..restarts {
        let i = k % 3;
        let acked_before = load.acked().len();
        // Alternate a crash (SIGKILL) and a clean stop (SIGTERM).
        if k % 2 == 0 {
            c.kill(i);
        } else {
            c.stop(i);
        }
        std::thread::sleep(Duration::from_millis(300));
        c.launch(i);
        // The network goes on: more writes commit after the node is back.
        let deadline = Instant::now() + Duration::from_secs(30);
        while load.acked().len() < acked_before + 5 {
            assert!(
                Instant::now() < deadline,
                "restart {k}: writes stopped committing"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let all = load.finish(&c);
    assert!(all.len() > restarts * 5, "{} writes committed", all.len());
    for i in 0..3 {
        check_present(&c, i, &all);
    }
    stop_and_validate(&mut c);
}

#[test]
fn a_cut_off_minority_cannot_commit_and_rolls_back_when_healed() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 5, &[]);
    let p = c.primary().expect("a primary");
    // The minority: the primary and one other node; the majority: the other three.
    let other = (0..5).find(|i| *i != p).unwrap();
    let minority = vec![p, other];
    let majority: Vec<usize> = (0..5).filter(|i| !minority.contains(i)).collect();
    c.partition(&minority, &majority);
    // The old primary still takes writes, but cannot commit them.
    let mut stranded = Vec::new();
    {
        let client = c.client(p);
        c.runtime().block_on(async {
            let mut conn = client.connect().await.unwrap();
            for k in 0..5 {
                if let Ok(t) = conn.write_entry(None, &format!("stranded {k}")).await {
                    stranded.push(t);
                }
            }
        });
    }
    // The majority elects a primary and commits.
    let Some(new_primary) = wait_primary_among(&c, &majority, Duration::from_secs(20)) else {
        let _ = std::process::Command::new("cp")
            .arg("-r")
            .arg(&c.root)
            .arg("/tmp/cluster-failure")
            .status();
        panic!("the majority elected no primary (directories copied to /tmp/cluster-failure)");
    };
    let committed = commit_one(&c, new_primary, "majority");
    for t in &stranded {
        let v = c
            .get(
                p,
                &format!("/app/transactions/{t}/status?api-version=2022-05-13"),
            )
            .unwrap();
        assert_eq!(
            v["state"], "Pending",
            "a cut-off minority commits nothing: {t} {v}"
        );
    }
    c.heal();
    // After healing the old primary follows: its stranded writes are rolled back everywhere and
    // the majority's write is on every node.
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..5 {
        loop {
            let ok = stranded.iter().all(|t| {
                c.get(i, &format!("/node/tx?transaction_id={t}"))
                    .is_ok_and(|v| v["status"] == "Invalid")
            }) && c
                .get(i, &format!("/node/tx?transaction_id={committed}"))
                .is_ok_and(|v| v["status"] == "Committed");
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} did not roll back its suffix"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    stop_and_validate(&mut c);
}

#[test]
fn a_fourth_node_catches_up_from_a_snapshot_of_100k_transactions() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let total: u64 = std::env::var("CCL_TEST_CATCHUP_TXS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let interval = (total / 5).max(100).to_string();
    let mut c = Cluster::start(dir.path(), 3, &["--snapshot-interval-txs", &interval]);
    let p = c.primary().expect("a primary");
    // Bulk writes on the primary, many at a time.
    let client = c.client(p);
    let last = c.runtime().block_on(async move {
        let per = total / 16;
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = client.connect().await.unwrap();
                let mut last = String::new();
                for k in 0..per {
                    // The primary refuses writes (503) while too many wait for replication.
                    loop {
                        match conn.write_entry(None, &format!("bulk {w} {k}")).await {
                            Ok(t) => {
                                last = t;
                                break;
                            }
                            Err(ccl_client::ClientError::Api { status, .. })
                                if status.as_u16() == 503 =>
                            {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => panic!("bulk write: {e}"),
                        }
                    }
                }
                last
            }));
        }
        let mut last = 0;
        for t in tasks {
            last = last.max(seqno(&t.await.unwrap()));
        }
        last
    });
    assert!(last >= total, "{last} transactions");
    c.wait_committed(last, Duration::from_secs(120));
    let snapshots = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir.join("snapshots"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.ends_with(".committed"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        !snapshots(&c.nodes[p].dir).is_empty(),
        "the primary wrote snapshots"
    );
    let started = Instant::now();
    let n = c.add_node();
    c.wait_voters(4);
    c.wait_committed(last, Duration::from_secs(60));
    eprintln!(
        "the 4th node joined and caught up in {:?}",
        started.elapsed()
    );
    // It started from the snapshot: its ledger begins after it, and it holds the snapshot.
    assert!(
        !snapshots(&c.nodes[n].dir).is_empty(),
        "the new node holds the snapshot it started from"
    );
    let chunks: Vec<String> = std::fs::read_dir(c.nodes[n].dir.join("ledger"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        !chunks
            .iter()
            .any(|n| n.starts_with("ledger_1-") || n == "ledger_1.log"),
        "the new node's ledger starts after the snapshot: {chunks:?}"
    );
    // It serves the latest entries and a receipt.
    let t = format!("{}.{}", c.network(n)["current_view"], last);
    let _ = t;
    let v = c
        .get(n, "/app/transactions/current?api-version=2022-05-13")
        .unwrap();
    assert!(v["contents"].as_str().unwrap().starts_with("bulk"), "{v}");
    for i in 0..4 {
        c.stop(i);
    }
}

#[test]
fn a_wiped_node_rejoins_as_a_new_node_and_the_old_one_is_retired() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let p = c.primary().expect("a primary");
    let victim = (0..3).find(|i| *i != p && *i != 0).unwrap();
    let load = Load::start(&c, 2);
    std::thread::sleep(Duration::from_millis(500));
    let old = c.rejoin_wiped(victim);
    assert_ne!(
        old, c.nodes[victim].id,
        "a wiped node comes back with a new identity"
    );
    c.wait_voters(4);
    // The members retire the lost identity: it leaves Raft's membership.
    c.retire(&old);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c.network(c.primary().unwrap_or(0));
        let ids: Vec<&str> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["node_id"].as_str())
            .collect();
        if ids.len() == 3 && !ids.contains(&old.as_str()) {
            break;
        }
        if Instant::now() > deadline {
            let _ = std::process::Command::new("cp")
                .arg("-r")
                .arg(&c.root)
                .arg("/tmp/cluster-failure")
                .status();
            panic!("the retired node {old} is still a member: {ids:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = load.finish(&c);
    for i in 0..3 {
        check_present(&c, i, &all);
    }
    let info = c
        .get(0, "/gov/service/nodes?api-version=2024-07-01")
        .unwrap();
    assert!(info.to_string().contains(&old), "{info}");
    for i in 0..3 {
        c.stop(i);
    }
    committed_chunks_identical(&c);
    for i in 0..3 {
        if i != victim {
            validate_data_dir(&c.nodes[i].dir, false);
        }
    }
}
