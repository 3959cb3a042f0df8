use super::*;
use ccl_crypto::cert::Certificate;
use ccl_ledger::secrets::LedgerSecret;
use std::time::Duration;

const SECRET: [u8; 32] = [7u8; 32];

fn cfg() -> EngineConfig {
    EngineConfig {
        signature_interval_txs: 10,
        signature_interval: Duration::from_secs(3600),
        signature_min_interval: Duration::from_secs(3600),
        chunk_size: 4096,
        snapshot_interval_txs: 0,
        merkle_cache_pages: 4,
        snapshots_in_background: true,
        presigned_nonces: crate::DEFAULT_PRESIGNED_NONCES,
    }
}

fn secrets() -> LedgerSecrets {
    LedgerSecrets::new(LedgerSecret::from_bytes(SECRET))
}

fn new_engine(dir: &Path, cfg: EngineConfig) -> (Engine, Identity) {
    let id = Identity::generate(&["localhost".into()]).expect("identity");
    let e = Engine::create(
        dir,
        cfg,
        id.clone(),
        LedgerSecret::from_bytes(SECRET),
        |_| Ok(()),
    )
    .expect("create");
    (e, id)
}

/// Commits `n` transactions writing a public and a private value each; signs as configured.
fn write(e: &mut Engine, from: usize, n: usize) {
    for i in from..from + n {
        let mut tx = e.store().begin();
        tx.put(
            "public:records",
            format!("k{i:06}").as_bytes(),
            format!("public value {i}").as_bytes(),
        )
        .unwrap();
        tx.put(
            "records",
            format!("k{i:06}").as_bytes(),
            format!("PRIVATE-PLAINTEXT-{i}").as_bytes(),
        )
        .unwrap();
        let claims = (i % 3 == 0).then(|| sha256(format!("claims {i}").as_bytes()));
        e.commit(tx, claims).unwrap();
        e.maybe_emit_signature(Instant::now()).unwrap();
    }
}

fn check_receipt(r: &ReceiptData, service: &Certificate) {
    let cert = Certificate::from_pem(&r.cert).unwrap();
    cert.verify_issued_by(service)
        .expect("node certificate endorsed by the service");
    cert.public_key()
        .unwrap()
        .verify_prehashed(&r.root(), &r.signature)
        .expect("signature over the root");
    assert_eq!(r.node_id, hex::encode(cert.key_id()));
}

#[test]
fn receipts_verify_and_bind_claims() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 95);
    let last = e.finish().unwrap();
    assert_eq!(e.commit_up_to(last).unwrap(), last);
    let h = e.handle();
    let mut sigs = 1; // the last transaction: a signature with no later one to prove it
    assert!(h.receipt(last).is_err());
    for s in 1..last {
        let r = h.receipt(s).unwrap();
        check_receipt(&r, &id.service_cert);
        assert_eq!(r.txid.seqno, s);
        assert!(r.signature_seqno > s);
        let tx = h.read_transaction(s).unwrap();
        assert_eq!(r.write_set_digest, tx.write_set_digest);
        if let Some(v) = tx.written("records", b"k000003") {
            assert_eq!(v, b"PRIVATE-PLAINTEXT-3");
            assert_eq!(r.claims_digest, sha256(b"claims 3"));
        }
        if tx.maps.iter().any(|m| m.name == tables::SIGNATURES) {
            sigs += 1;
        }
        // A different claims digest gives a different root: the signature no longer holds.
        let mut forged = r.clone();
        forged.claims_digest[0] ^= 1;
        assert!(
            Certificate::from_pem(&r.cert)
                .unwrap()
                .public_key()
                .unwrap()
                .verify_prehashed(&forged.root(), &r.signature)
                .is_err()
        );
    }
    // genesis, 95 writes, signature after genesis and every 10 writes, and the final one.
    assert_eq!(sigs, 1 + 9 + 1);
    assert!(matches!(
        h.receipt(last + 1),
        Err(EngineError::NotCommitted(_))
    ));
    assert!(matches!(h.receipt(0), Err(EngineError::NotFound(0))));
}

#[test]
fn uncommitted_transactions_have_no_receipt_and_pending_status() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, _) = new_engine(dir.path(), cfg());
    let synced = e.sync().unwrap();
    let committed = e.commit_up_to(synced).unwrap();
    write(&mut e, 0, 3);
    let h = e.handle();
    let t = TxId::new(1, committed + 1);
    assert_eq!(h.tx_status(t), TxStatus::Pending);
    assert!(matches!(
        h.receipt(committed + 1),
        Err(EngineError::NotCommitted(_))
    ));
    assert_eq!(h.tx_status(TxId::new(2, committed + 1)), TxStatus::Unknown);
    e.emit_signature().unwrap();
    let synced = e.sync().unwrap();
    e.commit_up_to(synced).unwrap();
    assert_eq!(h.tx_status(t), TxStatus::Committed);
    assert_eq!(h.tx_status(TxId::new(0, committed + 1)), TxStatus::Invalid);
    h.receipt(committed + 1).unwrap();
}

#[test]
fn reopen_replays_state_and_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 57);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    let before: Vec<_> = (1..last).map(|s| e.handle().receipt(s).unwrap()).collect();
    let state = e.store().state();
    drop(e);
    let mut e = Engine::open(dir.path(), cfg(), id.clone(), secrets()).unwrap();
    assert_eq!(e.last_seqno(), last);
    assert_eq!(e.committed_seqno(), last);
    assert_eq!(
        e.store().state().get("records", b"k000056").unwrap().value,
        state.get("records", b"k000056").unwrap().value
    );
    for (s, r) in (1..last).zip(&before) {
        assert_eq!(&e.handle().receipt(s).unwrap(), r);
    }
    // Continues where it stopped.
    write(&mut e, 57, 5);
    let last2 = e.finish().unwrap();
    e.commit_up_to(last2).unwrap();
    check_receipt(&e.handle().receipt(last2 - 1).unwrap(), &id.service_cert);
}

#[test]
fn lost_merkle_store_is_rebuilt_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 40);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    let r = e.handle().receipt(17).unwrap();
    drop(e);
    // Damage: scribble over level 0, then lose the whole directory.
    let l0 = dir.path().join(MERKLE_DIR).join("level_00.bin");
    let mut b = std::fs::read(&l0).unwrap();
    let n = b.len();
    b[n - 40] ^= 0xff;
    std::fs::write(&l0, &b).unwrap();
    let e = Engine::open(dir.path(), cfg(), id.clone(), secrets()).unwrap();
    assert_eq!(e.handle().receipt(17).unwrap(), r);
    drop(e);
    std::fs::remove_dir_all(dir.path().join(MERKLE_DIR)).unwrap();
    let e = Engine::open(dir.path(), cfg(), id, secrets()).unwrap();
    assert_eq!(e.handle().receipt(17).unwrap(), r);
}

#[test]
fn torn_tail_is_cut_and_rest_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 23);
    e.sync().unwrap();
    let last = e.last_seqno();
    drop(e);
    let ledger = dir.path().join(LEDGER_DIR);
    let open_chunk = std::fs::read_dir(&ledger)
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .find(|p| !p.to_string_lossy().contains('-'))
        .expect("an in-progress chunk");
    let mut b = std::fs::read(&open_chunk).unwrap();
    let n = b.len();
    b[n - 3] ^= 0x55; // inside the last entry's ciphertext / tag region
    std::fs::write(&open_chunk, &b).unwrap();
    let e = Engine::open(dir.path(), cfg(), id, secrets()).unwrap();
    assert_eq!(
        e.last_seqno(),
        last - 1,
        "exactly the damaged last entry is cut"
    );
    assert!(
        e.store()
            .state()
            .get("records", format!("k{:06}", 21).as_bytes())
            .is_some()
    );
}

#[test]
fn private_plaintext_never_reaches_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.snapshot_interval_txs = 20;
    let (mut e, _) = new_engine(dir.path(), c);
    write(&mut e, 0, 60);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    // One more round so the snapshot evidence is committed and snapshot files are written.
    write(&mut e, 60, 1);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    let snaps: Vec<_> = std::fs::read_dir(dir.path().join(SNAPSHOTS_DIR))
        .unwrap()
        .flatten()
        .collect();
    assert!(!snaps.is_empty(), "snapshots were written");
    let mut seen_public = false;
    for d in walk(dir.path()) {
        let b = std::fs::read(&d).unwrap();
        assert!(
            !contains(&b, b"PRIVATE-PLAINTEXT"),
            "plaintext in {}",
            d.display()
        );
        seen_public |= contains(&b, b"public value 5");
    }
    assert!(seen_public, "the scan does see plaintext of public maps");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(p).unwrap().flatten() {
        if d.path().is_dir() {
            out.extend(walk(&d.path()))
        } else {
            out.push(d.path())
        }
    }
    out
}

fn contains(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w == n)
}

#[test]
fn snapshots_serve_historical_state_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.snapshot_interval_txs = 25;
    let (mut e, id) = new_engine(dir.path(), c.clone());
    write(&mut e, 0, 80);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    let h = e.handle();
    // Committed history is compacted from the store: state_at rebuilds from snapshot + ledger.
    for s in [5, 30, 31, 57, last] {
        let st = h.state_at(s).unwrap();
        assert_eq!(st.version(), s);
    }
    let st = h.state_at(40).unwrap();
    let n = st.map("records").map_or(0, |m| m.len());
    let later = h.state_at(last).unwrap().map("records").unwrap().len();
    assert!(n > 0 && n < later);
    drop(e);
    // Recovery starts from the latest snapshot and ends in the same state.
    let e = Engine::open(dir.path(), c, id, secrets()).unwrap();
    assert_eq!(e.store().state().map("records").unwrap().len(), later);
    assert!(e.last_snapshot_seqno > 0);
}

#[test]
fn rollback_of_uncommitted_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 12);
    e.emit_signature().unwrap();
    let keep = e.sync().unwrap();
    e.commit_up_to(keep).unwrap();
    write(&mut e, 100, 14);
    assert!(
        e.rollback(keep - 1).is_err(),
        "committed transactions cannot be rolled back"
    );
    e.rollback(keep).unwrap();
    assert_eq!(e.last_seqno(), keep);
    assert!(e.store().state().get("records", b"k000100").is_none());
    write(&mut e, 200, 3);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    check_receipt(&e.handle().receipt(keep + 1).unwrap(), &id.service_cert);
    drop(e);
    let e = Engine::open(dir.path(), cfg(), id, secrets()).unwrap();
    assert!(e.store().state().get("records", b"k000100").is_none());
    assert!(e.store().state().get("records", b"k000201").is_some());
}

#[test]
fn rekey_encrypts_later_entries_under_the_new_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 5);
    let second = LedgerSecret::from_bytes([9u8; 32]);
    e.rekey(LedgerSecret::from_bytes([9u8; 32]));
    let from = e.last_seqno() + 1;
    write(&mut e, 5, 5);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    drop(e);
    // Without the second secret, the entries after the rekey do not authenticate: they are
    // treated as a torn tail of the in-progress chunk or refused.
    let mut both = secrets();
    both.push(from, second);
    let e = Engine::open(dir.path(), cfg(), id, both).unwrap();
    assert_eq!(e.last_seqno(), last);
    assert_eq!(
        e.handle()
            .read_transaction(from)
            .unwrap()
            .written("records", b"k000005")
            .unwrap(),
        b"PRIVATE-PLAINTEXT-5"
    );
}

#[test]
fn signature_interval_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.signature_interval_txs = 1_000_000;
    c.signature_interval = Duration::from_millis(20);
    let (mut e, _) = new_engine(dir.path(), c);
    let mut tx = e.store().begin();
    tx.put("public:t", b"k", b"v").unwrap();
    e.commit(tx, None).unwrap();
    assert!(!e.signature_due(Instant::now()));
    assert!(e.signature_due(Instant::now() + Duration::from_millis(25)));
    assert!(
        e.maybe_emit_signature(Instant::now() + Duration::from_millis(25))
            .unwrap()
            .is_some()
    );
    assert!(
        !e.signature_due(Instant::now() + Duration::from_secs(10)),
        "nothing unsigned"
    );
}

#[test]
fn empty_transactions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, _) = new_engine(dir.path(), cfg());
    let before = e.last_seqno();
    let tx = e.store().begin();
    assert!(matches!(e.commit(tx, None), Err(EngineError::Invalid(_))));
    assert_eq!(e.last_seqno(), before);
}

#[test]
fn create_refuses_an_existing_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (e, id) = new_engine(dir.path(), cfg());
    drop(e);
    assert!(
        Engine::create(
            dir.path(),
            cfg(),
            id,
            LedgerSecret::from_bytes(SECRET),
            |_| Ok(())
        )
        .is_err()
    );
}

/// A rekey transaction as a service writes it: the new secret sealed to each of `nodes`.
fn rekey_tx(e: &mut Engine, nodes: &[&Identity], secret: &[u8; 32]) -> u64 {
    let mut all = tables::LedgerSecretsForNodes::new();
    for n in nodes {
        let sealed = ccl_crypto::ecies::seal_to(
            &n.node_key.verifying_key(),
            tables::LEDGER_SECRET_ECIES_INFO,
            secret,
        )
        .unwrap();
        all.insert(
            n.node_id(),
            vec![tables::EncryptedLedgerSecret {
                version: None,
                encrypted_secret: sealed,
                previous_secret_stored_version: None,
            }],
        );
    }
    let mut tx = e.store().begin();
    tx.put(
        tables::ENCRYPTED_LEDGER_SECRETS,
        &tables::SINGLETON_KEY,
        &json(&all),
    )
    .unwrap();
    e.commit(tx, None).unwrap().seqno
}

/// A backup of the same service (its own node key, endorsed by the service).
fn backup_identity(id: &Identity) -> Identity {
    id.new_node(&[]).unwrap()
}

/// A primary and an empty backup of it, snapshotting every 20 transactions.
struct PrimaryAndBackup {
    dir: tempfile::TempDir,
    bdir: tempfile::TempDir,
    cfg: EngineConfig,
    e: Engine,
    b: Engine,
    id: Identity,
}

fn primary_and_backup() -> PrimaryAndBackup {
    let dir = tempfile::tempdir().unwrap();
    let bdir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        snapshot_interval_txs: 20,
        ..cfg()
    };
    let (e, id) = new_engine(dir.path(), cfg.clone());
    let b = Engine::open(bdir.path(), cfg.clone(), backup_identity(&id), secrets()).unwrap();
    PrimaryAndBackup {
        dir,
        bdir,
        cfg,
        e,
        b,
        id,
    }
}

/// The first seqno up to `last` whose entry writes `map` (public maps only).
fn first_seqno_writing(e: &Engine, last: u64, map: &str) -> Option<u64> {
    (1..=last).find(|s| writes(e, *s, map))
}

/// Whether the transaction at `seqno` writes to `map` (public maps).
fn writes(e: &Engine, seqno: u64, map: &str) -> bool {
    let raw = e.handle().raw_entry(seqno).unwrap();
    ccl_ledger::entry::Entry::parse(&raw)
        .unwrap()
        .0
        .public_domain()
        .unwrap()
        .map_iter()
        .any(|m| m.unwrap().name == map)
}

#[test]
fn a_backup_writes_the_same_snapshots_as_the_primary() {
    // The backup encoding on threads (the evidence may come before or after an encoding is
    // done), and at once (every encoding done before its evidence comes).
    for in_background in [true, false] {
        same_snapshots(in_background);
    }
}

fn same_snapshots(in_background: bool) {
    let PrimaryAndBackup {
        dir,
        bdir,
        cfg,
        mut e,
        b,
        id,
    } = primary_and_backup();
    drop(b);
    let bcfg = EngineConfig {
        snapshots_in_background: in_background,
        ..cfg.clone()
    };
    let mut b = Engine::open(bdir.path(), bcfg, backup_identity(&id), secrets()).unwrap();
    write(&mut e, 0, 65);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    for s in 1..=last {
        b.append_replicated(&e.handle().raw_entry(s).unwrap())
            .unwrap();
    }
    b.commit_up_to(last).unwrap();
    // A backup encodes its snapshots in the background; they are written once done.
    b.finish_snapshots().unwrap();
    let snaps = |d: &Path| -> Vec<(String, Vec<u8>)> {
        walk(&d.join(SNAPSHOTS_DIR))
            .into_iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect()
    };
    let (ps, bs) = (snaps(dir.path()), snaps(bdir.path()));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert!(
        ps.len() >= 2,
        "the primary wrote snapshots: {:?}",
        names(&ps)
    );
    assert_eq!(
        names(&ps),
        names(&bs),
        "the backup wrote the same snapshots"
    );
    for ((n, p), (_, b)) in ps.iter().zip(&bs) {
        // Same snapshot, same receipt (both replicas hold the same signatures).
        ccl_ledger::snapshot::split_snapshot_file(b).unwrap();
        assert!(p == b, "{n} differs between the primary and the backup");
    }
    // The backup restarts from its own snapshot.
    drop(b);
    let b = Engine::open(bdir.path(), cfg, backup_identity(&id), secrets()).unwrap();
    assert_eq!(b.last_seqno(), last);
}

/// [`primary_and_backup`] after 25 writes on the primary (finished: signed and synced), with
/// its last seqno and the seqno of its first snapshot evidence.
fn primary_with_a_snapshot() -> (PrimaryAndBackup, u64, u64) {
    let mut pb = primary_and_backup();
    write(&mut pb.e, 0, 25);
    let last = pb.e.finish().unwrap();
    let evidence = first_seqno_writing(&pb.e, last, tables::SNAPSHOT_EVIDENCE)
        .expect("the primary took a snapshot");
    (pb, last, evidence)
}

#[test]
fn a_backup_drops_a_snapshot_whose_evidence_is_rolled_back() {
    // Encoded on a thread (usually still running when the evidence arrives), and at once (done
    // before the evidence arrives: it is matched, then rolled back with it).
    for in_background in [true, false] {
        evidence_rolled_back(in_background);
    }
}

fn evidence_rolled_back(in_background: bool) {
    // (The primary's directory must live as long as it does.)
    let (
        PrimaryAndBackup {
            dir: _dir,
            bdir,
            e,
            b,
            cfg,
            id,
        },
        last,
        evidence,
    ) = primary_with_a_snapshot();
    drop(b);
    let cfg = EngineConfig {
        snapshots_in_background: in_background,
        ..cfg
    };
    let mut b = Engine::open(bdir.path(), cfg, backup_identity(&id), secrets()).unwrap();
    for s in 1..=evidence {
        b.append_replicated(&e.handle().raw_entry(s).unwrap())
            .unwrap();
    }
    // A new primary's log wins: the evidence is rolled back before its snapshot is written.
    b.rollback(evidence - 1).unwrap();
    b.finish_snapshots().unwrap();
    b.commit_up_to(evidence - 1).unwrap();
    b.finish_snapshots().unwrap();
    let snapshots = |d: &Path| {
        let d = d.join(SNAPSHOTS_DIR);
        if d.exists() { walk(&d).len() } else { 0 }
    };
    assert_eq!(
        snapshots(bdir.path()),
        0,
        "no snapshot for evidence that was rolled back"
    );
    // Replayed again (the same entries), the evidence gives the snapshot after all.
    for s in evidence..=last {
        b.append_replicated(&e.handle().raw_entry(s).unwrap())
            .unwrap();
    }
    b.commit_up_to(last).unwrap();
    b.finish_snapshots().unwrap();
    assert_eq!(snapshots(bdir.path()), 1);
}

#[test]
fn a_backup_refuses_signatures_by_a_node_the_service_did_not_endorse() {
    let (dir, bdir, odir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 25);
    let last = e.finish().unwrap();
    // An impostor primary: the same service certificate in its genesis, the same ledger secret,
    // but a node certificate endorsed by another service's key.
    let other = Identity::generate(&["localhost".into()]).unwrap();
    let impostor = Identity {
        service_key: id.service_key.clone(),
        service_cert: id.service_cert.clone(),
        ..other.new_node(&[]).unwrap()
    };
    let mut forged = Engine::create(
        odir.path(),
        cfg(),
        impostor,
        LedgerSecret::from_bytes(SECRET),
        |_| Ok(()),
    )
    .unwrap();
    write(&mut forged, 0, 5);
    let forged_last = forged.finish().unwrap();
    let first_sig =
        first_seqno_writing(&forged, forged_last, tables::SIGNATURES).expect("the impostor signed");

    let mut b = Engine::open(bdir.path(), cfg(), backup_identity(&id), secrets()).unwrap();
    for s in 1..first_sig {
        b.append_replicated(&forged.handle().raw_entry(s).unwrap())
            .unwrap();
    }
    let err = b
        .append_replicated(&forged.handle().raw_entry(first_sig).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not endorsed by the service"), "{err}");
    assert_eq!(b.last_seqno(), first_sig - 1, "nothing of it was applied");

    // The genuine primary's ledger replicates to a fresh backup: every signature checks out,
    // the second and later ones through the cached endorsement.
    let b2dir = tempfile::tempdir().unwrap();
    let mut b2 = Engine::open(b2dir.path(), cfg(), backup_identity(&id), secrets()).unwrap();
    for s in 1..=last {
        b2.append_replicated(&e.handle().raw_entry(s).unwrap())
            .unwrap();
    }
    assert_eq!(b2.root(), e.root());
}

#[test]
fn a_rekey_through_the_ledger_reaches_backups_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = tempfile::tempdir().unwrap();
    let (mut e, id) = new_engine(dir.path(), cfg());
    let bid = backup_identity(&id);
    let mut b = Engine::open(bdir.path(), cfg(), bid.clone(), secrets()).unwrap();
    write(&mut e, 0, 5);
    let r = rekey_tx(&mut e, &[&id, &bid], &[9u8; 32]);
    assert_eq!(
        e.ledger_secrets().for_seqno(r + 1).unwrap().raw(),
        &[9u8; 32],
        "the primary uses the new secret from the next seqno"
    );
    assert_eq!(e.ledger_secrets().for_seqno(r).unwrap().raw(), &SECRET);
    write(&mut e, 5, 5);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    for s in 1..=last {
        b.append_replicated(&e.handle().raw_entry(s).unwrap())
            .unwrap();
    }
    b.commit_up_to(last).unwrap();
    assert_eq!(
        b.handle()
            .read_transaction(r + 1)
            .unwrap()
            .written("records", b"k000005")
            .unwrap(),
        b"PRIVATE-PLAINTEXT-5"
    );
    drop(e);
    drop(b);
    // Reopened with only the first (sealed) secret: the ledger hands over the second.
    for (d, i) in [(dir.path(), &id), (bdir.path(), &bid)] {
        let e = Engine::open(d, cfg(), i.clone(), secrets()).unwrap();
        assert_eq!(e.last_seqno(), last, "nothing cut");
        assert_eq!(e.ledger_secrets().len(), 2);
        assert_eq!(
            e.store().state().get("records", b"k000009").unwrap().value,
            &b"PRIVATE-PLAINTEXT-9"[..]
        );
        check_receipt(&e.handle().receipt(r + 2).unwrap(), &id.service_cert);
    }
}

#[test]
fn a_rolled_back_rekey_takes_its_secret_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 3);
    e.emit_signature().unwrap();
    let keep = e.last_seqno();
    e.commit_up_to(keep).unwrap();
    let r = rekey_tx(&mut e, &[&id], &[9u8; 32]);
    write(&mut e, 100, 2);
    assert_eq!(e.ledger_secrets().len(), 2);
    e.rollback(keep).unwrap();
    assert_eq!(e.ledger_secrets().len(), 1);
    assert!(r > keep);
    write(&mut e, 200, 3);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    drop(e);
    let e = Engine::open(dir.path(), cfg(), id, secrets()).unwrap();
    assert_eq!(e.last_seqno(), last);
    assert_eq!(e.ledger_secrets().len(), 1);
}

#[test]
fn a_torn_tail_after_a_rekey_is_cut_at_the_first_entry_that_does_not_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.chunk_size = 1 << 20; // everything in the in-progress chunk
    let (mut e, id) = new_engine(dir.path(), c.clone());
    write(&mut e, 0, 2);
    rekey_tx(&mut e, &[&id], &[9u8; 32]);
    write(&mut e, 2, 4);
    let last = e.last_seqno();
    e.sync().unwrap();
    drop(e);
    // Scribble on the private domain of the last entry.
    let path = std::fs::read_dir(dir.path().join(LEDGER_DIR))
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .find(|p| !p.to_string_lossy().ends_with(".committed"))
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let e = Engine::open(dir.path(), c, id, secrets()).unwrap();
    assert_eq!(e.last_seqno(), last - 1, "only the scribbled entry is cut");
    assert_eq!(e.ledger_secrets().len(), 2);
}

#[test]
fn recover_private_restores_the_private_maps_of_a_public_only_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 4);
    let r = rekey_tx(&mut e, &[&id], &[9u8; 32]);
    write(&mut e, 4, 4);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    drop(e);
    // A new identity replays the public domain only, then gets the secrets back.
    let newer = Identity::generate(&[]).unwrap();
    let mut recovering = LedgerSecrets::default();
    recovering.push(last + 1, LedgerSecret::from_bytes([11u8; 32]));
    let mut p = Engine::open_public_only(dir.path(), cfg(), newer, recovering).unwrap();
    assert!(
        p.store()
            .state()
            .get("public:records", b"k000007")
            .is_some()
    );
    assert!(p.store().state().get("records", b"k000007").is_none());
    // Wrong secrets are refused.
    let mut wrong = LedgerSecrets::new(LedgerSecret::from_bytes([1u8; 32]));
    wrong.push(r + 1, LedgerSecret::from_bytes([9u8; 32]));
    assert!(p.recover_private(wrong).is_err());
    let mut old = secrets();
    old.push(r + 1, LedgerSecret::from_bytes([9u8; 32]));
    assert!(p.recover_private(old).unwrap() >= 1);
    assert_eq!(
        p.store().state().get("records", b"k000007").unwrap().value,
        &b"PRIVATE-PLAINTEXT-7"[..]
    );
    assert_eq!(
        p.handle()
            .read_transaction(r + 1)
            .unwrap()
            .written("records", b"k000004")
            .unwrap(),
        b"PRIVATE-PLAINTEXT-4"
    );
}

#[test]
fn a_snapshot_after_a_rekey_opens_with_the_secret_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 3);
    rekey_tx(&mut e, &[&id], &[9u8; 32]);
    write(&mut e, 3, 3);
    e.emit_signature().unwrap();
    e.snapshot_now().unwrap();
    write(&mut e, 6, 3);
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
    drop(e);
    assert!(latest_committed_snapshot(dir.path()).unwrap().is_some());
    let e = Engine::open(dir.path(), cfg(), id, secrets()).unwrap();
    assert_eq!(e.last_seqno(), last);
    assert_eq!(
        e.store().state().get("records", b"k000008").unwrap().value,
        &b"PRIVATE-PLAINTEXT-8"[..]
    );
}

/// Commits one transaction writing a public value under key `k{i}`.
fn one(e: &mut Engine, i: usize) {
    let mut tx = e.store().begin();
    tx.put("public:records", format!("k{i}").as_bytes(), b"v")
        .unwrap();
    e.commit(tx, None).unwrap();
}

/// Ends genesis with its signature and commits it.
fn finish_committed(e: &mut Engine) {
    let last = e.finish().unwrap();
    e.commit_up_to(last).unwrap();
}

#[test]
fn a_signature_comes_early_once_the_previous_one_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        signature_min_interval: Duration::ZERO,
        ..cfg()
    };
    let (mut e, _) = new_engine(dir.path(), cfg);
    finish_committed(&mut e);
    one(&mut e, 0);
    assert!(
        e.signature_due(Instant::now()),
        "the previous signature is committed: sign now"
    );
    e.emit_signature().unwrap();
    one(&mut e, 1);
    assert!(
        !e.signature_due(Instant::now()),
        "the previous signature is not committed yet: wait (batching)"
    );
    e.sync().unwrap();
    e.commit_up_to(e.last_seqno()).unwrap();
    assert!(e.signature_due(Instant::now()));
    // With the minimum interval at the (long) maximum, nothing is early.
    let dir = tempfile::tempdir().unwrap();
    let (mut e, _) = new_engine(dir.path(), super::tests::cfg());
    finish_committed(&mut e);
    one(&mut e, 0);
    assert!(!e.signature_due(Instant::now()));
}

/// Between the minimum interval and twice it, an early signature waits until as many
/// transactions as the previous signature covered have come (a closed loop of clients, some a
/// hop slower, then shares one signature); after twice the minimum it signs what there is.
#[test]
fn an_early_signature_waits_for_as_many_transactions_as_the_last_one_covered() {
    let dir = tempfile::tempdir().unwrap();
    let min = Duration::from_secs(10);
    let cfg = EngineConfig {
        signature_min_interval: min,
        signature_interval_txs: 1000,
        ..cfg()
    };
    let (mut e, _) = new_engine(dir.path(), cfg);
    finish_committed(&mut e);
    for i in 0..3 {
        one(&mut e, i);
    }
    e.emit_signature().unwrap(); // covers 3 transactions
    e.sync().unwrap();
    e.commit_up_to(e.last_seqno()).unwrap();
    let at = |d: Duration| Instant::now() + d;
    one(&mut e, 3);
    assert!(!e.signature_due(at(min / 2)), "before the minimum interval");
    assert!(
        !e.signature_due(at(min + min / 2)),
        "1 of the 3 transactions the last signature covered: wait"
    );
    assert!(
        e.signature_due(at(min * 2 + min / 10)),
        "twice the minimum interval: sign what there is"
    );
    one(&mut e, 4);
    one(&mut e, 5);
    assert!(
        e.signature_due(at(min + min / 2)),
        "as many as the last signature covered: sign"
    );
}

/// The primary encodes a snapshot on another thread and writes its evidence once it is done,
/// after transactions that came meanwhile (not under the engine's lock right after the
/// signature); a backup encodes its own at the same signature, by the same rule, and writes the
/// same file.
#[test]
fn snapshot_evidence_follows_later_transactions_and_backups_match_it() {
    let (
        PrimaryAndBackup {
            dir,
            bdir,
            mut e,
            mut b,
            ..
        },
        last,
        evidence,
    ) = primary_with_a_snapshot();
    e.commit_up_to(last).unwrap();
    let ev: tables::SnapshotEvidence = serde_json::from_slice(
        &e.store()
            .state()
            .get(tables::SNAPSHOT_EVIDENCE, &tables::SINGLETON_KEY)
            .unwrap()
            .value,
    )
    .unwrap();
    assert!(
        evidence > ev.version + 1,
        "the evidence at {evidence} follows transactions after the snapshot's signature {}",
        ev.version
    );
    for s in 1..=last {
        b.append_replicated(&e.handle().raw_entry(s).unwrap())
            .unwrap();
    }
    b.commit_up_to(last).unwrap();
    b.finish_snapshots().unwrap();
    let name = format!("snapshot_{}_{evidence}.committed", ev.version);
    let read = |d: &Path| std::fs::read(d.join(SNAPSHOTS_DIR).join(&name)).unwrap();
    assert!(
        read(dir.path()) == read(bdir.path()),
        "{name} is the same on both"
    );
}

#[test]
fn a_signature_check_left_to_the_caller_fails_for_a_wrong_key_and_its_entry_rolls_back() {
    let (dir, odir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut e, id) = new_engine(dir.path(), cfg());
    write(&mut e, 0, 5);
    let last = e.finish().unwrap();
    // A primary whose certificate the service endorsed, signing with another key.
    let wrong = Identity {
        node_key: ccl_crypto::SigningKey::generate(ccl_crypto::Curve::P384).unwrap(),
        ..id.clone()
    };
    let mut forged = Engine::create(
        odir.path(),
        cfg(),
        wrong,
        LedgerSecret::from_bytes(SECRET),
        |_| Ok(()),
    )
    .unwrap();
    write(&mut forged, 0, 5);
    let forged_last = forged.finish().unwrap();
    let sig = first_seqno_writing(&forged, forged_last, tables::SIGNATURES).expect("it signed");
    let raw = |e: &Engine, s: u64| e.handle().raw_entry(s).unwrap();

    // Checked at once: refused, nothing applied.
    let bdir = tempfile::tempdir().unwrap();
    let mut b = Engine::open(bdir.path(), cfg(), backup_identity(&id), secrets()).unwrap();
    for s in 1..sig {
        b.append_replicated(&raw(&forged, s)).unwrap();
    }
    let root = b.root();
    let err = b.append_replicated(&raw(&forged, sig)).unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
    assert_eq!(b.last_seqno(), sig - 1);

    // Left to the caller: applied, its check fails, and rolling it back restores the state.
    let (txid, check) = b.append_replicated_unverified(&raw(&forged, sig)).unwrap();
    assert_eq!(txid.seqno, sig);
    assert_eq!(b.last_seqno(), sig);
    let check = check.expect("a signature transaction comes with its check");
    assert_eq!(check.txid(), txid);
    let err = check.verify().unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
    b.rollback(sig - 1).unwrap();
    assert_eq!((b.last_seqno(), b.root()), (sig - 1, root));

    // The genuine primary's signatures: each comes with a check that passes; other entries
    // with none.
    let b2dir = tempfile::tempdir().unwrap();
    let mut b2 = Engine::open(b2dir.path(), cfg(), backup_identity(&id), secrets()).unwrap();
    let mut checked = 0;
    for s in 1..=last {
        let (_, check) = b2.append_replicated_unverified(&raw(&e, s)).unwrap();
        if let Some(c) = check {
            c.verify().unwrap();
            checked += 1;
        }
    }
    let signatures = (1..=last)
        .filter(|s| writes(&e, *s, tables::SIGNATURES))
        .count();
    assert!(checked >= 1);
    assert_eq!(checked, signatures);
    assert_eq!(b2.root(), e.root());
}

/// An early signature waits the whole minimum interval only once it covers
/// `SIGNATURE_FULL_TXS` transactions; a lone transaction waits 1/64 of it. A minimum interval
/// of at least the regular one still means no early signature at all.
#[test]
fn an_early_signature_covering_few_transactions_waits_that_share_of_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let min = Duration::from_secs(64);
    let cfg = EngineConfig {
        signature_min_interval: min,
        signature_interval: Duration::from_secs(3600),
        signature_interval_txs: 1000,
        ..cfg()
    };
    let (mut e, _) = new_engine(dir.path(), cfg.clone());
    finish_committed(&mut e);
    let at = |d: Duration| Instant::now() + d;
    one(&mut e, 0);
    assert!(
        !e.signature_due(at(Duration::from_millis(900))),
        "under 1/64 of it"
    );
    assert!(
        e.signature_due(at(Duration::from_millis(1100))),
        "one transaction: 1/64"
    );
    for i in 1..32 {
        one(&mut e, i);
    }
    assert!(
        !e.signature_due(at(Duration::from_secs(31))),
        "32 transactions: half"
    );
    assert!(e.signature_due(at(Duration::from_secs(33))));
    for i in 32..200 {
        one(&mut e, i);
    }
    assert!(
        !e.signature_due(at(Duration::from_secs(63))),
        "64 or more: the whole"
    );
    assert!(e.signature_due(at(Duration::from_secs(65))));

    // The minimum at the regular interval: never early, however few transactions.
    let dir = tempfile::tempdir().unwrap();
    let (mut e, _) = new_engine(
        dir.path(),
        EngineConfig {
            signature_interval: min,
            ..cfg
        },
    );
    finish_committed(&mut e);
    one(&mut e, 0);
    assert!(!e.signature_due(at(min / 2)));
    assert!(e.signature_due(at(min + Duration::from_secs(1))));
}
