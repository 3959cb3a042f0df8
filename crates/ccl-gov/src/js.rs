//! The constitution's JavaScript: QuickJS through rquickjs.
//!
//! Every call runs in a fresh runtime, so no state survives between calls except what the script
//! writes to the store. The runtime is deterministic and bounded, so every node that runs the same
//! script on the same state reaches the same result:
//! - no clock and no randomness (`Date` and `Math.random` throw);
//! - at most [`JS_MEMORY_LIMIT`] bytes of heap and [`JS_STACK_LIMIT`] bytes of stack;
//! - at most [`JS_WORK_LIMIT`] units of work. QuickJS calls the interrupt handler after a fixed
//!   number of bytecode operations, so counting its calls measures work, not time: a script that
//!   runs forever stops at the same point on every node.
//!
//! Scripts see CCF's `ccf` global: `ccf.kv[map]` (get, has, set, delete, forEach, size) over the
//! transaction's public maps, `ccf.strToBuf`, `ccf.bufToStr`, `ccf.jsonCompatibleToBuf`,
//! `ccf.bufToJsonCompatible`, `ccf.pemToId`, `ccf.crypto.isValidX509CertBundle`, and
//! `ccf.node.transitionServiceToOpen` / `triggerLedgerRekey` / `triggerSnapshot` (recorded as
//! [`Effects`]).
//! Reads are limited to `public:` maps (private maps stay out of governance's reach); writes
//! need [`Access::Write`] (only `apply` has it) and are limited to `public:ccf.gov.` maps.

use ccl_store::Tx;
use rquickjs::{Context, Ctx, Exception, Function, Module, Object, Runtime};
use std::cell::{Cell, RefCell};
use std::ops::Bound;
use std::rc::Rc;

/// Heap available to one call, in bytes.
pub const JS_MEMORY_LIMIT: usize = 64 << 20;
/// Stack available to one call, in bytes.
pub const JS_STACK_LIMIT: usize = 1 << 20;
/// Work available to one call, in interrupt-handler calls (QuickJS makes one every 10,000 or so
/// operations, so this is tens of millions of operations: far more than any sane constitution).
pub const JS_WORK_LIMIT: u32 = 3_000;
/// Largest script (constitution or ballot), in bytes.
pub const MAX_SCRIPT: usize = 1 << 20;
/// Most entries a script may enumerate from one map (`forEach`, `size`).
pub const MAX_ENUMERATION: usize = 100_000;

/// What a script may do to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read public maps only (validate, resolve, ballots).
    Read,
    /// Also write `public:ccf.gov.` maps (apply).
    Write,
}

/// Most `setCollectionAccess` calls in one apply.
pub const MAX_COLLECTION_ACCESS_EFFECTS: usize = 100;

/// What a script asked the node to do besides writing maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// `ccf.node.transitionServiceToOpen()`.
    pub open_service: bool,
    /// `ccf.node.transitionServiceToOpen(previous, next)`: the previous service identity (PEM)
    /// a recovering service must name.
    pub previous_service_identity: Option<String>,
    /// `ccf.node.triggerLedgerRekey()`.
    pub rekey: bool,
    /// `ccf.node.triggerRecoverySharesRefresh()`.
    pub refresh_shares: bool,
    /// `ccf.node.triggerSnapshot()`.
    pub snapshot: bool,
    /// `ccf.node.setCollectionAccess(access)` (ccl's extension): access lists of private
    /// collections to write, as JSON `{"collection_id","owner","readers","writers"}`; the node
    /// checks and writes them (they go to a private map, which scripts cannot write).
    pub collection_access: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsErrorKind {
    /// The script does not parse or does not load.
    Syntax,
    /// The script threw.
    Exception,
    /// The script ran out of memory, stack or work.
    Limit,
    /// The script does not have the interface expected (a missing export, a wrong return type).
    Interface,
}

/// Why a script failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JsError {
    pub kind: JsErrorKind,
    pub message: String,
    /// The JavaScript stack, when there is one.
    pub trace: Option<String>,
}

impl JsError {
    pub fn new(kind: JsErrorKind, message: impl Into<String>) -> Self {
        JsError {
            kind,
            message: message.into(),
            trace: None,
        }
    }
}

struct Host {
    tx: RefCell<Tx>,
    access: Access,
    effects: RefCell<Effects>,
}

impl Host {
    fn readable(&self, ctx: &Ctx<'_>, map: &str) -> rquickjs::Result<()> {
        if map.starts_with("public:") {
            Ok(())
        } else {
            Err(Exception::throw_message(
                ctx,
                &format!("map {map:?} is not public: governance cannot read it"),
            ))
        }
    }
    fn writable(&self, ctx: &Ctx<'_>, map: &str) -> rquickjs::Result<()> {
        if self.access != Access::Write {
            return Err(Exception::throw_message(
                ctx,
                "the store is read-only here (only apply may write)",
            ));
        }
        if !map.starts_with("public:ccf.gov.") {
            return Err(Exception::throw_message(
                ctx,
                &format!("map {map:?} is not a governance map (public:ccf.gov.*)"),
            ));
        }
        Ok(())
    }
}

/// The JavaScript half of the `ccf` global, over the natives [`install`] defines.
const PRELUDE: &str = r#"
"use strict";
(() => {
  const g = globalThis;
  const n = {
    get: g.__ccl_kv_get, set: g.__ccl_kv_set, del: g.__ccl_kv_del, entries: g.__ccl_kv_entries,
    enc: g.__ccl_utf8_encode, dec: g.__ccl_utf8_decode, pemToId: g.__ccl_pem_to_id,
    validCert: g.__ccl_valid_cert, effect: g.__ccl_effect,
  };
  for (const name of Object.keys(g)) if (name.startsWith("__ccl_")) delete g[name];
  const toArr = (b) => {
    if (b instanceof ArrayBuffer) return Array.from(new Uint8Array(b));
    if (ArrayBuffer.isView(b)) return Array.from(new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
    throw new TypeError("expected an ArrayBuffer");
  };
  const toBuf = (a) => new Uint8Array(a).buffer;
  class KvMap {
    constructor(name) { this.name = name; }
    get(k) { const v = n.get(this.name, toArr(k)); return v === undefined ? undefined : toBuf(v); }
    has(k) { return n.get(this.name, toArr(k)) !== undefined; }
    set(k, v) { n.set(this.name, toArr(k), toArr(v)); return this; }
    delete(k) { return n.del(this.name, toArr(k)); }
    forEach(cb) {
      const e = n.entries(this.name);
      for (let i = 0; i < e.length; i += 2) cb(toBuf(e[i + 1]), toBuf(e[i]), this);
    }
    get size() { return n.entries(this.name).length / 2; }
  }
  const kv = new Proxy({}, { get: (_, name) => (typeof name === "string" ? new KvMap(name) : undefined) });
  const strToBuf = (s) => toBuf(n.enc(String(s)));
  const bufToStr = (b) => n.dec(toArr(b));
  g.ccf = Object.freeze({
    kv,
    strToBuf,
    bufToStr,
    jsonCompatibleToBuf: (v) => strToBuf(JSON.stringify(v)),
    bufToJsonCompatible: (b) => JSON.parse(bufToStr(b)),
    pemToId: (pem) => n.pemToId(String(pem)),
    crypto: Object.freeze({ isValidX509CertBundle: (pem) => n.validCert(String(pem)) }),
    node: Object.freeze({
      transitionServiceToOpen: (previous, next) =>
        n.effect("open_service", previous === undefined || previous === null ? "" : String(previous)),
      triggerLedgerRekey: () => n.effect("rekey"),
      triggerRecoverySharesRefresh: () => n.effect("refresh_shares"),
      triggerSnapshot: () => n.effect("snapshot"),
      setCollectionAccess: (access) => n.effect("collection_access", JSON.stringify(access)),
    }),
  });
  const unavailable = (what) => function () {
    throw new Error(what + " is not available: the constitution runs deterministically");
  };
  Math.random = unavailable("Math.random");
  g.Date = unavailable("Date");
  g.Date.now = unavailable("Date.now");
})();
"#;

fn install(ctx: &Ctx<'_>, host: &Rc<Host>) -> rquickjs::Result<()> {
    let g = ctx.globals();
    let h = host.clone();
    g.set(
        "__ccl_kv_get",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'_>, map: String, key: Vec<u8>| -> rquickjs::Result<Option<Vec<u8>>> {
                h.readable(&ctx, &map)?;
                Ok(h.tx.borrow_mut().get(&map, &key).map(|b| b.to_vec()))
            },
        )?,
    )?;
    let h = host.clone();
    g.set(
        "__ccl_kv_set",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'_>,
                  map: String,
                  key: Vec<u8>,
                  value: Vec<u8>|
                  -> rquickjs::Result<()> {
                h.writable(&ctx, &map)?;
                h.tx.borrow_mut()
                    .put(&map, &key, &value)
                    .map_err(|e| Exception::throw_message(&ctx, &e.to_string()))
            },
        )?,
    )?;
    let h = host.clone();
    g.set(
        "__ccl_kv_del",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'_>, map: String, key: Vec<u8>| -> rquickjs::Result<bool> {
                h.writable(&ctx, &map)?;
                let mut tx = h.tx.borrow_mut();
                let existed = tx.get(&map, &key).is_some();
                tx.remove(&map, &key)
                    .map_err(|e| Exception::throw_message(&ctx, &e.to_string()))?;
                Ok(existed)
            },
        )?,
    )?;
    let h = host.clone();
    g.set(
        "__ccl_kv_entries",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'_>, map: String| -> rquickjs::Result<Vec<Vec<u8>>> {
                h.readable(&ctx, &map)?;
                let all = h.tx.borrow_mut().range(
                    &map,
                    (Bound::Unbounded, Bound::Unbounded),
                    MAX_ENUMERATION + 1,
                );
                if all.len() > MAX_ENUMERATION {
                    return Err(Exception::throw_range(
                        &ctx,
                        &format!("map {map:?} has more than {MAX_ENUMERATION} entries"),
                    ));
                }
                Ok(all
                    .into_iter()
                    .flat_map(|(k, v)| [k.to_vec(), v.to_vec()])
                    .collect())
            },
        )?,
    )?;
    g.set(
        "__ccl_utf8_encode",
        Function::new(ctx.clone(), |s: String| -> Vec<u8> { s.into_bytes() })?,
    )?;
    g.set(
        "__ccl_utf8_decode",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'_>, b: Vec<u8>| -> rquickjs::Result<String> {
                String::from_utf8(b)
                    .map_err(|_| Exception::throw_type(&ctx, "the buffer is not UTF-8"))
            },
        )?,
    )?;
    g.set(
        "__ccl_pem_to_id",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'_>, pem: String| -> rquickjs::Result<String> {
                crate::cert_id(&pem).map_err(|e| Exception::throw_type(&ctx, &e))
            },
        )?,
    )?;
    g.set(
        "__ccl_valid_cert",
        Function::new(ctx.clone(), |pem: String| -> bool {
            ccl_crypto::cert::Certificate::all_from_pem(&pem).is_ok_and(|c| !c.is_empty())
        })?,
    )?;
    let h = host.clone();
    g.set(
        "__ccl_effect",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'_>,
                  what: String,
                  arg: rquickjs::function::Opt<String>|
                  -> rquickjs::Result<()> {
                if h.access != Access::Write {
                    return Err(Exception::throw_message(
                        &ctx,
                        "node actions are only available to apply",
                    ));
                }
                let mut e = h.effects.borrow_mut();
                match what.as_str() {
                    "open_service" => {
                        e.open_service = true;
                        e.previous_service_identity = arg.0.filter(|a| !a.is_empty());
                    }
                    "rekey" => e.rekey = true,
                    "refresh_shares" => e.refresh_shares = true,
                    "snapshot" => e.snapshot = true,
                    "collection_access" => match arg.0 {
                        Some(a) if e.collection_access.len() < MAX_COLLECTION_ACCESS_EFFECTS => {
                            e.collection_access.push(a)
                        }
                        _ => {
                            return Err(Exception::throw_message(
                                &ctx,
                                "setCollectionAccess: one access list, at most 100 per proposal",
                            ));
                        }
                    },
                    _ => return Err(Exception::throw_message(&ctx, "unknown node action")),
                }
                Ok(())
            },
        )?,
    )?;
    ctx.eval::<(), _>(PRELUDE)
}

/// Turns a failed call into a [`JsError`], with the thrown value's message and stack.
fn caught(ctx: &Ctx<'_>, e: rquickjs::Error, work: &Cell<u32>, kind: JsErrorKind) -> JsError {
    if work.get() > JS_WORK_LIMIT {
        return JsError::new(
            JsErrorKind::Limit,
            format!("the script ran out of work ({JS_WORK_LIMIT} units): does it loop forever?"),
        );
    }
    let (message, trace) = match e {
        rquickjs::Error::Exception => {
            let v = ctx.catch();
            if let Some(ex) = v.as_exception() {
                (ex.message().unwrap_or_default(), ex.stack())
            } else {
                let s = ctx
                    .json_stringify(v)
                    .ok()
                    .flatten()
                    .and_then(|s| s.to_string().ok())
                    .unwrap_or_else(|| "a value that is not an Error".into());
                (format!("threw {s}"), None)
            }
        }
        rquickjs::Error::Allocation => ("out of memory".into(), None),
        other => (other.to_string(), None),
    };
    let kind = if message.contains("out of memory") || message.contains("stack overflow") {
        JsErrorKind::Limit
    } else {
        kind
    };
    JsError {
        kind,
        message,
        trace: trace.filter(|t| !t.is_empty()),
    }
}

/// Loads `source` as an ES module named `name` and calls `f` with its namespace (its exports), in
/// a fresh bounded runtime whose `ccf.kv` reads (and with [`Access::Write`], writes) `tx`.
pub fn with_module<R>(
    tx: &mut Tx,
    access: Access,
    name: &str,
    source: &str,
    f: impl for<'js> FnOnce(&Ctx<'js>, &Object<'js>) -> rquickjs::Result<R>,
) -> Result<(R, Effects), JsError> {
    if source.len() > MAX_SCRIPT {
        return Err(JsError::new(
            JsErrorKind::Limit,
            format!("scripts have at most {MAX_SCRIPT} bytes"),
        ));
    }
    let host = Rc::new(Host {
        tx: RefCell::new(std::mem::take(tx)),
        access,
        effects: RefCell::default(),
    });
    let result = run(&host, name, source, f);
    // The runtime (and every closure holding the host) is gone: take the transaction back.
    *tx = std::mem::take(&mut *host.tx.borrow_mut());
    let effects = host.effects.borrow().clone();
    result.map(|r| (r, effects))
}

fn run<R>(
    host: &Rc<Host>,
    name: &str,
    source: &str,
    f: impl for<'js> FnOnce(&Ctx<'js>, &Object<'js>) -> rquickjs::Result<R>,
) -> Result<R, JsError> {
    let internal = |e: rquickjs::Error| JsError::new(JsErrorKind::Limit, e.to_string());
    let rt = Runtime::new().map_err(internal)?;
    rt.set_memory_limit(JS_MEMORY_LIMIT);
    rt.set_max_stack_size(JS_STACK_LIMIT);
    let work = Rc::new(Cell::new(0u32));
    {
        let work = work.clone();
        rt.set_interrupt_handler(Some(Box::new(move || {
            work.set(work.get().saturating_add(1));
            work.get() > JS_WORK_LIMIT
        })));
    }
    let context = Context::full(&rt).map_err(internal)?;
    context.with(|ctx| {
        install(&ctx, host).map_err(|e| caught(&ctx, e, &work, JsErrorKind::Exception))?;
        let declared = Module::declare(ctx.clone(), name, source)
            .map_err(|e| caught(&ctx, e, &work, JsErrorKind::Syntax))?;
        let (module, promise) = declared
            .eval()
            .map_err(|e| caught(&ctx, e, &work, JsErrorKind::Syntax))?;
        promise
            .finish::<()>()
            .map_err(|e| caught(&ctx, e, &work, JsErrorKind::Syntax))?;
        let ns = module
            .namespace()
            .map_err(|e| caught(&ctx, e, &work, JsErrorKind::Syntax))?;
        f(&ctx, &ns).map_err(|e| caught(&ctx, e, &work, JsErrorKind::Exception))
    })
}

/// An exported function of a module namespace, or an interface error naming it.
pub fn export<'js>(ns: &Object<'js>, name: &str) -> rquickjs::Result<Function<'js>> {
    let v: rquickjs::Value<'js> = ns.get(name)?;
    match v.into_function() {
        Some(f) => Ok(f),
        None => Err(Exception::throw_type(
            ns.ctx(),
            &format!("the script does not export a function {name}"),
        )),
    }
}

/// A JavaScript value as JSON (`undefined` as null).
pub fn to_json<'js>(
    ctx: &Ctx<'js>,
    v: rquickjs::Value<'js>,
) -> rquickjs::Result<serde_json::Value> {
    let s = ctx.json_stringify(v)?;
    let s = match s {
        Some(s) => s.to_string()?,
        None => return Ok(serde_json::Value::Null),
    };
    serde_json::from_str(&s).map_err(|e| Exception::throw_type(ctx, &e.to_string()))
}
