use super::*;
use proptest::prelude::*;
use proptest::sample::Index;

fn op(key: u64, kind: OpKind, call: u64, ret: Option<u64>) -> Op {
    Op {
        client: call,
        key,
        kind,
        call,
        ret,
    }
}
fn w(v: u64, call: u64, ret: u64) -> Op {
    op(0, OpKind::Write(v), call, Some(ret))
}
fn r(v: Option<u64>, call: u64, ret: u64) -> Op {
    op(0, OpKind::Read(v), call, Some(ret))
}
fn cas(expected: Option<u64>, new: u64, ok: bool, call: u64, ret: u64) -> Op {
    op(0, OpKind::Cas { expected, new, ok }, call, Some(ret))
}
fn pending(kind: OpKind, call: u64) -> Op {
    op(0, kind, call, None)
}
fn on_key(key: u64, o: Op) -> Op {
    Op { key, ..o }
}

/// The history must be rejected as not linearizable (by the search), with `stuck` containing
/// `history[stuck_index]`.
fn assert_stuck_on(history: &[Op], stuck_index: usize) -> Violation {
    let v = check(history).unwrap_err();
    match &v {
        Violation::NotLinearizable { stuck, .. } => assert!(
            stuck
                .iter()
                .any(|&(i, o)| i == stuck_index && o == history[i]),
            "{v}"
        ),
        other => panic!("expected NotLinearizable, got {other:?}"),
    }
    v
}

#[test]
fn sequential_history_is_linearizable() {
    let h = [
        r(None, 0, 1),
        w(1, 2, 3),
        r(Some(1), 4, 5),
        w(2, 6, 7),
        r(Some(2), 8, 9),
        w(2, 10, 11),
        r(Some(2), 12, 13),
    ];
    assert_eq!(check(&h), Ok(()));
    // The order of the history does not matter.
    let mut rev = h;
    rev.reverse();
    assert_eq!(check(&rev), Ok(()));
    assert_eq!(check(&[]), Ok(()));
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    assert_eq!(check(&[w(1, 0, 10), r(None, 2, 3)]), Ok(()));
    assert_eq!(check(&[w(1, 0, 10), r(Some(1), 2, 3)]), Ok(()));
    // The read spans the write.
    assert_eq!(check(&[w(1, 2, 3), r(None, 0, 10)]), Ok(()));
    assert_eq!(check(&[w(1, 2, 3), r(Some(1), 0, 10)]), Ok(()));
    // Touching intervals are concurrent.
    assert_eq!(check(&[w(1, 0, 5), r(None, 5, 6)]), Ok(()));
    // Two concurrent writes, then reads: the last one in either order.
    assert_eq!(
        check(&[w(1, 0, 10), w(2, 1, 9), r(Some(1), 11, 12)]),
        Ok(())
    );
    assert_eq!(
        check(&[w(1, 0, 10), w(2, 1, 9), r(Some(2), 11, 12)]),
        Ok(())
    );
}

#[test]
fn a_stale_read_after_a_completed_write_is_a_violation() {
    let h = [w(1, 0, 1), r(None, 2, 3)];
    let v = assert_stuck_on(&h, 1);
    assert_eq!(
        v,
        Violation::NotLinearizable {
            key: 0,
            prefix_len: 1,
            prefix_tail: vec![(0, h[0])],
            value: Some(1),
            stuck: vec![(1, h[1])],
        }
    );
    let text = v.to_string();
    assert!(
        text.contains("key 0") && text.contains("#1") && text.contains("read none"),
        "{text}"
    );

    // Overwritten value read after the overwrite completed.
    let h = [w(1, 0, 1), w(2, 2, 3), r(Some(1), 4, 5)];
    assert_stuck_on(&h, 2);
}

#[test]
fn a_read_of_a_value_never_written_is_a_violation() {
    let h = [w(1, 0, 1), r(Some(7), 2, 3)];
    assert_eq!(
        check(&h),
        Err(Violation::UnwrittenValue {
            key: 0,
            index: 1,
            op: h[1]
        })
    );
    // A value written only after the read returned is as bad.
    let h = [r(Some(1), 0, 1), w(1, 2, 3)];
    assert!(matches!(
        check(&h),
        Err(Violation::UnwrittenValue { index: 0, .. })
    ));
    // ... even if the write never returned.
    let h = [r(Some(1), 0, 1), pending(OpKind::Write(1), 2)];
    assert!(matches!(
        check(&h),
        Err(Violation::UnwrittenValue { index: 0, .. })
    ));
}

#[test]
fn a_pending_write_may_take_effect_at_any_time_after_its_call() {
    // Observed later.
    let h = [pending(OpKind::Write(5), 0), r(Some(5), 10, 11)];
    assert_eq!(check(&h), Ok(()));
    // Not yet, then observed.
    let h = [
        pending(OpKind::Write(5), 0),
        r(None, 10, 11),
        r(Some(5), 12, 13),
    ];
    assert_eq!(check(&h), Ok(()));
    // Never observed.
    let h = [w(1, 0, 1), pending(OpKind::Write(5), 2), r(Some(1), 10, 11)];
    assert_eq!(check(&h), Ok(()));
    // Observed, then overwritten, then observed again: it took effect once only.
    let h = [
        pending(OpKind::Write(5), 0),
        r(Some(5), 10, 11),
        w(6, 12, 13),
        r(Some(5), 14, 15),
    ];
    assert_stuck_on(&h, 3);
    // A pending write needed by a pending CAS, whose result is needed by a read.
    let h = [
        pending(OpKind::Write(1), 0),
        pending(
            OpKind::Cas {
                expected: Some(1),
                new: 0,
                ok: true,
            },
            0,
        ),
        r(Some(0), 68, 68),
    ];
    assert_eq!(check(&h), Ok(()));
    // A pending read observed nothing.
    let h = [w(1, 0, 1), pending(OpKind::Read(Some(99)), 2)];
    assert_eq!(check(&h), Ok(()));
}

#[test]
fn reads_observing_new_then_old_value_are_a_violation() {
    // Classic new-old inversion: a write is in flight, a read sees it, a later read does not.
    let h = [w(1, 0, 10), r(Some(1), 1, 2), r(None, 3, 4)];
    let v = assert_stuck_on(&h, 2);
    assert!(matches!(
        v,
        Violation::NotLinearizable { value: Some(1), .. }
    ));
    // Old then new is fine.
    let h = [w(1, 0, 10), r(None, 1, 2), r(Some(1), 3, 4)];
    assert_eq!(check(&h), Ok(()));
    // Same with two writes and a pending one.
    let h = [
        w(1, 0, 1),
        pending(OpKind::Write(2), 2),
        r(Some(2), 3, 4),
        r(Some(1), 5, 6),
    ];
    assert_stuck_on(&h, 3);
}

#[test]
fn compare_and_swap() {
    let h = [
        cas(None, 1, true, 0, 1),
        cas(None, 2, false, 2, 3),
        cas(Some(1), 3, true, 4, 5),
        r(Some(3), 6, 7),
    ];
    assert_eq!(check(&h), Ok(()));
    // A CAS that succeeded on a value the register no longer held.
    let h = [w(1, 0, 1), w(2, 2, 3), cas(Some(1), 3, true, 4, 5)];
    assert_stuck_on(&h, 2);
    // A CAS that failed although the register held the expected value.
    let h = [w(1, 0, 1), cas(Some(1), 3, false, 2, 3)];
    assert_stuck_on(&h, 1);
    // Two concurrent CASes from the same value cannot both succeed.
    let h = [
        w(1, 0, 1),
        cas(Some(1), 2, true, 2, 10),
        cas(Some(1), 3, true, 3, 9),
    ];
    assert!(matches!(check(&h), Err(Violation::NotLinearizable { .. })));
    // A pending CAS may have succeeded (its `ok` is unknown)...
    let h = [
        w(1, 0, 1),
        pending(
            OpKind::Cas {
                expected: Some(1),
                new: 2,
                ok: false,
            },
            2,
        ),
        r(Some(2), 3, 4),
    ];
    assert_eq!(check(&h), Ok(()));
    // ... but only from the expected value.
    let h = [
        w(1, 0, 1),
        pending(
            OpKind::Cas {
                expected: Some(7),
                new: 2,
                ok: true,
            },
            2,
        ),
        r(Some(2), 3, 4),
    ];
    assert_stuck_on(&h, 2);
    // A CAS "from 5 to 5" does not produce 5.
    let h = [cas(Some(5), 5, true, 0, 1)];
    assert!(matches!(
        check(&h),
        Err(Violation::UnwrittenValue { index: 0, .. })
    ));
}

#[test]
fn keys_are_independent_registers() {
    let h = [
        on_key(1, w(1, 0, 1)),
        on_key(2, r(None, 2, 3)),
        on_key(2, w(7, 4, 5)),
        on_key(1, r(Some(1), 6, 7)),
        on_key(2, r(Some(7), 6, 7)),
    ];
    assert_eq!(check(&h), Ok(()));
    let h = [
        on_key(1, w(1, 0, 1)),
        on_key(2, w(1, 0, 1)),
        on_key(2, r(Some(1), 2, 3)),
        on_key(3, r(Some(1), 2, 3)),
    ];
    assert_eq!(
        check(&h),
        Err(Violation::UnwrittenValue {
            key: 3,
            index: 3,
            op: h[3]
        })
    );
}

#[test]
fn a_response_before_the_call_is_malformed() {
    let h = [w(1, 0, 1), w(2, 5, 4)];
    assert_eq!(check(&h), Err(Violation::Malformed { index: 1, op: h[1] }));
    assert!(!check(&h).unwrap_err().is_inconclusive());
}

#[test]
fn too_many_ops_on_a_key_is_inconclusive() {
    let h: Vec<Op> = (0..=MAX_OPS_PER_KEY as u64)
        .map(|i| on_key(4, w(i, 2 * i, 2 * i + 1)))
        .collect();
    let v = check(&h).unwrap_err();
    assert_eq!(
        v,
        Violation::TooLarge {
            key: 4,
            ops: MAX_OPS_PER_KEY + 1
        }
    );
    assert!(v.is_inconclusive());
    assert_eq!(check(&h[..MAX_OPS_PER_KEY]), Ok(()));
}

/// Two written values, then 30 concurrent pending writes (kept in the search by a failed CAS),
/// then a read of the overwritten first value: not linearizable, but proving it means trying
/// every subset of the pending writes.
fn exponential_history() -> Vec<Op> {
    let mut h = vec![cas(Some(99), 0, false, 0, 1), w(1, 2, 3), w(2, 4, 5)];
    h.extend((10..40).map(|v| pending(OpKind::Write(v), 6)));
    h.push(r(Some(1), 100, 101));
    h
}

#[test]
fn the_search_budget_makes_hard_histories_inconclusive() {
    let h = exponential_history();
    let v = check_with_budget(&h, 10_000).unwrap_err();
    assert_eq!(
        v,
        Violation::BudgetExhausted {
            key: 0,
            steps: 10_000
        }
    );
    assert!(v.is_inconclusive());
    assert!(v.to_string().contains("inconclusive"));
    // A definite violation on another key wins over an inconclusive one.
    let mut h2 = h.clone();
    h2.extend([on_key(1, w(1, 0, 1)), on_key(1, r(None, 2, 3))]);
    assert!(matches!(
        check_with_budget(&h2, 10_000),
        Err(Violation::NotLinearizable { key: 1, .. })
    ));
    // Without the failed CAS the unobserved pending writes are dropped and the answer is quick.
    assert!(matches!(
        check_with_budget(&h[1..], 10_000),
        Err(Violation::NotLinearizable { key: 0, .. })
    ));
}

#[test]
fn memoization_bounds_the_search() {
    // Eight concurrent writes, then reads of two of their values in an impossible order: every
    // order of the writes must be refuted. Memoized, that is 2^8 sets times 9 values; without the
    // memo it would be every one of the 8! orders.
    let mut h: Vec<Op> = (1..=8).map(|v| w(v, 0, 100)).collect();
    h.extend([r(Some(1), 101, 102), r(Some(2), 103, 104)]);
    assert!(matches!(
        check_with_budget(&h, 50_000),
        Err(Violation::NotLinearizable {
            prefix_len: 9,
            value: Some(1),
            ..
        })
    ));
}

#[test]
fn long_low_concurrency_histories_are_cheap() {
    // 30 000 ops, each write overlapping its neighbours, with pending writes (some observed):
    // well within a small budget, as memory and time follow the concurrency, not the length.
    let mut h = Vec::new();
    for i in 0..10_000u64 {
        let t = 10 * i;
        h.push(w(i, t, t + 12));
        h.push(r(Some(i), t + 11, t + 13));
        if i % 1000 == 0 {
            h.push(pending(OpKind::Write(1_000_000 + i), t));
        }
        if i % 2000 == 0 {
            // Observes the pending write issued this round, which must take effect after w(i).
            h.push(r(Some(1_000_000 + i), t + 11, t + 14));
            h.push(r(Some(1_000_000 + i), t + 15, t + 16));
        }
    }
    assert_eq!(check_with_budget(&h, 500_000), Ok(()));
}

// ---- Property tests ----

/// One op to generate: what it does, its interval, and where in it it takes effect.
#[derive(Debug, Clone)]
struct Planned {
    key: u64,
    kind: u8,
    value: u64,
    cas_from_current: bool,
    cas_from: Option<u64>,
    call: u64,
    dur: u64,
    at: u64,
    pending: bool,
    took_effect: bool,
}

fn planned(max_dur: u64) -> impl Strategy<Value = Planned> {
    (
        (
            0u64..3,
            0u8..3,
            0u64..4,
            any::<bool>(),
            proptest::option::of(0u64..4),
        ),
        (0u64..200, 0..=max_dur, any::<u64>()),
        (prop::bool::weighted(0.1), any::<bool>()),
    )
        .prop_map(
            |(
                (key, kind, value, cas_from_current, cas_from),
                (call, dur, at),
                (pending, took_effect),
            )| Planned {
                key,
                kind,
                value,
                cas_from_current,
                cas_from,
                call,
                dur,
                at: at % (dur + 1),
                pending,
                took_effect,
            },
        )
}

/// Runs the planned ops against a sequential key-value register, each at its point (inside its
/// interval), and returns the history the clients observed.
fn execute(plan: &[Planned]) -> Vec<Op> {
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| (plan[i].call + plan[i].at, i));
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut history = vec![None; plan.len()];
    for i in order {
        let p = &plan[i];
        let current = model.get(&p.key).copied();
        let effect = !p.pending || p.took_effect;
        let kind = match p.kind {
            0 => {
                if effect {
                    model.insert(p.key, p.value);
                }
                OpKind::Write(p.value)
            }
            1 => OpKind::Read(if effect { current } else { None }),
            _ => {
                let expected = if p.cas_from_current {
                    current
                } else {
                    p.cas_from
                };
                let ok = expected == current;
                if ok && effect {
                    model.insert(p.key, p.value);
                }
                OpKind::Cas {
                    expected,
                    new: p.value,
                    ok,
                }
            }
        };
        history[i] = Some(Op {
            client: i as u64,
            key: p.key,
            kind,
            call: p.call,
            ret: (!p.pending).then_some(p.call + p.dur),
        });
    }
    history.into_iter().flatten().collect()
}

fn histories() -> impl Strategy<Value = Vec<Op>> {
    prop_oneof![Just(0u64), Just(3), Just(20), Just(200)]
        .prop_flat_map(|max_dur| prop::collection::vec(planned(max_dur), 1..40))
        .prop_map(|plan| execute(&plan))
}

/// Whether some order of the completed ops and of some of the pending ones respects real time and
/// is a legal register run: a naive search over all orders, for tiny single-key histories.
fn brute_force(ops: &[Op]) -> bool {
    fn go(ops: &[Op], placed: &mut Vec<usize>, state: Option<u64>) -> bool {
        let all_done_placed = (0..ops.len()).all(|i| ops[i].ret.is_none() || placed.contains(&i));
        if all_done_placed {
            return true;
        }
        for b in 0..ops.len() {
            if placed.contains(&b) {
                continue;
            }
            // `b` may not come after an op it precedes in real time.
            if placed
                .iter()
                .any(|&a| ops[b].ret.is_some_and(|ret| ret < ops[a].call))
            {
                continue;
            }
            let next = match ops[b].kind {
                OpKind::Write(v) => Some(Some(v)),
                OpKind::Read(seen) => (ops[b].ret.is_none() || seen == state).then_some(state),
                OpKind::Cas { expected, new, ok } => {
                    if ok || ops[b].ret.is_none() {
                        (state == expected).then_some(Some(new))
                    } else {
                        (state != expected).then_some(state)
                    }
                }
            };
            if let Some(next) = next {
                placed.push(b);
                if go(ops, placed, next) {
                    return true;
                }
                placed.pop();
            }
        }
        false
    }
    go(ops, &mut Vec::new(), None)
}

fn tiny_histories() -> impl Strategy<Value = Vec<Op>> {
    let value = proptest::option::of(0u64..3);
    let kind = prop_oneof![
        (0u64..3).prop_map(OpKind::Write),
        value.clone().prop_map(OpKind::Read),
        (value, 0u64..3, any::<bool>()).prop_map(|(expected, new, ok)| OpKind::Cas {
            expected,
            new,
            ok
        }),
    ];
    let one = (kind, 0u64..8, 0u64..6, prop::bool::weighted(0.2)).prop_map(
        |(kind, call, dur, pending)| Op {
            client: 0,
            key: 0,
            kind,
            call,
            ret: (!pending).then_some(call + dur),
        },
    );
    prop::collection::vec(one, 1..=6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn histories_of_a_real_register_are_accepted(history in histories()) {
        prop_assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn a_read_of_a_value_never_written_is_rejected(history in histories(), pick in any::<Index>()) {
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].ret.is_some() && matches!(history[i].kind, OpKind::Read(_)))
            .collect();
        let mut history = history;
        if reads.is_empty() {
            // No read to corrupt: add a corrupt one.
            history.push(Op { client: 9, key: 0, kind: OpKind::Read(Some(1_000)), call: 0, ret: Some(500) });
        } else {
            let i = reads[pick.index(reads.len())];
            history[i].kind = OpKind::Read(Some(1_000));
        }
        let result = check(&history);
        prop_assert!(
            matches!(&result, Err(v) if !v.is_inconclusive()),
            "{:?}", result
        );
    }

    #[test]
    fn agrees_with_a_brute_force_search(history in tiny_histories()) {
        let result = check(&history);
        prop_assert!(!matches!(&result, Err(v) if v.is_inconclusive()), "{:?}", result);
        prop_assert_eq!(result.is_ok(), brute_force(&history), "{:?}", result);
    }
}
