//! The simulated network: Raft's RPCs (postcard-encoded, exactly as `ccl_consensus::net` encodes
//! them) and the clients' requests, framed over turmoil's simulated TCP.
//!
//! A frame is a big-endian `u32` length, then a kind byte and the body (requests) or just the body
//! (responses). One request at a time per connection; a connection that errs or times out is
//! dropped and reopened on the next call.

use ccl_consensus::net::RpcErr;
use ccl_consensus::openraft::error::{NetworkError, RPCError, RaftError};
use ccl_consensus::openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use ccl_consensus::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use ccl_consensus::{NodeAddr, TypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use turmoil::net::TcpStream;

/// Every replica serves Raft and clients on this port.
pub const PORT: u16 = 7000;
/// Frame kinds.
pub const KIND_APPEND: u8 = 1;
pub const KIND_VOTE: u8 = 2;
pub const KIND_CLIENT: u8 = 3;
/// Largest frame accepted (as `ccl_consensus::MAX_RPC_BYTES`).
pub const MAX_FRAME: usize = ccl_consensus::MAX_RPC_BYTES;
/// Connecting gives up after this long (and the RPC's own deadline applies as well).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub async fn write_frame(s: &mut TcpStream, kind: Option<u8>, body: &[u8]) -> io::Result<()> {
    let len = body.len() + usize::from(kind.is_some());
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.extend(kind);
    buf.extend_from_slice(body);
    s.write_all(&buf).await?;
    s.flush().await
}

pub async fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(body)
}

/// A connection to one host, reopened after any error.
pub struct Conn {
    host: String,
    stream: Option<TcpStream>,
}

impl Conn {
    pub fn new(host: String) -> Conn {
        Conn { host, stream: None }
    }

    /// Sends one request and waits for its answer, within `timeout`; on any failure the connection
    /// is dropped. With `wait_out_errors`, a failure is reported only at the deadline: turmoil
    /// refuses a connection to a partitioned or crashed host at once, where a real network
    /// would mostly lose the SYN, and openraft retries a failed append at once (it backs off only
    /// after `Unreachable`, see [`SimPeer::call`]), so reporting at once would spin.
    pub async fn call(
        &mut self,
        kind: u8,
        body: &[u8],
        timeout: Duration,
        wait_out_errors: bool,
    ) -> io::Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let r = tokio::time::timeout_at(deadline, self.call_inner(kind, body)).await;
        let r = r.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
        if r.is_err() {
            self.stream = None;
            if wait_out_errors {
                tokio::time::sleep_until(deadline).await;
            }
        }
        r
    }

    async fn call_inner(&mut self, kind: u8, body: &[u8]) -> io::Result<Vec<u8>> {
        if self.stream.is_none() {
            let s = tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect((self.host.clone(), PORT)),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().expect("connected above");
        write_frame(s, Some(kind), body).await?;
        read_frame(s).await
    }
}

/// Raft's network. The connections themselves belong to tasks of the host's `LocalSet`, not to
/// openraft's tasks: when a host crashes, turmoil drops its tokio runtime, and every connection
/// dropped sends a FIN, which draws a latency from the simulation's RNG. The runtime drops its
/// tasks in an order that depends on their task ids (a process-wide counter: a second run in the
/// same process gets other ids), a `LocalSet` in the order they were spawned.
#[derive(Clone)]
pub struct SimNet {
    spawn: mpsc::UnboundedSender<(String, mpsc::UnboundedReceiver<Request>)>,
}

/// One RPC for a connection task.
pub struct Request {
    kind: u8,
    body: Vec<u8>,
    timeout: Duration,
    reply: oneshot::Sender<io::Result<Vec<u8>>>,
}

impl SimNet {
    /// Starts the host's connection spawner (on the current `LocalSet`).
    pub fn start() -> SimNet {
        let (spawn, mut rx) =
            mpsc::unbounded_channel::<(String, mpsc::UnboundedReceiver<Request>)>();
        tokio::task::spawn_local(async move {
            while let Some((host, mut requests)) = rx.recv().await {
                tokio::task::spawn_local(async move {
                    let mut conn = Conn::new(host);
                    while let Some(r) = requests.recv().await {
                        let res = conn.call(r.kind, &r.body, r.timeout, true).await;
                        let _ = r.reply.send(res);
                    }
                });
            }
        });
        SimNet { spawn }
    }
}

/// A peer as openraft sees it: the sending end of one connection task (which ends when this is
/// dropped).
pub struct SimPeer {
    target: u64,
    requests: mpsc::UnboundedSender<Request>,
}

impl RaftNetworkFactory<TypeConfig> for SimNet {
    type Network = SimPeer;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> SimPeer {
        let host = node
            .rpc_address
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let (requests, rx) = mpsc::unbounded_channel();
        let _ = self.spawn.send((host, rx));
        SimPeer { target, requests }
    }
}

impl SimPeer {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: u8,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    {
        // Every failure is reported as a network error, never as `Unreachable`: openraft answers
        // `Unreachable` with a backoff whose wait is an unbiased `tokio::select!` (random branch
        // order from tokio's unseeded thread-local RNG), the one place where openraft would make
        // a run depend on something other than the seed. See the header of tests/sim.rs.
        let net = |e: &dyn std::error::Error| {
            RPCError::Network(NetworkError::new(&io::Error::other(e.to_string())))
        };
        let body = postcard::to_stdvec(req).map_err(|e| net(&e))?;
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send(Request {
            kind,
            body,
            timeout,
            reply,
        });
        let bytes = match (sent, answer.await) {
            (Ok(()), Ok(r)) => r.map_err(|e| net(&e))?,
            _ => return Err(net(&io::Error::other("the host's connection task is gone"))),
        };
        let resp: Result<Resp, RaftError<u64, E>> =
            postcard::from_bytes(&bytes).map_err(|e| net(&e))?;
        resp.map_err(|e| {
            RPCError::RemoteError(ccl_consensus::openraft::error::RemoteError::new(
                self.target,
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for SimPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        self.call(KIND_APPEND, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RpcErr<ccl_consensus::openraft::error::InstallSnapshotError>,
    > {
        Err(RPCError::Network(NetworkError::new(&io::Error::other(
            "ccl's Raft does not send snapshots",
        ))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        self.call(KIND_VOTE, &rpc, option.hard_ttl()).await
    }
}
