//! Writes a backup forwards to the primary, in batches.
//!
//! A backup does not execute writes: it sends them to the primary and passes the primary's
//! answer back to its client. Sending each write as its own HTTP request over its own connection
//! cost as much TLS, HTTP and system-call work on both nodes as the client's own request, so the
//! writes waiting at a moment go together instead: one `POST /internal/forward` carries a batch
//! of requests (each with its caller) and its answer carries one answer per request, in order.
//!
//! On the backup, each primary address has a [`Lane`]: a queue of requests and at most
//! [`FORWARD_BATCHES_IN_FLIGHT`] sender tasks. A request joins the queue; a sender takes what is
//! queued (at most [`MAX_FORWARD_BATCH`] requests, [`MAX_FORWARD_BATCH_BYTES`]), sends it, hands
//! out the answers and takes the next batch. Batches form by themselves under load (requests
//! queue while the senders are busy, and a sender that starts first lets the handlers already
//! woken queue theirs: [`FORWARD_GATHER_YIELDS`]) and a lone request leaves at once.
//!
//! On the primary, [`serve_batch`] runs each request of a batch through the node's router as the
//! caller the backup names (believed only from a trusted node), concurrently, as if each had come
//! on its own connection; a request that reaches a node that is no longer primary is refused
//! (never forwarded again).
//!
//! Invariant: every queued request is answered: with the primary's answer, or with
//! `503 NoPrimary` when the batch could not be delivered or answered.

use crate::Shared;
use crate::api::{ApiError, Caller};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ccl_ledger::txid::TxId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tower::ServiceExt;

/// Path of the batch endpoint (trusted nodes only).
pub const FORWARD_PATH: &str = "/internal/forward";
/// Most requests in one batch.
pub const MAX_FORWARD_BATCH: usize = 64;
/// Largest batch, in bytes of requests (bodies, paths and headers). One request always fits:
/// its body is at most [`crate::api::MAX_FORWARDED_BODY`].
pub const MAX_FORWARD_BATCH_BYTES: usize = 8 << 20;
/// Largest answer body passed back for one forwarded request: with [`MAX_FORWARD_BATCH`], a batch
/// answer stays under the client's [`ccl_client::MAX_RESPONSE`]. A larger answer (no write
/// endpoint gives one) becomes an error.
pub const MAX_FORWARDED_ANSWER: usize = 512 << 10;
/// Batches a backup has in flight to the primary at once. More would make smaller batches; fewer
/// would leave the primary idle while a batch travels.
pub const FORWARD_BATCHES_IN_FLIGHT: usize = 2;
/// Times a sender that has just started yields to the tasks ready on its runtime before it takes
/// the queue. The clients of a node tend to write in bursts (a commit releases them together):
/// the handlers already woken by a burst then queue their requests first and go in the first
/// batch, instead of waiting a round trip for the next one. A yield with no other task ready
/// returns at once, so a lone request is not held up. Measured: 9,472–9,821 → 10,309–10,498
/// committed writes/s at 64 clients spread over 3 nodes (BENCHMARKS.md).
pub const FORWARD_GATHER_YIELDS: usize = 2;
/// A batch gives up after this long (its requests are answered `503 NoPrimary`).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Header of the primary's batch answer: the last transaction id after the batch ran. The
/// forwarding node waits until it has that transaction before answering, so that a client reads
/// its own writes on the node it talks to.
pub const SEEN_TXID: &str = "x-ccl-seen-txid";
/// How long a backup waits for a forwarded write to reach it.
pub const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(5);

/// Headers that belong to one HTTP hop, not to the request or answer.
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
}

/// The end-to-end headers of a request or answer, to carry in a batch.
fn carried_headers(headers: &axum::http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(k, _)| !hop_by_hop(k))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// One client request, as the backup forwards it.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// The caller's certificate id (hex SHA-256 of its DER), if it presented one.
    pub caller: Option<String>,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Forwarded {
    /// Bytes it adds to a batch (an upper bound of its encoding).
    fn size(&self) -> usize {
        let fields = self.caller.as_ref().map_or(0, String::len)
            + self.method.len()
            + self.path.len()
            + self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 20)
                .sum::<usize>();
        fields + 64
    }
}

/// The primary's answer to one forwarded request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Answer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut out = Response::builder().status(status);
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_bytes(v))
                && !hop_by_hop(&k)
            {
                out = out.header(k, v);
            }
        }
        out.body(Body::from(self.body))
            .unwrap_or_else(|e| ApiError::internal(e).into_response())
    }
}

/// Why a forwarded request got no answer of its own: every request of its batch gets this.
#[derive(Clone, Debug)]
enum Refusal {
    /// The batch was not delivered or not answered.
    NoPrimary(&'static str),
    /// The primary refused the batch as a whole.
    Answer(Arc<Answer>),
}

impl Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::NoPrimary(why) => no_primary(why),
            Refusal::Answer(a) => Arc::unwrap_or_clone(a).into_response(),
        }
    }
}

/// Marks a request the primary runs from a batch: it is never forwarded again.
#[derive(Clone, Copy, Debug)]
pub struct FromBatch;

/// `503 NoPrimary` with `Retry-After`.
pub fn no_primary(why: &str) -> Response {
    let mut r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NoPrimary", why).into_response();
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    r
}

/// The request of a client of this node, ready to forward.
pub async fn prepare(
    caller: Option<Caller>,
    req: axum::extract::Request,
) -> Result<Forwarded, Response> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, crate::api::MAX_FORWARDED_BODY)
        .await
        .map_err(|_| {
            ApiError::bad("RequestTooLarge", "the request body is too large").into_response()
        })?;
    let headers = carried_headers(&parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    Ok(Forwarded {
        caller: caller.and_then(|c| c.cert_id),
        method: parts.method.as_str().to_string(),
        path,
        headers,
        body: body.to_vec(),
    })
}

/// Forwards a client's request to the primary at `address` and gives the answer for the client,
/// once this node holds what the primary had executed when it answered (read-your-writes).
pub async fn forward(shared: &Shared, address: &str, request: Forwarded) -> Response {
    let (answer, seen) = match shared.forwarder.send(address, request).await {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    if let Some(seen) = seen {
        // Woken as entries reach this node's engine, not polled.
        let mut logged = shared.replica.watch_appended();
        let _ = tokio::time::timeout(READ_YOUR_WRITES_WAIT, async {
            while shared.handle.tx_status(seen) == ccl_engine::TxStatus::Unknown {
                if logged.changed().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
        .await;
    }
    answer.into_response()
}

type Reply = oneshot::Sender<Result<(Answer, Option<TxId>), Refusal>>;

/// Batches to the primaries this node forwards to, by address.
pub struct Forwarder {
    service_cert_pem: String,
    identity_pem: String,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
}

/// Requests waiting for one primary, and the connections to it.
struct Lane {
    address: String,
    client: ccl_client::Client,
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    queued: Vec<(Forwarded, Reply)>,
    /// Sender tasks running (at most [`FORWARD_BATCHES_IN_FLIGHT`]).
    senders: usize,
    /// Idle keep-alive connections.
    idle: Vec<ccl_client::Connection>,
}

impl Forwarder {
    pub fn new(service_cert_pem: String, identity_pem: String) -> Self {
        Forwarder {
            service_cert_pem,
            identity_pem,
            lanes: Mutex::new(HashMap::new()),
        }
    }

    fn lane(&self, address: &str) -> Result<Arc<Lane>, ccl_client::ClientError> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = lanes.get(address) {
            return Ok(l.clone());
        }
        let client = ccl_client::Client::new(
            &format!("https://{address}"),
            &self.service_cert_pem,
            Some(&self.identity_pem),
        )?;
        let lane = Arc::new(Lane {
            address: address.to_string(),
            client,
            state: Mutex::default(),
        });
        lanes.insert(address.to_string(), lane.clone());
        Ok(lane)
    }

    /// Sends `request` in the next batch to `address`: the primary's answer and the last
    /// transaction id it had then, or the answer to give when the batch failed.
    async fn send(
        &self,
        address: &str,
        request: Forwarded,
    ) -> Result<(Answer, Option<TxId>), Refusal> {
        let lane = self.lane(address).map_err(|e| {
            tracing::warn!(primary = %address, error = %e, "forwarding");
            Refusal::NoPrimary("the primary could not be reached")
        })?;
        let (reply, answer) = oneshot::channel();
        let start_sender = {
            let mut s = lane.lock();
            s.queued.push((request, reply));
            let start = s.senders < FORWARD_BATCHES_IN_FLIGHT;
            if start {
                s.senders += 1;
            }
            start
        };
        if start_sender {
            tokio::spawn(lane.run());
        }
        answer
            .await
            .unwrap_or(Err(Refusal::NoPrimary("the primary could not be reached")))
    }
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sender: sends batches while requests are queued.
    async fn run(self: Arc<Self>) {
        // Should this task end early (a panic, the runtime stopping), the lane must not count
        // it: later requests would wait for a sender that is gone.
        struct Leave<'a> {
            lane: &'a Lane,
            counted: bool,
        }
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                if self.counted {
                    self.lane.lock().senders -= 1;
                }
            }
        }
        let mut leave = Leave {
            lane: &self,
            counted: true,
        };
        for _ in 0..FORWARD_GATHER_YIELDS {
            tokio::task::yield_now().await;
        }
        loop {
            let (batch, conn) = {
                let mut s = self.lock();
                if s.queued.is_empty() {
                    // Under the same lock as the queue seen empty: a request queued after this
                    // sees one sender fewer and starts one.
                    s.senders -= 1;
                    leave.counted = false;
                    return;
                }
                let mut n = 0;
                let mut bytes = 0;
                for (r, _) in &s.queued {
                    bytes += r.size();
                    if n == MAX_FORWARD_BATCH || (n > 0 && bytes > MAX_FORWARD_BATCH_BYTES) {
                        break;
                    }
                    n += 1;
                }
                let batch: Vec<_> = s.queued.drain(..n).collect();
                (batch, s.idle.pop())
            };
            let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            match tokio::time::timeout(FORWARD_TIMEOUT, self.exchange(conn, &requests)).await {
                Ok(Ok((answers, seen, conn))) => {
                    {
                        let mut s = self.lock();
                        if s.idle.len() < FORWARD_BATCHES_IN_FLIGHT {
                            s.idle.push(conn);
                        }
                    }
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok((answer, seen)));
                    }
                }
                Ok(Err(refused)) => {
                    for reply in replies {
                        let _ = reply.send(Err(refused.clone()));
                    }
                }
                Err(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(Refusal::NoPrimary(
                            "the primary did not answer in time",
                        )));
                    }
                }
            }
        }
    }

    /// One batch's round trip: one answer per request, in order.
    async fn exchange(
        &self,
        conn: Option<ccl_client::Connection>,
        requests: &[Forwarded],
    ) -> Result<(Vec<Answer>, Option<TxId>, ccl_client::Connection), Refusal> {
        let unreachable = |e: ccl_client::ClientError| {
            tracing::warn!(primary = %self.address, error = %e, "forwarding");
            Refusal::NoPrimary("the primary could not be reached")
        };
        let mut conn = match conn {
            Some(c) => c,
            None => self.client.connect().await.map_err(unreachable)?,
        };
        let body = postcard::to_stdvec(requests).map_err(|e| {
            tracing::error!(error = %e, "encoding a forwarded batch");
            Refusal::NoPrimary("the request could not be forwarded")
        })?;
        let resp = conn
            .send_raw(ccl_client::RawRequest {
                method: Method::POST,
                path: FORWARD_PATH.to_string(),
                headers: vec![(
                    header::CONTENT_TYPE.as_str().to_string(),
                    ccl_consensus::net::RPC_CONTENT_TYPE.to_string(),
                )],
                body,
            })
            .await
            .map_err(unreachable)?;
        if resp.status != StatusCode::OK {
            // The primary refused the batch as a whole (it is no longer primary, say): each
            // request gets that answer.
            return Err(Refusal::Answer(Arc::new(Answer {
                status: resp.status.as_u16(),
                headers: carried_headers(&resp.headers),
                body: resp.body.to_vec(),
            })));
        }
        let seen = resp
            .headers
            .get(SEEN_TXID)
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.parse::<TxId>().ok());
        let answers: Vec<Answer> = postcard::from_bytes(&resp.body).map_err(|e| {
            tracing::warn!(primary = %self.address, error = %e, "malformed batch answer");
            Refusal::NoPrimary("the primary's answer was malformed")
        })?;
        if answers.len() != requests.len() {
            tracing::warn!(primary = %self.address, "batch answer of the wrong length");
            return Err(Refusal::NoPrimary("the primary's answer was malformed"));
        }
        Ok((answers, seen, conn))
    }
}

/// The node's router with the batch endpoint, which runs each request of a batch through `app`.
pub fn with_batches(app: Router, shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            FORWARD_PATH,
            axum::routing::post(serve_batch).layer(axum::extract::DefaultBodyLimit::max(
                MAX_FORWARD_BATCH_BYTES,
            )),
        )
        .with_state(Batches {
            shared,
            app: app.clone(),
        })
        .merge(app)
}

#[derive(Clone)]
struct Batches {
    shared: Arc<Shared>,
    app: Router,
}

/// `POST /internal/forward` (trusted nodes only): runs a backup's batch, answers each request.
async fn serve_batch(
    State(b): State<Batches>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::replication::rpc_caller(&b.shared, &caller)?;
    if !b.shared.is_primary() {
        return Ok(no_primary("this node is not the primary"));
    }
    let requests: Vec<Forwarded> = postcard::from_bytes(&body)
        .map_err(|e| ApiError::bad("MalformedBatch", format!("malformed forwarded batch: {e}")))?;
    if requests.is_empty() || requests.len() > MAX_FORWARD_BATCH {
        return Err(ApiError::bad(
            "MalformedBatch",
            format!(
                "a forwarded batch holds 1 to {MAX_FORWARD_BATCH} requests, not {}",
                requests.len()
            ),
        ));
    }
    // Concurrently, as if each had come on its own connection.
    let running: Vec<_> = requests
        .into_iter()
        .map(|r| tokio::spawn(run(b.app.clone(), r)))
        .collect();
    let mut answers = Vec::with_capacity(running.len());
    for r in running {
        answers.push(match r.await {
            Ok(a) => a,
            Err(e) => error_answer(&ApiError::internal(e)),
        });
    }
    let body = postcard::to_stdvec(&answers).map_err(ApiError::internal)?;
    let last = b.shared.handle.last_seqno();
    let seen = format!("{}.{last}", b.shared.handle.view_of(last).unwrap_or(0));
    let mut resp = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(ccl_consensus::net::RPC_CONTENT_TYPE),
        )],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&seen) {
        resp.headers_mut().insert(SEEN_TXID, v);
    }
    Ok(resp)
}

/// Runs one forwarded request as its caller.
async fn run(app: Router, r: Forwarded) -> Answer {
    let req = match request_of(r) {
        Ok(req) => req,
        Err(e) => return error_answer(&e),
    };
    let resp = match app.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, MAX_FORWARDED_ANSWER).await {
        Ok(body) => Answer {
            status: parts.status.as_u16(),
            headers: carried_headers(&parts.headers),
            body: body.to_vec(),
        },
        Err(_) => error_answer(&ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "AnswerTooLarge",
            format!("the answer is over {MAX_FORWARDED_ANSWER} bytes: call the primary"),
        )),
    }
}

fn error_answer(e: &ApiError) -> Answer {
    Answer {
        status: e.status.as_u16(),
        headers: vec![(
            header::CONTENT_TYPE.as_str().to_string(),
            b"application/json".to_vec(),
        )],
        body: e.json().to_string().into_bytes(),
    }
}

/// The request a batch carries, as its caller's.
fn request_of(r: Forwarded) -> Result<axum::extract::Request, ApiError> {
    let malformed =
        |what: &str| ApiError::bad("MalformedRequest", format!("forwarded request: {what}"));
    let method = Method::from_bytes(r.method.as_bytes()).map_err(|_| malformed("bad method"))?;
    let uri: axum::http::Uri = r.path.parse().map_err(|_| malformed("bad path"))?;
    let mut req = axum::extract::Request::new(Body::from(r.body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    for (k, v) in r.headers {
        let k = HeaderName::try_from(k).map_err(|_| malformed("bad header name"))?;
        let v = HeaderValue::from_bytes(&v).map_err(|_| malformed("bad header value"))?;
        if !hop_by_hop(&k) {
            req.headers_mut().append(k, v);
        }
    }
    // A certificate id is 64 hex digits; anything else is no certificate.
    let cert_id = r
        .caller
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|id| id.to_ascii_lowercase());
    req.extensions_mut().insert(Caller {
        cert_id,
        cert: None,
    });
    req.extensions_mut().insert(FromBatch);
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn forwarded() -> impl Strategy<Value = Forwarded> {
        (
            proptest::option::of("[0-9a-f]{64}"),
            "[A-Z]{1,8}",
            "/[ -~]{0,40}",
            proptest::collection::vec(
                (
                    "[a-z-]{1,20}",
                    proptest::collection::vec(any::<u8>(), 0..40),
                ),
                0..6,
            ),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(caller, method, path, headers, body)| Forwarded {
                caller,
                method,
                path,
                headers,
                body,
            })
    }

    proptest! {
        /// Batches and their answers decode to what was encoded; a batch's size bounds its
        /// encoding; a truncated encoding never decodes to the whole batch.
        #[test]
        fn batches_round_trip(batch in proptest::collection::vec(forwarded(), 1..8),
                              status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let bytes = postcard::to_stdvec(&batch).expect("encode");
            let back: Vec<Forwarded> = postcard::from_bytes(&bytes).expect("decode");
            prop_assert_eq!(&back, &batch);
            prop_assert!(batch.iter().map(Forwarded::size).sum::<usize>() >= bytes.len());
            for cut in 0..bytes.len() {
                prop_assert!(postcard::from_bytes::<Vec<Forwarded>>(&bytes[..cut]).map_or(true, |b| b != batch));
            }
            let answers = vec![Answer { status, headers: vec![("x-a".into(), b"1".to_vec())], body }];
            let bytes = postcard::to_stdvec(&answers).expect("encode");
            prop_assert_eq!(postcard::from_bytes::<Vec<Answer>>(&bytes).expect("decode"), answers);
        }
    }

    fn mk(caller: Option<&str>, method: &str, path: &str, header: (&str, &[u8])) -> Forwarded {
        Forwarded {
            caller: caller.map(str::to_string),
            method: method.into(),
            path: path.into(),
            headers: vec![(header.0.into(), header.1.to_vec())],
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn a_forwarded_request_keeps_only_a_well_formed_caller() {
        let id = "AB".repeat(32);
        let req = request_of(mk(
            Some(&id),
            "POST",
            "/app/transactions?x=1",
            ("x-a", b"1"),
        ))
        .expect("well formed");
        let caller = req.extensions().get::<Caller>().expect("caller");
        assert_eq!(caller.cert_id.as_deref(), Some("ab".repeat(32).as_str()));
        assert!(caller.cert.is_none());
        assert!(req.extensions().get::<FromBatch>().is_some());
        assert_eq!(req.uri().query(), Some("x=1"));
        for bad in ["-", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            let req = request_of(mk(Some(bad), "GET", "/", ("x-a", b"1"))).expect("well formed");
            assert!(
                req.extensions()
                    .get::<Caller>()
                    .expect("caller")
                    .cert_id
                    .is_none(),
                "{bad}"
            );
        }
        // Hop-by-hop headers are the receiving hop's own business.
        let req = request_of(mk(None, "GET", "/", ("content-length", b"99"))).expect("ok");
        assert!(req.headers().get(header::CONTENT_LENGTH).is_none());
        for (method, path, h) in [
            ("GE T", "/", ("x-a", &b"1"[..])),
            ("GET", "not a path with spaces", ("x-a", b"1")),
            ("GET", "/", ("bad header", b"1")),
            ("GET", "/", ("x-a", b"line\nbreak")),
        ] {
            let e = request_of(mk(None, method, path, h)).expect_err("malformed");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
    }

    struct Node {
        shared: Arc<Shared>,
        address: String,
        stop: Option<oneshot::Sender<()>>,
        served: tokio::task::JoinHandle<Result<(), crate::NodeError>>,
        _dir: tempfile::TempDir,
    }

    /// A single-node service, serving on loopback.
    async fn node() -> Node {
        let dir = tempfile::tempdir().expect("temporary directory");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let listen = listener.local_addr().expect("address");
        let cfg = crate::test_config(dir.path().join("node"), listen);
        let c = cfg.clone();
        let (shared, _) = tokio::task::spawn_blocking(move || crate::open(&c))
            .await
            .expect("open task")
            .expect("open");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(crate::serve(cfg, shared.clone(), listener, async {
            let _ = stopped.await;
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !shared.is_primary() {
            assert!(tokio::time::Instant::now() < deadline, "no primary");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Node {
            shared,
            address: listen.to_string(),
            stop: Some(stop),
            served,
            _dir: dir,
        }
    }

    impl Node {
        /// A client presenting `identity` (PEM certificate and key), or none.
        fn client(&self, identity: Option<&str>) -> ccl_client::Client {
            ccl_client::Client::new(
                &format!("https://{}", self.address),
                &self.shared.service_cert_pem,
                identity,
            )
            .expect("client")
        }

        fn node_identity(&self) -> String {
            let e = self.shared.engine.lock().expect("engine");
            let id = e.identity();
            format!("{}{}", id.node_cert.pem(), &*id.node_key.to_pkcs8_pem())
        }

        async fn stop(mut self) {
            let _ = self.stop.take().map(|s| s.send(()));
            let _ = self.served.await;
        }
    }

    async fn post_batch(c: &ccl_client::Client, body: Vec<u8>) -> ccl_client::Response {
        c.connect()
            .await
            .expect("connect")
            .send_raw(ccl_client::RawRequest {
                method: Method::POST,
                path: FORWARD_PATH.into(),
                headers: vec![],
                body,
            })
            .await
            .expect("answer")
    }

    fn error_code(r: &ccl_client::Response) -> String {
        r.json().expect("JSON error")["error"]["code"]
            .as_str()
            .expect("code")
            .to_string()
    }

    fn get(path: &str) -> Forwarded {
        Forwarded {
            caller: None,
            method: "GET".into(),
            path: path.into(),
            headers: vec![],
            body: vec![],
        }
    }

    /// The primary answers a trusted node's batch one answer per request, in order, each as its
    /// own caller would have been answered; it refuses other callers and malformed batches,
    /// changing nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_primary_answers_each_request_of_a_batch_in_order() {
        let n = node().await;
        let me = n.client(Some(&n.node_identity()));
        let write = Forwarded {
            caller: None,
            method: "POST".into(),
            path: "/app/transactions?api-version=2022-05-13".into(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: br#"{"contents":"x"}"#.to_vec(),
        };
        let batch = vec![
            get("/node/tx?transaction_id=2.7"),
            write,
            get("/no/such/endpoint"),
            Forwarded {
                method: "GE T".into(),
                ..get("/node/state")
            },
            get("/node/tx?transaction_id=3.9"),
        ];
        let before = n.shared.handle.last_seqno();
        let r = post_batch(&me, postcard::to_stdvec(&batch).expect("encode")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.headers.get(SEEN_TXID).is_some());
        let answers: Vec<Answer> = postcard::from_bytes(&r.body).expect("answers");
        let status: Vec<u16> = answers.iter().map(|a| a.status).collect();
        assert_eq!(status, [200, 401, 404, 400, 200]);
        let json =
            |a: &Answer| -> serde_json::Value { serde_json::from_slice(&a.body).expect("JSON") };
        assert_eq!(json(&answers[0])["transaction_id"], "2.7");
        assert_eq!(json(&answers[4])["transaction_id"], "3.9");
        assert_eq!(json(&answers[3])["error"]["code"], "MalformedRequest");
        assert_eq!(
            n.shared.handle.last_seqno(),
            before,
            "an unauthorized write wrote"
        );

        // Malformed or oversize batches: 400 or 413, nothing runs.
        let too_many: Vec<Forwarded> = (0..=MAX_FORWARD_BATCH)
            .map(|_| get("/node/state"))
            .collect();
        for body in [
            b"\xff\xff\xff".to_vec(),
            postcard::to_stdvec(&Vec::<Forwarded>::new()).expect("encode"),
            postcard::to_stdvec(&too_many).expect("encode"),
        ] {
            let r = post_batch(&me, body).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            assert_eq!(error_code(&r), "MalformedBatch");
        }
        let r = post_batch(&me, vec![0; MAX_FORWARD_BATCH_BYTES + 1]).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

        // Only trusted nodes: no certificate 401, another certificate 403.
        let body = postcard::to_stdvec(&batch).expect("encode");
        let r = post_batch(&n.client(None), body.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let key = ccl_crypto::SigningKey::generate(ccl_crypto::Curve::P384).expect("key");
        let cert =
            ccl_crypto::cert::self_signed(&key, &ccl_crypto::cert::CertSpec::client("stranger"))
                .expect("certificate");
        let stranger = format!("{}{}", cert.pem(), &*key.to_pkcs8_pem());
        let r = post_batch(&n.client(Some(&stranger)), body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(n.shared.handle.last_seqno(), before);
        n.stop().await;
    }

    /// Many requests forwarded at once go in batches, and each gets its own answer. Bursts
    /// with pauses between them make senders end while new requests arrive: none is stranded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_forwarded_requests_each_get_their_own_answer() {
        let n = node().await;
        for burst in 0..20 {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..30 {
                let shared = n.shared.clone();
                let address = n.address.clone();
                tasks.spawn(async move {
                    let txid = format!("{}.{}", burst + 2, i + 1);
                    let r = shared
                        .forwarder
                        .send(&address, get(&format!("/node/tx?transaction_id={txid}")))
                        .await;
                    (txid, r)
                });
            }
            while let Some(r) = tokio::time::timeout(Duration::from_secs(60), tasks.join_next())
                .await
                .expect("every forwarded request is answered")
            {
                let (txid, r) = r.expect("task");
                let (answer, seen) = r.expect("answered");
                assert_eq!(answer.status, 200);
                let v: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
                assert_eq!(v["transaction_id"], txid.as_str());
                assert!(seen.is_some());
            }
            tokio::time::sleep(Duration::from_millis(burst % 3)).await;
        }
        // The senders are gone; connections are kept for the next batches.
        let lane = n.shared.forwarder.lane(&n.address).expect("lane");
        {
            let s = lane.lock();
            assert_eq!(s.senders, 0);
            assert!(s.queued.is_empty());
            assert!(!s.idle.is_empty() && s.idle.len() <= FORWARD_BATCHES_IN_FLIGHT);
        }
        n.stop().await;
    }

    /// A primary that cannot be reached: the request is answered 503 NoPrimary.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_primary_gives_no_primary() {
        let n = node().await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address").to_string()
        };
        let r = forward(&n.shared, &closed, get("/node/state")).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get("retry-after").is_some());
        n.stop().await;
    }
}
