//! Linearizability checker for histories of a key-value store whose keys are registers (write,
//! read, compare-and-swap), used by ccl's deterministic Raft simulation and multi-process cluster
//! tests. Pure: std only, no I/O.
//!
//! # Model
//!
//! A history is a set of [`Op`]s, each with an invocation time `call` and a response time `ret`
//! (logical or simulated clocks: only their order matters). Op `a` precedes op `b` in real time iff
//! `a.ret < b.call`; ops whose intervals touch (`a.ret == b.call`) are concurrent. The history is
//! linearizable iff the ops can be put in one sequence that respects real-time precedence and is a
//! legal run of the registers, every key starting out never written (`None`).
//!
//! An op that never returned (`ret: None`; the client timed out or crashed) may or may not have
//! taken effect, at any time after its call: it may be linearized anywhere after `call`, or left
//! out. What it observed is unknown, so a pending read is ignored and a pending CAS is treated as
//! "may have succeeded" (its `ok` is ignored).
//!
//! # Algorithm
//!
//! Keys are independent registers, and linearizability is compositional (Herlihy & Wing), so the
//! history is partitioned by key and each key is checked on its own (P-compositionality, as in
//! Porcupine). Per key:
//!
//! 1. A linear pre-check rejects an op that observed a value (a read, or the expected value of a
//!    successful CAS) that no write of that key invoked before the op returned could have produced;
//!    its witness is that op.
//! 2. Pending writes (and CASes) of a value that nothing observes (no completed read or successful
//!    CAS saw it, no pending CAS expects it) are dropped when the key has no failed CAS:
//!    linearizing such a write only puts in the register a value that no later op can use, so
//!    leaving it out never hurts. This keeps crashed clients from blowing up the search.
//! 3. The Wing & Gong / Lowe ("WGL") depth-first search, with Lowe's memoization as in Porcupine
//!    and knossos: a search state is (set of linearized ops, register value); from a state, any
//!    unlinearized op whose call is not after the earliest return of an unlinearized completed op
//!    may be linearized next if it is legal for the register value. A state already seen is not
//!    explored again. The search succeeds once every completed op is linearized (pending ops may
//!    be left out). The set is stored relative to the first unlinearized op, so memory follows the
//!    history's concurrency, not its length.
//!
//! When the search fails, the [`Violation`] gives the deepest partial linearization found (its
//! last ops), the register value it leaves, and the ops that could come next but none of which is
//! legal for that value.
//!
//! # Limits
//!
//! Checking linearizability is NP-complete, so the search is bounded: a key with more than
//! [`MAX_OPS_PER_KEY`] ops, or whose search tries more than [`MAX_STEPS_PER_KEY`] transitions or
//! fills its memo past [`MAX_MEMO_BYTES_PER_KEY`], yields an inconclusive [`Violation::TooLarge`]
//! or [`Violation::BudgetExhausted`] ([`Violation::is_inconclusive`]) rather than running for ever
//! or exhausting memory. A definite violation on any key is reported in preference to an
//! inconclusive result on another.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Most ops one key may have in a history (`check` returns [`Violation::TooLarge`] beyond).
pub const MAX_OPS_PER_KEY: usize = 1 << 16;
/// Most transitions the search tries for one key (`check` returns
/// [`Violation::BudgetExhausted`] beyond). A history of low concurrency needs a few per op.
pub const MAX_STEPS_PER_KEY: u64 = 2_000_000;
/// Most memory (approximately) the search of one key may use to remember the states it explored
/// (`check` returns [`Violation::BudgetExhausted`] beyond).
pub const MAX_MEMO_BYTES_PER_KEY: usize = 256 << 20;
/// Most ops of the partial linearization kept in a [`Violation::NotLinearizable`] witness.
const WITNESS_TAIL: usize = 8;

/// One operation of a client on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Op {
    /// The client that issued it (informational: used in messages only).
    pub client: u64,
    /// The register it applies to.
    pub key: u64,
    pub kind: OpKind,
    /// Invocation time.
    pub call: u64,
    /// Response time (`>= call`), or `None` if the op never returned: it may or may not have taken
    /// effect, at any time after `call`.
    pub ret: Option<u64>,
}

/// What an [`Op`] did, with what it observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Set the register to the value.
    Write(u64),
    /// Read the register: the value observed, `None` if the key was never written.
    Read(Option<u64>),
    /// Compare-and-swap: if the register holds `expected` (`None` = never written), set it to
    /// `new`; `ok` tells whether it did.
    Cas {
        expected: Option<u64>,
        new: u64,
        ok: bool,
    },
}

/// Why a history was rejected, or why it could not be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// `history[index]` returns before it is called.
    Malformed { index: usize, op: Op },
    /// `history[index]` observed a value that no write of its key invoked before it returned could
    /// have produced (a read of a value never written, or of a value written only later).
    UnwrittenValue { key: u64, index: usize, op: Op },
    /// The ops of `key` have no linearization. Witness: the deepest partial linearization found
    /// (`prefix_len` ops, ending with `prefix_tail`, as indices into the history with the ops)
    /// leaves the register at `value`, and none of the ops that may come next (`stuck`) is legal
    /// there.
    NotLinearizable {
        key: u64,
        prefix_len: usize,
        prefix_tail: Vec<(usize, Op)>,
        value: Option<u64>,
        stuck: Vec<(usize, Op)>,
    },
    /// Inconclusive: `key` has `ops` ops, more than [`MAX_OPS_PER_KEY`].
    TooLarge { key: u64, ops: usize },
    /// Inconclusive: the search of `key` gave up after `steps` transitions (its step budget or
    /// its memory budget was exhausted).
    BudgetExhausted { key: u64, steps: u64 },
}

impl Violation {
    /// Whether the history was not checked to the end (too large, budget exhausted), as opposed to
    /// being malformed or shown not linearizable.
    pub fn is_inconclusive(&self) -> bool {
        matches!(
            self,
            Violation::TooLarge { .. } | Violation::BudgetExhausted { .. }
        )
    }
}

/// Checks that `history` (in any order) is linearizable, every key being an independent register
/// that starts out never written. See the crate documentation for the semantics and limits.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    check_with_budget(history, MAX_STEPS_PER_KEY)
}

pub(crate) fn check_with_budget(history: &[Op], budget: u64) -> Result<(), Violation> {
    let mut by_key: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        if let Some(ret) = op.ret
            && ret < op.call
        {
            return Err(Violation::Malformed { index, op: *op });
        }
        by_key.entry(op.key).or_default().push(index);
    }
    let mut inconclusive = None;
    for (key, indices) in by_key {
        let result = if indices.len() > MAX_OPS_PER_KEY {
            Err(Violation::TooLarge {
                key,
                ops: indices.len(),
            })
        } else {
            check_key(history, key, &indices, budget)
        };
        match result {
            Ok(()) => {}
            Err(v) if v.is_inconclusive() => {
                inconclusive.get_or_insert(v);
            }
            Err(v) => return Err(v),
        }
    }
    inconclusive.map_or(Ok(()), Err)
}

/// An op of one key, as the search sees it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Index in the history.
    index: usize,
    call: u64,
    /// `u64::MAX` for a pending op (never constrains another).
    ret: u64,
    kind: OpKind,
}

/// The register value after linearizing an op of `kind` on `state`, or `None` if that is illegal.
fn apply(kind: OpKind, pending: bool, state: Option<u64>) -> Option<Option<u64>> {
    match kind {
        OpKind::Write(v) => Some(Some(v)),
        OpKind::Read(seen) => (state == seen).then_some(state),
        // A pending CAS that failed had no effect, the same as leaving it out: only its success is
        // worth linearizing.
        OpKind::Cas { expected, new, ok } if ok || pending => {
            (state == expected).then_some(Some(new))
        }
        OpKind::Cas { expected, .. } => (state != expected).then_some(state),
    }
}

fn check_key(history: &[Op], key: u64, indices: &[usize], budget: u64) -> Result<(), Violation> {
    // Pre-check: every observed value has a producer invoked before the observer returned. A CAS
    // whose new value equals its expected one produces nothing new.
    let mut first_producer: HashMap<u64, u64> = HashMap::new();
    for &i in indices {
        let op = &history[i];
        let produced = match op.kind {
            OpKind::Write(v) => Some(v),
            OpKind::Cas { expected, new, ok }
                if (ok || op.ret.is_none()) && expected != Some(new) =>
            {
                Some(new)
            }
            _ => None,
        };
        if let Some(v) = produced {
            let call = first_producer.entry(v).or_insert(op.call);
            *call = (*call).min(op.call);
        }
    }
    let mut observed = HashSet::new();
    let mut failed_cas = false;
    for &i in indices {
        let op = &history[i];
        let Some(ret) = op.ret else {
            // A pending CAS may have succeeded: it needs its expected value.
            if let OpKind::Cas {
                expected: Some(v), ..
            } = op.kind
            {
                observed.insert(v);
            }
            continue;
        };
        let seen = match op.kind {
            OpKind::Read(Some(v)) => Some(v),
            OpKind::Cas {
                expected: Some(v),
                ok: true,
                ..
            } => Some(v),
            OpKind::Cas { ok: false, .. } => {
                failed_cas = true;
                None
            }
            _ => None,
        };
        if let Some(v) = seen {
            observed.insert(v);
            if first_producer.get(&v).is_none_or(|&call| call > ret) {
                return Err(Violation::UnwrittenValue {
                    key,
                    index: i,
                    op: *op,
                });
            }
        }
    }

    let mut done = Vec::new();
    let mut pending = Vec::new();
    for &index in indices {
        let op = history[index];
        match op.ret {
            Some(ret) => done.push(Entry {
                index,
                call: op.call,
                ret,
                kind: op.kind,
            }),
            None => {
                let produced = match op.kind {
                    OpKind::Read(_) => continue,
                    OpKind::Write(v) => v,
                    OpKind::Cas { new, .. } => new,
                };
                // Without a failed CAS to satisfy, a write nobody observed is best left out.
                if failed_cas || observed.contains(&produced) {
                    pending.push(Entry {
                        index,
                        call: op.call,
                        ret: u64::MAX,
                        kind: op.kind,
                    });
                }
            }
        }
    }
    done.sort_by_key(|e| (e.call, e.ret, e.index));
    pending.sort_by_key(|e| (e.call, e.index));
    Search::new(history, key, done, pending).run(budget)
}

/// FxHash-style hasher for the memo (its keys are bitsets: no adversary, speed matters).
#[derive(Default)]
struct MemoHasher(u64);

impl Hasher for MemoHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    fn finish(&self) -> u64 {
        // MurmurHash3's finalizer: the table uses both the low and the high bits.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// `Frame::taken` of the root (nothing linearized yet).
const ROOT: usize = usize::MAX;

/// A state of the depth-first search. Op `i < done.len()` is `done[i]`, otherwise
/// `pending[i - done.len()]`.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Register value.
    state: Option<u64>,
    /// The op linearized last, to reach this state.
    taken: usize,
    /// First unlinearized completed op: all before it are linearized.
    first: usize,
    /// Earliest return of an unlinearized completed op: only ops called by then may come next.
    min_ret: u64,
    /// First completed op called after `min_ret`: none from there on is linearized yet.
    end: usize,
    /// Next op to try from this state.
    cursor: usize,
}

struct Search<'a> {
    history: &'a [Op],
    key: u64,
    done: Vec<Entry>,
    pending: Vec<Entry>,
    lin_done: Vec<u64>,
    lin_pending: Vec<u64>,
    memo: HashSet<Box<[u64]>, BuildHasherDefault<MemoHasher>>,
    /// Approximate size of `memo`.
    memo_bytes: usize,
    scratch: Vec<u64>,
}

fn bit(words: &[u64], i: usize) -> bool {
    words[i / 64] & (1 << (i % 64)) != 0
}

impl<'a> Search<'a> {
    fn new(history: &'a [Op], key: u64, done: Vec<Entry>, pending: Vec<Entry>) -> Self {
        Search {
            history,
            key,
            lin_done: vec![0; done.len().div_ceil(64)],
            lin_pending: vec![0; pending.len().div_ceil(64)],
            done,
            pending,
            memo: HashSet::default(),
            memo_bytes: 0,
            scratch: Vec::new(),
        }
    }

    fn entry(&self, i: usize) -> (&Entry, bool) {
        match self.done.get(i) {
            Some(e) => (e, false),
            None => (&self.pending[i - self.done.len()], true),
        }
    }

    fn is_linearized(&self, i: usize) -> bool {
        let n = self.done.len();
        if i < n {
            bit(&self.lin_done, i)
        } else {
            bit(&self.lin_pending, i - n)
        }
    }

    fn toggle(&mut self, i: usize) {
        let n = self.done.len();
        let (words, i) = if i < n {
            (&mut self.lin_done, i)
        } else {
            (&mut self.lin_pending, i - n)
        };
        words[i / 64] ^= 1 << (i % 64);
    }

    /// The frame of the current linearized set with register value `state`, reached by `taken`
    /// from a frame whose first unlinearized op was `first`.
    fn frame(&self, state: Option<u64>, taken: usize, mut first: usize) -> Frame {
        let n = self.done.len();
        while first < n && bit(&self.lin_done, first) {
            first += 1;
        }
        let mut min_ret = u64::MAX;
        let mut end = first;
        // Sorted by call: once a call is past `min_ret`, so is every later one, and so its return.
        while end < n && self.done[end].call <= min_ret {
            if !bit(&self.lin_done, end) {
                min_ret = min_ret.min(self.done[end].ret);
            }
            end += 1;
        }
        Frame {
            state,
            taken,
            first,
            min_ret,
            end,
            cursor: first,
        }
    }

    /// Records the frame's state in the memo; false if it was already there.
    fn remember(&mut self, f: &Frame) -> bool {
        let s = &mut self.scratch;
        s.clear();
        s.push(f.first as u64);
        match f.state {
            None => s.extend([0, 0]),
            Some(v) => s.extend([1, v]),
        }
        // Pending ops: trailing unlinearized ones trimmed, so prefixed with their length.
        let mut pw = self.lin_pending.len();
        while pw > 0 && self.lin_pending[pw - 1] == 0 {
            pw -= 1;
        }
        s.push(pw as u64);
        s.extend_from_slice(&self.lin_pending[..pw]);
        // Linearized completed ops: all before `first`, none from `end` on (every linearized op was
        // called by a `min_ret`, which only grows). So the words in between tell the set.
        if f.first < f.end {
            let lo = f.first / 64;
            let mut hi = (f.end - 1) / 64 + 1;
            while hi > lo && self.lin_done[hi - 1] == 0 {
                hi -= 1;
            }
            s.extend_from_slice(&self.lin_done[lo..hi]);
        }
        if self.memo.contains(&s[..]) {
            return false;
        }
        // The words, the box's pointer and length, a table slot with its control byte.
        self.memo_bytes += 8 * s.len() + 16 + 9;
        self.memo.insert(s.clone().into_boxed_slice());
        true
    }

    /// The next unlinearized op that may be linearized from `f`, advancing its cursor.
    fn next_candidate(&self, f: &mut Frame) -> Option<usize> {
        let n = self.done.len();
        loop {
            let i = f.cursor;
            if i < n {
                if i >= f.end {
                    f.cursor = n;
                    continue;
                }
            } else {
                let p = self.pending.get(i - n)?;
                if p.call > f.min_ret {
                    return None;
                }
            }
            f.cursor += 1;
            if !self.is_linearized(i) {
                return Some(i);
            }
        }
    }

    fn with_op(&self, i: usize) -> (usize, Op) {
        let index = self.entry(i).0.index;
        (index, self.history[index])
    }

    fn run(mut self, budget: u64) -> Result<(), Violation> {
        let n = self.done.len();
        if n == 0 {
            return Ok(());
        }
        let root = self.frame(None, ROOT, 0);
        self.remember(&root);
        let mut stack = vec![root];
        let mut linearized_done = 0;
        let mut steps = 0u64;
        let mut best: Option<Violation> = None;
        let mut best_depth = 0;
        while let Some(mut top) = stack.pop() {
            let mut child = None;
            while let Some(i) = self.next_candidate(&mut top) {
                steps += 1;
                if steps > budget || self.memo_bytes > MAX_MEMO_BYTES_PER_KEY {
                    return Err(Violation::BudgetExhausted {
                        key: self.key,
                        steps: steps - 1,
                    });
                }
                let (e, pending) = self.entry(i);
                let Some(state) = apply(e.kind, pending, top.state) else {
                    continue;
                };
                self.toggle(i);
                let f = self.frame(state, i, top.first);
                if self.remember(&f) {
                    child = Some(f);
                    break;
                }
                self.toggle(i);
            }
            if let Some(f) = child {
                stack.push(top);
                if f.taken < n {
                    linearized_done += 1;
                    if linearized_done == n {
                        return Ok(());
                    }
                }
                stack.push(f);
                continue;
            }
            // Dead end: `top` has `stack.len()` ops linearized (the root is not on the stack now).
            let depth = stack.len();
            if best.is_none() || depth > best_depth {
                best_depth = depth;
                best = Some(self.witness(&stack, &top));
            }
            if top.taken != ROOT {
                self.toggle(top.taken);
                if top.taken < n {
                    linearized_done -= 1;
                }
            }
        }
        Err(best.unwrap_or(Violation::NotLinearizable {
            key: self.key,
            prefix_len: 0,
            prefix_tail: Vec::new(),
            value: None,
            stuck: Vec::new(),
        }))
    }

    /// The witness of a dead end at `top`, whose ancestors are `stack`.
    fn witness(&self, stack: &[Frame], top: &Frame) -> Violation {
        // Only the tail of the path: this runs at every new deepest dead end.
        let mut tail: Vec<usize> = std::iter::once(top)
            .chain(stack.iter().rev())
            .map(|f| f.taken)
            .filter(|&t| t != ROOT)
            .take(WITNESS_TAIL)
            .collect();
        tail.reverse();
        let prefix_tail = tail.iter().map(|&i| self.with_op(i)).collect();
        let mut fresh = Frame {
            cursor: top.first,
            ..*top
        };
        let mut stuck = Vec::new();
        while let Some(i) = self.next_candidate(&mut fresh) {
            let (e, pending) = self.entry(i);
            if apply(e.kind, pending, top.state).is_none() {
                stuck.push(self.with_op(i));
            }
        }
        Violation::NotLinearizable {
            key: self.key,
            prefix_len: stack.len(),
            prefix_tail,
            value: top.state,
            stuck,
        }
    }
}

struct Value(Option<u64>);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("none"),
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            OpKind::Write(v) => write!(f, "write {v}"),
            OpKind::Read(v) => write!(f, "read {}", Value(v)),
            OpKind::Cas { expected, new, ok } => write!(
                f,
                "cas {}->{new} {}",
                Value(expected),
                if ok { "ok" } else { "failed" }
            ),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {} key {}: {} [{}, ",
            self.client, self.key, self.kind, self.call
        )?;
        match self.ret {
            Some(ret) => write!(f, "{ret}]"),
            None => f.write_str("pending]"),
        }
    }
}

fn write_ops(f: &mut fmt::Formatter<'_>, ops: &[(usize, Op)]) -> fmt::Result {
    for (n, (index, op)) in ops.iter().enumerate() {
        if n > 0 {
            f.write_str("; ")?;
        }
        write!(f, "#{index} {op}")?;
    }
    Ok(())
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Malformed { index, op } => {
                write!(
                    f,
                    "malformed history: op #{index} ({op}) returns before it is called"
                )
            }
            Violation::UnwrittenValue { key, index, op } => write!(
                f,
                "key {key} is not linearizable: op #{index} ({op}) observed a value that no write \
                 of the key invoked before it returned could have produced"
            ),
            Violation::NotLinearizable {
                key,
                prefix_len,
                prefix_tail,
                value,
                stuck,
            } => {
                write!(
                    f,
                    "key {key} is not linearizable: the longest partial linearization found has \
                     {prefix_len} ops"
                )?;
                if !prefix_tail.is_empty() {
                    let more = if *prefix_len > prefix_tail.len() {
                        "..., "
                    } else {
                        ""
                    };
                    write!(f, " ({more}")?;
                    write_ops(f, prefix_tail)?;
                    f.write_str(")")?;
                }
                write!(
                    f,
                    " and leaves the register at {}; none of the ops that may come next is legal \
                     there: ",
                    Value(*value)
                )?;
                write_ops(f, stuck)
            }
            Violation::TooLarge { key, ops } => write!(
                f,
                "inconclusive: key {key} has {ops} ops, more than the checker's limit of \
                 {MAX_OPS_PER_KEY}"
            ),
            Violation::BudgetExhausted { key, steps } => write!(
                f,
                "inconclusive: the linearizability search of key {key} gave up after {steps} steps"
            ),
        }
    }
}

impl std::error::Error for Violation {}

#[cfg(test)]
mod tests;
