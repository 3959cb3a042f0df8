//! Raft's RPCs between nodes: HTTPS with the node's service-endorsed certificate as client
//! certificate, trusting only the service certificate (mutual TLS), postcard-encoded bodies. One
//! keep-alive connection per peer, reopened after an error.

use crate::{NodeAddr, RPC_APPEND, RPC_VOTE, TypeConfig};
use ccl_client::{Client, Connection, Method};
use openraft::error::{NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The media type of Raft RPC bodies.
pub const RPC_CONTENT_TYPE: &str = "application/x-ccl-raft";
/// Query parameter naming the Raft id an RPC is for.
pub const TARGET_PARAM: &str = "to";
/// Connecting to a peer gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Makes connections to peers: trusts the service certificate, presents the node's identity.
#[derive(Clone)]
pub struct Network {
    service_cert_pem: String,
    identity_pem: String,
}

impl Network {
    /// `identity_pem`: the node's endorsed certificate and private key, in one PEM.
    pub fn new(service_cert_pem: String, identity_pem: String) -> Self {
        Network {
            service_cert_pem,
            identity_pem,
        }
    }
}

pub struct Peer {
    target: u64,
    endpoint: String,
    client: Option<Client>,
    conn: Option<Connection>,
    net: Network,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> Peer {
        Peer {
            target,
            endpoint: format!("https://{}", node.rpc_address),
            client: None,
            conn: None,
            net: self.clone(),
        }
    }
}

pub type RpcErr<E = openraft::error::Infallible> = RPCError<u64, NodeAddr, RaftError<u64, E>>;

impl Peer {
    async fn call<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    >(
        &mut self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcErr<E>> {
        let body =
            postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // The target's Raft id travels with the RPC: a new node at a dead node's address must not
        // answer for it.
        let path = format!("{path}?{TARGET_PARAM}={}", self.target);
        let r = tokio::time::timeout(timeout, self.send(&path, body)).await;
        let bytes = match r {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                self.conn = None;
                return Err(e);
            }
            Err(_) => {
                self.conn = None;
                return Err(RPCError::Network(NetworkError::new(&std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{path} to node {} timed out", self.target),
                ))));
            }
        };
        let resp: Result<Resp, RaftError<u64, E>> =
            postcard::from_bytes(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        resp.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }

    async fn send<E: std::error::Error>(
        &mut self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<bytes::Bytes, RpcErr<E>> {
        fn unreachable<E: std::error::Error>(e: impl ToString) -> RpcErr<E> {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.to_string())))
        }
        if crate::faults::blocked(self.target) {
            self.conn = None;
            return Err(unreachable("cut off (test partition)"));
        }
        if self.client.is_none() {
            let c = Client::new(
                &self.endpoint,
                &self.net.service_cert_pem,
                Some(&self.net.identity_pem),
            )
            .map_err(unreachable)?;
            self.client = Some(c);
        }
        if self.conn.is_none() {
            let client = self.client.as_ref().expect("set above");
            let c = tokio::time::timeout(CONNECT_TIMEOUT, client.connect())
                .await
                .map_err(unreachable)?
                .map_err(unreachable)?;
            self.conn = Some(c);
        }
        let conn = self.conn.as_mut().expect("set above");
        let r = conn
            .request(Method::POST, path, Some((RPC_CONTENT_TYPE, body)))
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        Ok(r.body)
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        self.call(RPC_APPEND, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<openraft::error::InstallSnapshotError>> {
        Err(RPCError::Network(NetworkError::new(
            &std::io::Error::other("ccl's Raft does not send snapshots"),
        )))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        self.call(RPC_VOTE, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Short at first (a node restarting or a connection reset comes back quickly), growing
        // for a node that stays away.
        let mut next = crate::MIN_BACKOFF_MS;
        openraft::network::Backoff::new(std::iter::from_fn(move || {
            let d = Duration::from_millis(next);
            next = (next * 2).min(crate::MAX_BACKOFF_MS);
            Some(d)
        }))
    }
}

/// Encodes an RPC's answer (the server side).
pub fn encode_response<T: Serialize, E: Serialize>(r: &Result<T, E>) -> Vec<u8> {
    postcard::to_stdvec(r).unwrap_or_default()
}

/// Decodes an RPC's request (the server side).
pub fn decode_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    postcard::from_bytes(body).map_err(|e| format!("malformed Raft RPC: {e}"))
}
