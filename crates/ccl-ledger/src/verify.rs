//! Offline verification of a ledger directory: what `ccl ledger verify` runs.
//!
//! Checks, streaming every chunk once in seqno order and in memory that does not grow with the
//! ledger (one entry, one chunk's positions table, the Merkle frontier, and the service's nodes):
//! - chunk names form one contiguous range from seqno 1, committed chunks before in-progress ones,
//!   each complete chunk's header and positions table match its entries exactly, and committed
//!   chunks end at a signature transaction;
//! - every entry parses, has the next seqno and a view that never decreases;
//! - every signature transaction: signed by a node of the service that is not Pending, over the
//!   Merkle root of every transaction before it, with that node's endorsed certificate, which the
//!   service certificate issued; its COSE signature verifies with the service key;
//! - service status transitions are the ones CCF allows;
//! - with a service certificate given: the ledger belongs to that service.
//!
//! Private maps stay encrypted: their ciphertext is covered by the write set digest, so any change
//! to them changes a Merkle leaf and fails the next signature.

use crate::chunk::{CHUNK_HEADER_SIZE, ChunkName, MAX_CHUNK_FILE_SIZE, list_chunks};
use crate::entry::{ENTRY_HEADER_SIZE, Entry, EntryType, entry_len};
use crate::merkle::Frontier;
use crate::tables::{self, NodeInfo, NodeStatus, PrimarySignature, ServiceInfo, ServiceStatus};
use crate::txid::TxId;
use ccl_crypto::cert::Certificate;
use ccl_crypto::cose::Sign1;
use ccl_crypto::keys::VerifyingKey;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

/// Read buffer of the verifier.
const READ_BUFFER: usize = 1 << 20;
/// Nodes a ledger may define (bounds the verifier's memory).
pub const MAX_NODES: usize = 10_000;

/// What the verifier was given.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The certificate of the service the ledger must belong to.
    pub service_cert: Option<Certificate>,
}

/// What a successful verification saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub chunks: usize,
    pub transactions: u64,
    pub signatures: u64,
    pub bytes: u64,
    /// The last transaction a signature covers (the signature itself).
    pub last_signed: Option<TxId>,
    pub last_seqno: u64,
    /// Transactions after the last signature (not yet covered by one).
    pub unsigned_tail: u64,
    /// An incomplete entry at the end of the in-progress chunk (a crash mid-write), in bytes.
    pub torn_tail: u64,
    /// Certificate of the service at the end of the ledger, PEM.
    pub service_cert: Option<String>,
}

/// Why a ledger failed verification: the first bad transaction (or chunk) and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", location(.txid, .seqno, .chunk))]
pub struct VerifyError {
    /// The transaction id, when the entry's view is known.
    pub txid: Option<TxId>,
    /// The seqno the error is at, when it is about a transaction.
    pub seqno: Option<u64>,
    /// The chunk file.
    pub chunk: Option<String>,
    pub reason: String,
}

fn location(txid: &Option<TxId>, seqno: &Option<u64>, chunk: &Option<String>) -> String {
    let mut s = String::new();
    match (txid, seqno) {
        (Some(t), _) => s.push_str(&format!("transaction {t}")),
        (None, Some(q)) => s.push_str(&format!("transaction at seqno {q}")),
        _ => {}
    }
    if let Some(c) = chunk {
        if s.is_empty() {
            s.push_str(&format!("chunk {c}"));
        } else {
            s.push_str(&format!(" (in {c})"));
        }
    }
    if !s.is_empty() {
        s.push_str(": ");
    }
    s
}

struct Node {
    status: NodeStatus,
    cert: Option<String>,
    /// Public key of `cert`, parsed and checked against the service once, and its DER SPKI.
    key: Option<(VerifyingKey, Vec<u8>)>,
    /// The last certificate a signature carried that matched the key (checked once).
    sig_cert_seen: Option<String>,
}

/// A signature check, run off the main thread (ECDSA verification costs more than hashing a
/// megabyte): the seqno and transaction id it is about, and the check.
struct Check {
    txid: TxId,
    run: Box<dyn FnOnce() -> Result<(), String> + Send>,
}

/// Checks queued before the main thread waits for the worker.
const CHECK_QUEUE: usize = 1024;

struct Verifier<'o> {
    opts: &'o VerifyOptions,
    checks: std::sync::mpsc::SyncSender<Check>,
    frontier: Frontier,
    nodes: HashMap<String, Node>,
    service_status: Option<ServiceStatus>,
    service_cert: Option<(String, Certificate)>,
    last_view: u64,
    last_sig: u64,
    report: VerifyReport,
    /// Read buffers, reused from one chunk's window to the next.
    blocks: Blocks,
}

/// Verifies the ledger in `dir`. `progress(done, total)` is called as bytes are verified.
pub fn verify_ledger(
    dir: &Path,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, VerifyError> {
    let plain = |reason: String| VerifyError {
        txid: None,
        seqno: None,
        chunk: None,
        reason,
    };
    let names =
        list_chunks(dir).map_err(|e| plain(format!("cannot list {}: {e}", dir.display())))?;
    if names.is_empty() {
        return Err(plain(format!("{} holds no ledger chunks", dir.display())));
    }
    let mut total = 0u64;
    for n in &names {
        let p = dir.join(n.file_name());
        total += std::fs::metadata(&p)
            .map_err(|e| plain(format!("{}: {e}", p.display())))?
            .len();
    }
    check_names(&names)?;
    let (checks, queue) = std::sync::mpsc::sync_channel::<Check>(CHECK_QUEUE);
    let (result, failed_check) = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("ccl-sig-checks".into())
            .spawn_scoped(scope, move || {
                // Report the earliest failing check; keep draining so the main thread never blocks.
                let mut first: Option<VerifyError> = None;
                for c in queue {
                    if first.is_none()
                        && let Err(reason) = (c.run)()
                    {
                        first = Some(VerifyError {
                            txid: Some(c.txid),
                            seqno: Some(c.txid.seqno),
                            chunk: None,
                            reason,
                        });
                    }
                }
                first
            });
        let worker = match worker {
            Ok(w) => w,
            Err(e) => {
                return (
                    Err(VerifyError {
                        txid: None,
                        seqno: None,
                        chunk: None,
                        reason: format!("cannot start a thread: {e}"),
                    }),
                    None,
                );
            }
        };
        let result = verify_chunks(dir, opts, progress, &names, total, checks);
        let failed = worker.join().unwrap_or_else(|_| {
            Some(VerifyError {
                txid: None,
                seqno: None,
                chunk: None,
                reason: "signature checker failed".into(),
            })
        });
        (result, failed)
    });
    match (result, failed_check) {
        (Err(e), Some(c)) => Err(if c.seqno < e.seqno { c } else { e }),
        (Err(e), None) => Err(e),
        (Ok(_), Some(c)) => Err(c),
        (Ok(r), None) => Ok(r),
    }
}

fn verify_chunks(
    dir: &Path,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
    names: &[ChunkName],
    total: u64,
    checks: std::sync::mpsc::SyncSender<Check>,
) -> Result<VerifyReport, VerifyError> {
    let plain = |reason: String| VerifyError {
        txid: None,
        seqno: None,
        chunk: None,
        reason,
    };
    let mut v = Verifier {
        opts,
        checks,
        frontier: Frontier::new(),
        nodes: HashMap::new(),
        service_status: None,
        service_cert: None,
        last_view: 0,
        last_sig: 0,
        report: VerifyReport::default(),
        blocks: Blocks::default(),
    };
    v.frontier.append([0u8; 32]); // CCF's tree starts with an all-zero leaf: seqnos start at 1
    let mut done = 0u64;
    // The next chunk is opened (and read ahead) while the one before is verified; an error in
    // opening it is reported only after the chunks before it verified.
    let open = |v: &Verifier, name: &ChunkName| v.open(name, &dir.join(name.file_name()));
    let mut next = names.first().map(|n| open(&v, n));
    for (i, name) in names.iter().enumerate() {
        let opened = next.take().expect("opened before")?;
        next = names.get(i + 1).map(|n| open(&v, n));
        v.chunk(name, opened, &mut |n| {
            done += n;
            progress(done, total);
        })?;
        v.report.chunks += 1;
    }
    v.report.last_seqno = v.frontier.size() - 1;
    v.report.unsigned_tail = v.report.last_seqno - v.last_sig;
    if let Some(expected) = &opts.service_cert {
        match &v.service_cert {
            Some((_, c)) if c.spki_der() == expected.spki_der() => {}
            Some(_) => return Err(plain("the ledger belongs to another service: its service certificate differs from the one given".into())),
            None => return Err(plain("the ledger records no service certificate".into())),
        }
    }
    v.report.service_cert = v.service_cert.map(|(pem, _)| pem);
    Ok(v.report)
}

/// Chunk names: one contiguous range from seqno 1, committed chunks first, at most one in progress
/// (the last).
fn check_names(names: &[ChunkName]) -> Result<(), VerifyError> {
    let mut expected = 1u64;
    let mut seen_uncommitted = false;
    for (i, n) in names.iter().enumerate() {
        let err = |reason: String| VerifyError {
            txid: None,
            seqno: Some(expected),
            chunk: Some(n.file_name()),
            reason,
        };
        if n.start != expected {
            return Err(if n.start > expected {
                err(format!(
                    "missing: no chunk holds seqnos {expected} to {}",
                    n.start - 1
                ))
            } else {
                err(format!(
                    "overlaps the previous chunk (starts at {}, expected {expected})",
                    n.start
                ))
            });
        }
        if n.committed && seen_uncommitted {
            return Err(err("a committed chunk follows an uncommitted one".into()));
        }
        seen_uncommitted |= !n.committed;
        match n.end {
            Some(end) if end < n.start => {
                return Err(err("chunk name has its end before its start".into()));
            }
            Some(end) => expected = end + 1,
            None if i + 1 != names.len() => {
                return Err(err("an in-progress chunk is not the last chunk".into()));
            }
            None => {}
        }
    }
    Ok(())
}

impl Verifier<'_> {
    /// Opens a chunk: checks its size and header, reads its positions table, and starts reading
    /// its entries ahead.
    fn open(&self, name: &ChunkName, path: &Path) -> Result<Opened, VerifyError> {
        let chunk_err = |seqno, reason| chunk_error(name, seqno, reason);
        let file = File::open(path).map_err(|e| chunk_err(None, format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| chunk_err(None, e.to_string()))?
            .len();
        if len > MAX_CHUNK_FILE_SIZE {
            return Err(chunk_err(
                None,
                format!("{len} bytes is larger than any chunk ({MAX_CHUNK_FILE_SIZE})"),
            ));
        }
        let mut header = [0u8; CHUNK_HEADER_SIZE];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 0)
            .map_err(|_| chunk_err(Some(name.start), "chunk header is incomplete".into()))?;
        let table_offset = u64::from_le_bytes(header);
        // Entries span [8, end); a complete chunk has its positions table after them.
        let (end, table) = match (name.end, table_offset) {
            (Some(_), 0) => {
                return Err(chunk_err(
                    Some(name.start),
                    "complete chunk has no positions table".into(),
                ));
            }
            (None, 0) => (len, None),
            (None, _) => {
                return Err(chunk_err(
                    Some(name.start),
                    "in-progress chunk has a positions table".into(),
                ));
            }
            (Some(_), off) => {
                let range = crate::chunk::table_bytes(off, len)
                    .map_err(|e| chunk_err(Some(name.start), e.to_string()))?;
                let mut t = vec![0u8; range.len()];
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut t, off)
                    .map_err(|e| chunk_err(None, format!("cannot read positions table: {e}")))?;
                (off, Some(crate::chunk::parse_table(&t)))
            }
        };
        let win = Window::new(file, CHUNK_HEADER_SIZE as u64, end, &self.blocks);
        Ok(Opened {
            len,
            end,
            table,
            win,
        })
    }

    fn chunk(
        &mut self,
        name: &ChunkName,
        opened: Opened,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), VerifyError> {
        let Opened {
            len,
            end,
            table,
            mut win,
        } = opened;
        let chunk_err = |seqno, reason| chunk_error(name, seqno, reason);
        let mut pos = CHUNK_HEADER_SIZE as u64;
        let mut index = 0usize;
        let mut last_was_signature = false;
        let mut since_progress = 0u64;
        while pos < end {
            let seqno = name.start + index as u64;
            let at = |reason: String| VerifyError {
                txid: None,
                seqno: Some(seqno),
                chunk: Some(name.file_name()),
                reason,
            };
            if let Some(t) = &table {
                match t.get(index) {
                    Some(p) if u64::from(*p) == pos => {}
                    Some(p) => {
                        return Err(at(format!(
                            "entry is at offset {pos}, the positions table says {p}"
                        )));
                    }
                    None => {
                        return Err(at(format!(
                            "positions table has {} entries, the chunk has more",
                            t.len()
                        )));
                    }
                }
            }
            let remaining = end - pos;
            if remaining < ENTRY_HEADER_SIZE as u64 {
                if table.is_none() {
                    self.report.torn_tail = remaining;
                    break;
                }
                return Err(at("incomplete entry header".into()));
            }
            let header = win
                .get(ENTRY_HEADER_SIZE)
                .map_err(|e| at(format!("read: {e}")))?;
            let n = match entry_len(header) {
                Ok(n) => n as u64,
                Err(e) => return Err(at(format!("bad entry header: {e}"))),
            };
            if n > remaining {
                if table.is_none() {
                    self.report.torn_tail = remaining;
                    break;
                }
                return Err(at(format!(
                    "entry of {n} bytes runs past the end of the entries ({remaining} left)"
                )));
            }
            let digest = win.digest(pos, n as usize);
            let bytes = win.get(n as usize).map_err(|e| at(format!("read: {e}")))?;
            last_was_signature = self.entry(seqno, bytes, digest).map_err(|mut e| {
                e.chunk = Some(name.file_name());
                e
            })?;
            win.advance(n as usize);
            pos += n;
            index += 1;
            since_progress += n;
            if since_progress >= READ_BUFFER as u64 {
                progress(since_progress);
                since_progress = 0;
            }
        }
        progress(since_progress + (len - pos.min(len)));
        self.report.bytes += len;
        if let Some(t) = &table
            && t.len() != index
        {
            return Err(chunk_err(
                None,
                format!(
                    "positions table has {} entries for {index} entries",
                    t.len()
                ),
            ));
        }
        if let Some(e) = name.end {
            let count = e - name.start + 1;
            if index as u64 != count {
                return Err(chunk_err(
                    Some(name.start + index as u64),
                    format!("the name says {count} transactions, the chunk holds {index}"),
                ));
            }
            if name.committed && !last_was_signature {
                return Err(chunk_err(
                    Some(e),
                    "a committed chunk must end with a signature transaction".into(),
                ));
            }
        }
        Ok(())
    }

    /// Verifies one entry (whose write set digest may have been computed ahead); returns whether
    /// it is a signature transaction.
    fn entry(
        &mut self,
        seqno: u64,
        bytes: &[u8],
        digest: Option<ccl_crypto::Digest32>,
    ) -> Result<bool, VerifyError> {
        let err = |txid: Option<TxId>, reason: String| VerifyError {
            txid,
            seqno: Some(seqno),
            chunk: None,
            reason,
        };
        let (e, len) =
            Entry::parse(bytes).map_err(|e| err(None, format!("malformed entry: {e}")))?;
        if len != bytes.len() {
            return Err(err(None, "entry length disagrees with its header".into()));
        }
        let txid = e.txid;
        let err = |reason: String| VerifyError {
            txid: Some(txid),
            seqno: Some(seqno),
            chunk: None,
            reason,
        };
        if txid.seqno != seqno {
            return Err(err(format!(
                "entry holds seqno {} where seqno {seqno} belongs",
                txid.seqno
            )));
        }
        if e.is_snapshot {
            return Err(err("a snapshot entry inside a ledger chunk".into()));
        }
        if txid.view < self.last_view || txid.view == 0 || txid.view > crate::txid::MAX_VIEW {
            return Err(err(format!(
                "view {} after view {}",
                txid.view, self.last_view
            )));
        }
        self.last_view = txid.view;
        let pd = e
            .public_domain()
            .map_err(|e| err(format!("malformed public domain: {e}")))?;
        if pd.version != seqno as i64 {
            return Err(err(format!("public domain has version {}", pd.version)));
        }
        if pd.entry_type == EntryType::Snapshot {
            return Err(err("a snapshot entry inside a ledger chunk".into()));
        }
        let mut signature: Option<PrimarySignature> = None;
        let mut cose: Option<Vec<u8>> = None;
        let mut service: Option<ServiceInfo> = None;
        for m in pd.map_iter() {
            let m = m.map_err(|e| err(format!("malformed map: {e}")))?;
            match m.name {
                tables::NODES => {
                    for (k, v) in &m.writes {
                        let id = node_id(k).map_err(&err)?;
                        let info: NodeInfo = serde_json::from_slice(v)
                            .map_err(|e| err(format!("node {id}: malformed info: {e}")))?;
                        if self.nodes.len() >= MAX_NODES && !self.nodes.contains_key(&id) {
                            return Err(err(format!("more than {MAX_NODES} nodes")));
                        }
                        self.nodes
                            .entry(id)
                            .or_insert(Node {
                                status: info.status,
                                cert: None,
                                key: None,
                                sig_cert_seen: None,
                            })
                            .status = info.status;
                    }
                    for k in &m.removes {
                        self.nodes.remove(&node_id(k).map_err(&err)?);
                    }
                }
                tables::ENDORSED_CERTIFICATES => {
                    for (k, v) in &m.writes {
                        let id = node_id(k).map_err(&err)?;
                        let pem = std::str::from_utf8(v)
                            .map_err(|_| err(format!("node {id}: certificate is not text")))?;
                        if self.nodes.len() >= MAX_NODES && !self.nodes.contains_key(&id) {
                            return Err(err(format!("more than {MAX_NODES} nodes")));
                        }
                        let n = self.nodes.entry(id).or_insert(Node {
                            status: NodeStatus::Pending,
                            cert: None,
                            key: None,
                            sig_cert_seen: None,
                        });
                        n.cert = Some(pem.to_string());
                        n.key = None;
                    }
                    for k in &m.removes {
                        if let Some(n) = self.nodes.get_mut(&node_id(k).map_err(&err)?) {
                            n.cert = None;
                            n.key = None;
                        }
                    }
                }
                tables::SIGNATURES => {
                    let (_, v) = m
                        .writes
                        .first()
                        .ok_or_else(|| err("empty signatures map".into()))?;
                    signature = Some(
                        serde_json::from_slice(v)
                            .map_err(|e| err(format!("malformed signature: {e}")))?,
                    );
                }
                tables::SERVICE_INFO => {
                    let (_, v) = m
                        .writes
                        .first()
                        .ok_or_else(|| err("empty service info".into()))?;
                    service = Some(
                        serde_json::from_slice(v)
                            .map_err(|e| err(format!("malformed service info: {e}")))?,
                    );
                }
                tables::COSE_SIGNATURES => {
                    let (_, v) = m
                        .writes
                        .first()
                        .ok_or_else(|| err("empty COSE signatures map".into()))?;
                    let b64: String = serde_json::from_slice(v)
                        .map_err(|e| err(format!("malformed COSE signature: {e}")))?;
                    use base64::Engine as _;
                    cose = Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .map_err(|e| err(format!("malformed COSE signature: {e}")))?,
                    );
                }
                _ => {}
            }
        }
        // The root costs a hash per level: only signatures need it.
        let (root, preimage) = if signature.is_some() || cose.is_some() {
            self.frontier
                .root_with_preimage()
                .expect("the tree holds leaf 0")
        } else {
            ([0u8; 32], None)
        };
        let is_signature = signature.is_some();
        if let Some(sig) = signature {
            self.signature(txid, &sig, &root, preimage).map_err(&err)?;
        }
        if let Some(info) = service {
            if !info.status.may_follow(self.service_status) {
                return Err(err(format!(
                    "service status cannot move from {:?} to {:?}",
                    self.service_status, info.status
                )));
            }
            let cert = Certificate::from_pem(&info.cert)
                .map_err(|e| err(format!("service certificate: {e}")))?;
            if self
                .service_cert
                .as_ref()
                .is_none_or(|(_, c)| c.der() != cert.der())
            {
                // A new service identity: node endorsements are checked against it from now on.
                for n in self.nodes.values_mut() {
                    n.key = None;
                }
            }
            self.service_status = Some(info.status);
            self.service_cert = Some((info.cert, cert));
        }
        if let Some(c) = cose {
            let (_, service) = self
                .service_cert
                .as_ref()
                .ok_or_else(|| err("COSE signature before any service certificate".into()))?;
            let key = service
                .public_key()
                .map_err(|e| err(format!("service key: {e}")))?;
            let msg = Sign1::parse(&c).map_err(|e| err(format!("COSE signature: {e}")))?;
            if let Some(ccl_crypto::cose::Value::Map(m)) = msg.text_header("ccf.v1") {
                let t = m
                    .iter()
                    .find(|(k, _)| k.as_text() == Some("txid"))
                    .and_then(|(_, v)| v.as_text());
                if t.is_some_and(|t| t != txid.to_string()) {
                    return Err(err("the COSE signature names another transaction id".into()));
                }
            }
            self.check(txid, move || {
                msg.verify(&key, Some(&root)).map_err(|_| {
                    "the service's COSE signature over the root does not verify".to_string()
                })
            });
        }
        let digest = digest.unwrap_or_else(|| e.write_set_digest());
        debug_assert_eq!(digest, e.write_set_digest());
        self.frontier.append(pd.leaf(&digest));
        self.report.transactions += 1;
        Ok(is_signature)
    }

    fn signature(
        &mut self,
        txid: TxId,
        sig: &PrimarySignature,
        root: &[u8; 32],
        preimage: Option<[u8; 64]>,
    ) -> Result<(), String> {
        if sig.seqno != txid.seqno || sig.view != txid.view {
            return Err(format!(
                "the signature claims transaction {}.{}",
                sig.view, sig.seqno
            ));
        }
        if sig.commit_seqno > sig.seqno {
            return Err(format!(
                "the signature claims commit seqno {} beyond itself",
                sig.commit_seqno
            ));
        }
        let signed_root =
            hex::decode(&sig.root).map_err(|_| "the signed root is not hex".to_string())?;
        let service = self
            .service_cert
            .as_ref()
            .map(|(_, c)| c)
            .or(self.opts.service_cert.as_ref());
        let node = self
            .nodes
            .get_mut(&sig.node)
            .ok_or_else(|| format!("signed by {}, which is not a node of the service", sig.node))?;
        if node.status == NodeStatus::Pending {
            return Err(format!(
                "signed by node {}, which is still Pending",
                sig.node
            ));
        }
        if node.key.is_none() {
            let pem = node
                .cert
                .as_ref()
                .ok_or_else(|| format!("node {} has no endorsed certificate", sig.node))?;
            let cert = Certificate::from_pem(pem)
                .map_err(|e| format!("node {} certificate: {e}", sig.node))?;
            let service = service.ok_or("a signature before any service certificate")?;
            cert.verify_issued_by(service).map_err(|_| {
                format!(
                    "node {}'s certificate is not endorsed by the service",
                    sig.node
                )
            })?;
            if hex::encode(cert.key_id()) != sig.node {
                return Err(format!(
                    "node id {} is not the hash of its certificate's key",
                    sig.node
                ));
            }
            node.key = Some((
                cert.public_key()
                    .map_err(|e| format!("node {} key: {e}", sig.node))?,
                cert.spki_der().to_vec(),
            ));
            node.sig_cert_seen = None;
        }
        if !sig.cert.is_empty() && node.sig_cert_seen.as_deref() != Some(sig.cert.as_str()) {
            let c = Certificate::from_pem(&sig.cert)
                .map_err(|e| format!("certificate in the signature: {e}"))?;
            let (_, spki) = node.key.as_ref().expect("set above");
            if c.spki_der() != &spki[..] {
                return Err(format!(
                    "the certificate in the signature is not node {}'s",
                    sig.node
                ));
            }
            node.sig_cert_seen = Some(sig.cert.clone());
        }
        if signed_root != root {
            return Err(format!(
                "the signed Merkle root does not match the ledger: one of the transactions from seqno {} to {} was altered",
                self.last_sig.max(1),
                txid.seqno
            ));
        }
        let (key, _) = node.key.clone().expect("set above");
        let der = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(&sig.sig)
                .map_err(|_| "the signature is not base64".to_string())?
        };
        let (root, node_id) = (*root, sig.node.clone());
        self.check(txid, move || {
            match preimage {
                Some(p) => key.verify_der_sha256(&p, &der),
                None => key.verify_prehashed(&root, &der),
            }
            .map_err(|_| format!("node {node_id}'s signature over the root does not verify"))
        });
        self.last_sig = txid.seqno;
        self.report.signatures += 1;
        self.report.last_signed = Some(txid);
        Ok(())
    }
}

fn chunk_error(name: &ChunkName, seqno: Option<u64>, reason: String) -> VerifyError {
    VerifyError {
        txid: None,
        seqno,
        chunk: Some(name.file_name()),
        reason,
    }
}

/// A chunk file opened for verification.
struct Opened {
    len: u64,
    /// The end of its entries.
    end: u64,
    table: Option<Vec<u32>>,
    win: Window,
}

/// Reads a file forward in large blocks and hands out contiguous slices of it.
///
/// Two threads of its own work ahead of the verification: one reads (the kernel's copy from the
/// page cache, which costs about as much as hashing the bytes), the other hashes each whole entry
/// (its write set digest) and cuts the blocks at entry boundaries, so that they are handed out
/// without another copy. The hasher's framing is only a hint: the verifier takes a digest only
/// for the exact offset and length it framed itself, and hashes the entry itself otherwise.
struct Window {
    blocks: std::sync::mpsc::Receiver<std::io::Result<Block>>,
    /// Blocks consumed go back here, for the reader to fill again.
    spare: Blocks,
    /// Bytes read and not yet consumed start at `lo`.
    buf: Vec<u8>,
    lo: usize,
    /// Write set digests computed ahead, in file order: (offset, length, digest).
    digests: std::collections::VecDeque<(u64, usize, ccl_crypto::Digest32)>,
}

/// Bytes of a file (those of `bytes` from `from` on), with the digests of the whole entries in
/// them.
struct Block {
    bytes: Vec<u8>,
    from: usize,
    digests: Vec<(u64, usize, ccl_crypto::Digest32)>,
}

/// Read buffers of about `READ_BUFFER` bytes, kept for reuse: fresh ones would cost a page fault
/// and the zeroing of a page every 4 KiB.
#[derive(Clone, Default)]
struct Blocks(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Blocks {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, block: Vec<u8>) {
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < BLOCKS_KEPT {
            spare.push(block);
        }
    }
}

/// Blocks (`READ_BUFFER` bytes each) read ahead of the hashing, and hashed ahead of the
/// verification.
const READ_AHEAD_BLOCKS: usize = 2;
/// Blocks kept for reuse: as many as can be in flight between the threads (read, hashed, being
/// verified) of two chunks.
const BLOCKS_KEPT: usize = 4 * READ_AHEAD_BLOCKS + 4;
/// Bytes left free before the data of each block read: the start of an entry cut off at the end
/// of the block before goes there, so that the entry is whole without moving the block.
const BLOCK_HEADROOM: usize = 64 << 10;

/// Reads `[pos, end)` of a file in blocks of up to `READ_BUFFER` bytes, each after
/// `BLOCK_HEADROOM` free bytes.
fn read_ahead(
    file: &File,
    mut pos: u64,
    end: u64,
    spares: &Blocks,
    tx: &std::sync::mpsc::SyncSender<std::io::Result<Vec<u8>>>,
) {
    while pos < end {
        let mut block = spares.take();
        block.resize(BLOCK_HEADROOM + READ_BUFFER.min((end - pos) as usize), 0);
        let read = loop {
            match std::os::unix::fs::FileExt::read_at(file, &mut block[BLOCK_HEADROOM..], pos) {
                Ok(0) => break Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(got) => {
                    block.truncate(BLOCK_HEADROOM + got);
                    pos += got as u64;
                    break Ok(block);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
        };
        let failed = read.is_err();
        if tx.send(read).is_err() || failed {
            return;
        }
    }
}

/// Cuts the blocks read from file offset `start` at entry boundaries and hashes the entries, for
/// as long as their headers parse; after one that does not, passes the blocks on as they are.
fn hash_ahead(
    start: u64,
    raw: &std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    tx: &std::sync::mpsc::SyncSender<std::io::Result<Block>>,
) {
    // Bytes after the last whole entry sent, and the file offset of the first of them.
    let mut carry: Vec<u8> = Vec::new();
    let mut at = start;
    let mut framing = true;
    let send = |block: std::io::Result<Block>| tx.send(block).is_ok();
    loop {
        let (mut bytes, from) = match raw.recv() {
            Ok(Ok(block)) => (block, BLOCK_HEADROOM),
            Ok(Err(e)) => {
                let _ = send(Err(e));
                return;
            }
            Err(_) => break,
        };
        // The block, preceded by what was carried over.
        let from = if carry.len() <= from {
            let from = from - carry.len();
            bytes[from..BLOCK_HEADROOM].copy_from_slice(&carry);
            carry.clear();
            from
        } else {
            // An entry longer than the headroom: it grows in `carry` (copied once per block).
            carry.extend_from_slice(&bytes[from..]);
            std::mem::swap(&mut carry, &mut bytes);
            carry.clear();
            0
        };
        let mut digests = Vec::new();
        let mut framed = from;
        while framing {
            let rest = &bytes[framed..];
            if rest.len() < ENTRY_HEADER_SIZE {
                break;
            }
            match entry_len(&rest[..ENTRY_HEADER_SIZE]) {
                Ok(n) if n <= rest.len() => {
                    let digest = ccl_crypto::sha256(&rest[..n]);
                    digests.push((at + (framed - from) as u64, n, digest));
                    framed += n;
                }
                Ok(_) => break,
                Err(_) => framing = false,
            }
        }
        if framing {
            carry.extend_from_slice(&bytes[framed..]);
            bytes.truncate(framed);
        }
        at += (bytes.len() - from) as u64;
        if bytes.len() > from
            && !send(Ok(Block {
                bytes,
                from,
                digests,
            }))
        {
            return;
        }
    }
    // The end of the range: what is left is a torn or bad entry, for the verifier to report.
    if !carry.is_empty() {
        let _ = send(Ok(Block {
            bytes: carry,
            from: 0,
            digests: Vec::new(),
        }));
    }
}

impl Window {
    /// A window on the bytes of `file` from offset `start` to `end`.
    fn new(file: File, start: u64, end: u64, spare: &Blocks) -> Self {
        let (raw_tx, raw) = std::sync::mpsc::sync_channel(READ_AHEAD_BLOCKS);
        let (tx, blocks) = std::sync::mpsc::sync_channel(READ_AHEAD_BLOCKS);
        let spares = spare.clone();
        let spawned = std::thread::Builder::new()
            .name("ccl-read-ahead".into())
            .spawn(move || read_ahead(&file, start, end, &spares, &raw_tx))
            .and_then(|_| {
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name("ccl-hash-ahead".into())
                    .spawn(move || hash_ahead(start, &raw, &tx))
            });
        if let Err(e) = spawned {
            // No thread: the window reports the failure at its first read.
            let _ = tx.try_send(Err(e));
        }
        drop(tx);
        Window {
            blocks,
            spare: spare.clone(),
            buf: Vec::new(),
            lo: 0,
            digests: std::collections::VecDeque::new(),
        }
    }

    /// The next `n` bytes (without consuming them).
    fn get(&mut self, n: usize) -> std::io::Result<&[u8]> {
        while self.buf.len() - self.lo < n {
            let block = match self.blocks.recv() {
                Ok(block) => block?,
                // The reader stopped at the end of the range.
                Err(_) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            };
            self.digests.extend(block.digests);
            if self.lo == self.buf.len() {
                // Everything before was consumed (the usual case: blocks end at entries).
                let old = std::mem::replace(&mut self.buf, block.bytes);
                self.spare.give(old);
                self.lo = block.from;
            } else {
                self.buf.drain(..self.lo);
                self.buf.extend_from_slice(&block.bytes[block.from..]);
                self.spare.give(block.bytes);
                self.lo = 0;
            }
        }
        Ok(&self.buf[self.lo..self.lo + n])
    }

    /// The write set digest of the entry at file offset `pos` of `len` bytes, if the reader
    /// framed exactly that entry.
    fn digest(&mut self, pos: u64, len: usize) -> Option<ccl_crypto::Digest32> {
        while let Some(&(p, n, d)) = self.digests.front() {
            if p > pos {
                return None;
            }
            self.digests.pop_front();
            if p == pos {
                return (n == len).then_some(d);
            }
        }
        None
    }

    fn advance(&mut self, n: usize) {
        assert!(
            self.lo + n <= self.buf.len(),
            "advance within what was read"
        );
        self.lo += n;
    }
}

impl Verifier<'_> {
    fn check(&self, txid: TxId, run: impl FnOnce() -> Result<(), String> + Send + 'static) {
        // The worker only stops when the channel closes: a send cannot fail before that.
        let _ = self.checks.send(Check {
            txid,
            run: Box::new(run),
        });
    }
}

fn node_id(k: &[u8]) -> Result<String, String> {
    std::str::from_utf8(k)
        .map(str::to_string)
        .map_err(|_| "a node id is not text".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{ENTRY_FORMAT_VERSION, GCM_HEADER_SIZE};
    use proptest::prelude::*;

    /// An entry-shaped run of bytes: a header that frames `body` bytes after it.
    fn fake_entry(body: usize, fill: u8) -> Vec<u8> {
        let mut e = vec![ENTRY_FORMAT_VERSION, 0];
        e.extend_from_slice(&(body as u64).to_le_bytes()[..6]);
        e.resize(ENTRY_HEADER_SIZE + body, fill);
        e
    }

    /// Reads `file` from `start` to `end` through a window the way the verifier does, entry by
    /// entry; returns each entry's offset, whether its digest came from the hasher, and the bytes
    /// left at the end (a torn or bad entry).
    fn walk(file: &Path, start: u64, end: u64) -> (Vec<(u64, bool)>, u64) {
        let bytes = std::fs::read(file).unwrap();
        let mut win = Window::new(File::open(file).unwrap(), start, end, &Blocks::default());
        let mut pos = start;
        let mut seen = Vec::new();
        while end - pos >= ENTRY_HEADER_SIZE as u64 {
            let header = win.get(ENTRY_HEADER_SIZE).unwrap();
            let Ok(n) = entry_len(header) else { break };
            if n as u64 > end - pos {
                break;
            }
            let digest = win.digest(pos, n);
            let got = win.get(n).unwrap();
            let at = pos as usize;
            assert_eq!(got, &bytes[at..at + n], "the bytes of the entry at {pos}");
            if let Some(d) = digest {
                assert_eq!(
                    d,
                    ccl_crypto::sha256(got),
                    "the digest of the entry at {pos}"
                );
            }
            seen.push((pos, digest.is_some()));
            win.advance(n);
            pos += n as u64;
        }
        (seen, end - pos)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Entries of any size (from a few bytes to beyond the headroom and the read buffer),
        /// then optionally a torn entry or a bad header: the window hands out every entry's exact
        /// bytes, and every digest computed ahead is that of the entry asked for. While headers
        /// parse, every whole entry gets its digest ahead.
        #[test]
        fn window_frames_and_hashes_entries(
            sizes in prop::collection::vec(
                prop_oneof![
                    8 * 4 => (GCM_HEADER_SIZE + 8)..2_000usize,
                    2 => 60_000..140_000usize,
                    1 => 1_000_000..2_300_000usize,
                ],
                1..40,
            ),
            tail in 0..3u8,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("chunk");
            let mut bytes = vec![0u8; CHUNK_HEADER_SIZE];
            let mut starts = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                starts.push(bytes.len() as u64);
                bytes.extend_from_slice(&fake_entry(*n, i as u8));
            }
            let whole = bytes.len() as u64;
            match tail {
                // A torn entry: its header promises more than the file holds.
                1 => bytes.extend_from_slice(&fake_entry(5_000, 7)[..3_000]),
                // A header that does not parse, then more bytes.
                2 => bytes.extend_from_slice(&[0xff; 700]),
                _ => {}
            }
            std::fs::write(&path, &bytes).unwrap();
            let (seen, left) = walk(&path, CHUNK_HEADER_SIZE as u64, bytes.len() as u64);
            let offsets: Vec<u64> = seen.iter().map(|(p, _)| *p).collect();
            prop_assert_eq!(offsets, starts);
            prop_assert!(seen.iter().all(|(_, ahead)| *ahead), "every whole entry hashed ahead");
            prop_assert_eq!(left, bytes.len() as u64 - whole);
        }
    }

    /// After a header that does not parse, the window still hands out the bytes after it, with
    /// no digests: the verifier hashes for itself.
    #[test]
    fn window_without_framing_hands_out_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk");
        let mut bytes = vec![0u8; CHUNK_HEADER_SIZE];
        bytes.extend_from_slice(&[0xee; 100]);
        for i in 0..3000u32 {
            bytes.extend_from_slice(&fake_entry(1_000, i as u8));
        }
        std::fs::write(&path, &bytes).unwrap();
        let mut win = Window::new(
            File::open(&path).unwrap(),
            CHUNK_HEADER_SIZE as u64,
            bytes.len() as u64,
            &Blocks::default(),
        );
        let mut pos = CHUNK_HEADER_SIZE;
        for step in [100usize, 1_008, 2_000_000, 1_008] {
            assert_eq!(win.digest(pos as u64, step), None);
            assert_eq!(win.get(step).unwrap(), &bytes[pos..pos + step]);
            win.advance(step);
            pos += step;
        }
        assert!(win.get(bytes.len()).is_err(), "past the end is an error");
    }
}
