use super::*;
use proptest::prelude::*;

/// One write of a generated write set: map, key, value (`None`: a removal).
type WriteOp = (String, Vec<u8>, Option<Vec<u8>>);

fn put(s: &Store, map: &str, k: &str, v: &str) -> u64 {
    let mut tx = s.begin();
    tx.put(map, k.as_bytes(), v.as_bytes()).unwrap();
    s.commit(tx).unwrap().0
}

#[test]
fn read_your_writes_and_snapshots() {
    let s = Store::new();
    assert_eq!(put(&s, "m", "a", "1"), 1);
    let mut t1 = s.begin();
    put(&s, "m", "a", "2");
    // t1 still sees its snapshot.
    assert_eq!(t1.get("m", b"a").unwrap(), &b"1"[..]);
    t1.put("m", b"b", b"x").unwrap();
    assert_eq!(t1.get("m", b"b").unwrap(), &b"x"[..]);
    t1.remove("m", b"a").unwrap();
    assert_eq!(t1.get("m", b"a"), None);
    // ...and conflicts, because what it read changed.
    assert!(matches!(s.commit(t1), Err(TxError::Conflict(_))));
    assert_eq!(s.state().get("m", b"a").unwrap().value, &b"2"[..]);
    assert_eq!(s.version(), 2);
}

#[test]
fn blind_writes_do_not_conflict() {
    let s = Store::new();
    let mut t1 = s.begin();
    let mut t2 = s.begin();
    t1.put("m", b"k", b"1").unwrap();
    t2.put("m", b"k", b"2").unwrap();
    assert_eq!(s.commit(t1).unwrap().0, 1);
    assert_eq!(s.commit(t2).unwrap().0, 2);
    assert_eq!(
        s.state().get("m", b"k").unwrap(),
        &Versioned {
            version: 2,
            value: Bytes::from_static(b"2")
        }
    );
}

#[test]
fn ranges_merge_own_writes_and_detect_phantoms() {
    let s = Store::new();
    for k in ["a", "c", "e", "g"] {
        put(&s, "m", k, k);
    }
    let mut t = s.begin();
    t.put("m", b"b", b"B").unwrap();
    t.remove("m", b"c").unwrap();
    t.put("m", b"e", b"E").unwrap();
    let got: Vec<_> = t
        .range("m", (Bound::Included(b"a"), Bound::Excluded(b"g")), 10)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".into(), "a".into()),
            ("b".into(), "B".into()),
            ("e".into(), "E".into())
        ]
    );
    // A phantom inserted inside the scanned range makes the commit fail...
    put(&s, "m", "d", "d");
    assert!(matches!(s.commit(t), Err(TxError::Conflict(_))));
    // ...but a write outside the covered part (beyond the limit) does not.
    let mut t = s.begin();
    let page = t.range("m", (Bound::Unbounded, Bound::Unbounded), 2);
    assert_eq!(page.len(), 2);
    t.put("other", b"x", b"y").unwrap();
    put(&s, "m", "z", "z");
    s.commit(t).unwrap();
}

#[test]
fn rollback_restores_uncommitted_states() {
    let s = Store::new();
    for i in 0..10 {
        put(&s, "m", &format!("k{i}"), "v");
    }
    s.compact(4);
    assert!(s.state_at(3).is_none());
    assert_eq!(s.state_at(6).unwrap().version(), 6);
    s.rollback(6).unwrap();
    assert_eq!(s.version(), 6);
    assert!(s.state().get("m", b"k6").is_none());
    assert!(s.state().get("m", b"k5").is_some());
    assert!(s.rollback(2).is_err());
    assert_eq!(put(&s, "m", "k6", "w"), 7);
}

#[test]
fn limits_and_bad_names_are_refused() {
    let s = Store::new();
    let mut t = s.begin();
    assert!(matches!(
        t.put("m", &vec![0; MAX_KEY_SIZE + 1], b""),
        Err(TxError::TooLarge { .. })
    ));
    assert!(matches!(
        t.put("m", b"k", &vec![0; MAX_VALUE_SIZE + 1]),
        Err(TxError::TooLarge { .. })
    ));
    assert!(matches!(t.put("", b"k", b"v"), Err(TxError::BadMapName(_))));
    assert!(matches!(
        t.put("a\nb", b"k", b"v"),
        Err(TxError::BadMapName(_))
    ));
    assert!(!t.has_writes());
}

#[test]
fn write_sets_split_public_and_private_by_name() {
    let s = Store::new();
    let mut t = s.begin();
    t.put("public:p", b"k", b"v").unwrap();
    t.put("secret", b"k", b"v").unwrap();
    t.remove("secret", b"old").unwrap();
    let (_, ws) = s.commit(t).unwrap();
    let mw = ws.map_writes();
    assert_eq!(mw.len(), 2);
    let secret = mw.iter().find(|m| m.name == "secret").unwrap();
    assert_eq!(secret.writes, vec![(&b"k"[..], &b"v"[..])]);
    assert_eq!(secret.removes, vec![&b"old"[..]]);
}

/// A transaction program: reads some keys (and a range sum) and writes a function of what it
/// read. Executing the committed programs one after another in commit order must reproduce every
/// read and the final state exactly: the concurrent history is serializable.
#[derive(Clone, Debug)]
struct Program {
    reads: Vec<u8>,
    range: Option<(u8, u8)>,
    writes: Vec<u8>,
    salt: u8,
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k]
}

fn run(p: &Program, tx: &mut Tx) -> Vec<Option<Bytes>> {
    let mut seen = Vec::new();
    let mut acc = u64::from(p.salt);
    for r in &p.reads {
        let v = tx.get("m", &key(*r));
        acc = acc
            .wrapping_mul(31)
            .wrapping_add(v.as_ref().map_or(7, |v| v.len() as u64 + u64::from(v[0])));
        seen.push(v);
    }
    if let Some((a, b)) = p.range {
        let (lo, hi) = (a.min(b), a.max(b));
        for (k, v) in tx.range(
            "m",
            (Bound::Included(&key(lo)[..]), Bound::Included(&key(hi)[..])),
            1000,
        ) {
            acc = acc
                .wrapping_mul(17)
                .wrapping_add(u64::from(k[1]) + v.len() as u64);
            seen.push(Some(v));
        }
    }
    for w in &p.writes {
        if acc % 5 == 0 {
            tx.remove("m", &key(*w)).unwrap();
        } else {
            tx.put("m", &key(*w), acc.to_le_bytes().as_slice()).unwrap();
        }
        acc = acc.rotate_left(7);
    }
    seen
}

fn program() -> impl Strategy<Value = Program> {
    (
        proptest::collection::vec(0u8..8, 0..4),
        proptest::option::of((0u8..8, 0u8..8)),
        proptest::collection::vec(0u8..8, 1..3),
        any::<u8>(),
    )
        .prop_map(|(reads, range, writes, salt)| Program {
            reads,
            range,
            writes,
            salt,
        })
}

proptest! {
    #[test]
    fn concurrent_conflicting_transactions_are_serializable(
        programs in proptest::collection::vec(program(), 1..40),
        schedule in proptest::collection::vec(any::<u16>(), 40),
    ) {
        let s = Store::new();
        // Up to 4 transactions in flight; each step either begins the next program or commits one
        // in flight (chosen by the schedule).
        let mut pending = programs.iter().cloned().enumerate();
        let mut in_flight: Vec<(usize, Tx, Vec<Option<Bytes>>)> = Vec::new();
        let mut committed: Vec<(u64, usize, Vec<Option<Bytes>>)> = Vec::new();
        let mut step = 0;
        loop {
            let choice = schedule[step % schedule.len()] as usize;
            step += 1;
            let begin = in_flight.len() < 4 && (!choice.is_multiple_of(3) || in_flight.is_empty());
            if begin
                && let Some((i, p)) = pending.next() {
                    let mut tx = s.begin();
                    let seen = run(&p, &mut tx);
                    in_flight.push((i, tx, seen));
                    continue;
                }
            if in_flight.is_empty() {
                break;
            }
            let (i, tx, seen) = in_flight.swap_remove(choice % in_flight.len());
            if let Ok((v, _)) = s.commit(tx) {
                committed.push((v, i, seen));
            }
        }
        // Serial replay in commit order.
        let serial = Store::new();
        committed.sort_by_key(|c| c.0);
        for (v, i, seen) in &committed {
            let mut tx = serial.begin();
            let again = run(&programs[*i], &mut tx);
            prop_assert_eq!(&again, seen, "program {} read different values serially", i);
            prop_assert_eq!(serial.commit(tx).unwrap().0, *v);
        }
        let a: Vec<_> = s.state().map("m").map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        let b: Vec<_> = serial.state().map("m").map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        prop_assert_eq!(a, b);
    }
}

fn state_eq(a: &State, b: &State) -> bool {
    a.version() == b.version()
        && a.maps().count() == b.maps().count()
        && a.maps().zip(b.maps()).all(|((n1, m1), (n2, m2))| {
            n1 == n2 && m1.last_write() == m2.last_write() && m1.iter().eq(m2.iter())
        })
}

proptest! {
    /// Undo logs: the state at, and the rollback to, any version of the uncommitted window equal
    /// the state rebuilt from scratch.
    #[test]
    fn rollback_and_state_at_equal_replay(
        steps in proptest::collection::vec(proptest::collection::vec((0u8..3, 0u8..6, proptest::option::of(0u8..4)), 1..4), 1..25),
        committed in any::<prop::sample::Index>(),
        target in any::<prop::sample::Index>(),
    ) {
        let maps = ["public:a", "b", "c"];
        let write_sets: Vec<Vec<WriteOp>> = steps
            .iter()
            .map(|ws| ws.iter().map(|(m, k, v)| (maps[*m as usize].to_string(), vec![*k], v.map(|v| vec![v; 3]))).collect())
            .collect();
        let replay = |n: usize| {
            let s = Store::new();
            for ws in &write_sets[..n] {
                let mut tx = s.begin();
                for (m, k, v) in ws {
                    match v { Some(v) => tx.put(m, k, v).unwrap(), None => tx.remove(m, k).unwrap() }
                }
                s.commit(tx).unwrap();
            }
            s
        };
        let n = write_sets.len();
        let store = replay(n);
        let c = committed.index(n + 1);
        store.compact(c as u64);
        let t = target.index(n + 1);
        let expected = replay(t).state();
        match store.state_at(t as u64) {
            Some(s) => prop_assert!(state_eq(&s, &expected)),
            None => prop_assert!(t < c),
        }
        let r = store.rollback(t as u64);
        if t < c {
            prop_assert!(r.is_err());
        } else {
            r.unwrap();
            prop_assert!(state_eq(&store.state(), &expected));
        }
    }
}
