//! The workload: clients on their own hosts writing and reading a few registers (keys of one map)
//! through whichever replica they believe is primary, recording every operation with its
//! invocation and response on the history's clock.

use crate::net::{Conn, KIND_CLIENT};
use crate::node::{COMMIT_WAIT, ClientReq, ClientResp, LEADERSHIP_WAIT};
use crate::world::{World, node_name, raft_id};
use ccl_lincheck::{Op, OpKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::rc::Rc;
use std::time::Duration;

/// A client gives up on a request after this long (longer than a replica's own waits, so that a
/// replica's `Unknown` normally arrives before the client gives up).
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(
    COMMIT_WAIT.as_millis() as u64 + LEADERSHIP_WAIT.as_millis() as u64 + 500,
);

struct Session {
    conns: Vec<Conn>,
    target: usize,
    rng: ChaCha8Rng,
}

impl Session {
    fn new(w: &World, stream: u64) -> Session {
        let mut rng =
            ChaCha8Rng::seed_from_u64(w.params.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let n = w.params.nodes;
        Session {
            conns: (0..n).map(|j| Conn::new(node_name(j))).collect(),
            target: rng.random_range(0..n),
            rng,
        }
    }

    async fn request(&mut self, req: ClientReq) -> Option<ClientResp> {
        let body = postcard::to_stdvec(&req).expect("encodes");
        let r = self.conns[self.target]
            .call(KIND_CLIENT, &body, CLIENT_TIMEOUT, false)
            .await
            .ok()?;
        postcard::from_bytes(&r).ok()
    }

    /// After a failed request: a short pause (turmoil refuses a connection to a cut-off host at
    /// once), then the replica named as leader, else any.
    async fn retarget(&mut self, hint: Option<u64>) {
        let pause = self.rng.random_range(5..=50);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let n = self.conns.len();
        self.target = match hint {
            Some(h) if (1..=n as u64).contains(&h) && h != raft_id(self.target) => h as usize - 1,
            _ => self.rng.random_range(0..n),
        };
    }
}

/// Client `k` of the workload: runs until the world says stop.
pub async fn client_main(w: Rc<World>, k: usize) -> turmoil::Result {
    let mut s = Session::new(&w, 1000 + k as u64);
    let mut client = k as u64;
    let mut seq = 0u64;
    while !w.stopping.get() {
        let key = s.rng.random_range(0..w.params.keys);
        let req = if s.rng.random_bool(w.params.write_ratio) {
            seq += 1;
            ClientReq::Write {
                key,
                value: ((k as u64 + 1) << 32) | seq,
            }
        } else {
            ClientReq::Read { key }
        };
        let call = w.now();
        let resp = s.request(req).await;
        let ret = w.now();
        let op = |kind, ret| Op {
            client,
            key,
            kind,
            call,
            ret,
        };
        match (req, resp) {
            (ClientReq::Write { value, .. }, Some(ClientResp::Written)) => {
                w.record(op(OpKind::Write(value), Some(ret)));
            }
            (ClientReq::Read { .. }, Some(ClientResp::Value(v))) => {
                w.record(op(OpKind::Read(v), Some(ret)));
            }
            // Nothing was executed, or what was executed is invalid: no effect.
            (_, Some(ClientResp::NotPrimary(hint))) => s.retarget(hint).await,
            (_, Some(ClientResp::Aborted)) => {}
            // A write whose fate is unknown may take effect at any time after its call.
            (ClientReq::Write { value, .. }, _) => {
                w.record(op(OpKind::Write(value), None));
                client = w.fresh_client();
                s.retarget(None).await;
            }
            (ClientReq::Read { .. }, _) => s.retarget(None).await,
        }
        if w.params.think_ms > 0 {
            let think = s.rng.random_range(0..=w.params.think_ms);
            tokio::time::sleep(Duration::from_millis(think)).await;
        }
    }
    Ok(())
}

/// After the network has healed and the cluster has quiesced: one successful read of every key
/// (a committed write must not have been lost), retrying until `deadline` (simulated).
pub async fn final_reader(w: Rc<World>, deadline: Duration) -> turmoil::Result {
    let mut s = Session::new(&w, 999);
    let client = w.fresh_client();
    let start = tokio::time::Instant::now();
    for key in 0..w.params.keys {
        loop {
            if start.elapsed() > deadline {
                return Err(format!(
                    "liveness: no successful read of key {key} within {deadline:?} after healing"
                )
                .into());
            }
            let call = w.now();
            let resp = s.request(ClientReq::Read { key }).await;
            let ret = w.now();
            match resp {
                Some(ClientResp::Value(v)) => {
                    w.record(Op {
                        client,
                        key,
                        kind: OpKind::Read(v),
                        call,
                        ret: Some(ret),
                    });
                    break;
                }
                Some(ClientResp::NotPrimary(hint)) => s.retarget(hint).await,
                _ => s.retarget(None).await,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}
