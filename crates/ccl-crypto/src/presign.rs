//! Precomputed ECDSA P-384 nonces, so that a signature costs microseconds where it is needed.
//!
//! An ECDSA signature is `r = x(k·G) mod n`, `s = k⁻¹·(z + r·d) mod n` for a fresh random nonce
//! `k`. Almost all of its cost (about 0.5 ms on P-384) is the point multiplication `k·G` and the
//! inversions, and none of that depends on the message or on the key. A [`NoncePool`] computes
//! `(k⁻¹, r)` pairs ahead of time on a thread of its own (`k·G` from the generator's table in
//! [`crate::p384_table`]); signing with one is two scalar multiplications. A node signs a
//! Merkle root twice per signature transaction (its own key and the service's COSE signature)
//! while it holds the engine's lock, so this takes about 0.9 ms of P-384 off the write path of
//! every signature.
//!
//! Each pair is handed out once (it moves out of a channel) and wiped when dropped; reusing a
//! nonce would reveal the key. When the pool is empty, signing falls back to the ordinary path,
//! so a burst of signatures is never slower than without a pool.

use p384::elliptic_curve::point::AffineCoordinates;
use p384::{FieldBytes, NonZeroScalar, Scalar};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use zeroize::Zeroize;

/// One nonce's precomputed part: `k⁻¹ mod n` and `r = x(k·G) mod n`.
struct Nonce {
    k_inv: Scalar,
    r: Scalar,
}

impl Drop for Nonce {
    fn drop(&mut self) {
        self.k_inv.zeroize();
    }
}

impl Nonce {
    /// A fresh nonce from the operating system's random source; `None` in the (probability
    /// 2⁻³⁸⁰) case that `r` is zero, when the caller draws again.
    fn generate() -> Option<Nonce> {
        let k = NonZeroScalar::random(&mut rand_core::OsRng);
        let point = crate::p384_table::generator().mul_secret(&k).to_affine();
        let r = crate::p384_table::reduce(&point.x());
        let k_inv = Option::<Scalar>::from(k.invert())?;
        (!bool::from(r.is_zero())).then_some(Nonce { k_inv, r })
    }
}

/// A supply of precomputed P-384 nonces, refilled by a thread that lives as long as the pool.
/// Clones share the supply. See the module documentation.
#[derive(Clone)]
pub struct NoncePool {
    ready: Arc<Mutex<Receiver<Nonce>>>,
    /// Nonces the thread has put in the pool, and nonces taken out of it (each into one
    /// signature).
    made: Arc<AtomicU64>,
    taken: Arc<AtomicU64>,
}

impl std::fmt::Debug for NoncePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoncePool(..)")
    }
}

impl NoncePool {
    /// Starts a pool that keeps up to `size` nonces ready (at least one).
    pub fn start(size: usize) -> std::io::Result<NoncePool> {
        Self::start_thread(size).map(|(pool, _)| pool)
    }

    fn start_thread(size: usize) -> std::io::Result<(NoncePool, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(size.max(1));
        let made = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("ccl-nonces".into())
            .spawn({
                let made = made.clone();
                move || fill(tx, &made)
            })?;
        let pool = NoncePool {
            ready: Arc::new(Mutex::new(rx)),
            made,
            taken: Arc::new(AtomicU64::new(0)),
        };
        Ok((pool, thread))
    }

    /// How many signatures used a nonce from this pool (nonces taken: each goes into one).
    pub fn used(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }

    /// Nonces ready now (at least: the thread may be adding one).
    pub fn ready(&self) -> u64 {
        let taken = self.taken.load(Ordering::Acquire);
        self.made.load(Ordering::Acquire).saturating_sub(taken)
    }

    fn take(&self) -> Option<Nonce> {
        let nonce = self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_recv()
            .ok()?;
        self.taken.fetch_add(1, Ordering::Release);
        Some(nonce)
    }

    /// Signs a 48-byte digest (a SHA-384 hash, or a shorter digest left-padded with zeros)
    /// with `d` and a nonce from the pool. `None` when the pool is empty (or `s` came out
    /// zero): the caller then signs the ordinary way.
    pub(crate) fn sign(
        &self,
        d: &NonZeroScalar,
        digest: &[u8; 48],
    ) -> Option<p384::ecdsa::Signature> {
        let nonce = self.take()?;
        let z = crate::p384_table::reduce(&FieldBytes::from(*digest));
        let s = nonce.k_inv * (z + nonce.r * **d);
        if bool::from(s.is_zero()) {
            return None;
        }
        p384::ecdsa::Signature::from_scalars(nonce.r, s).ok()
    }
}

/// The pool's thread: computes nonces until the pool is full, waits for room, and ends when
/// every handle to the pool is gone.
fn fill(tx: SyncSender<Nonce>, made: &AtomicU64) {
    loop {
        let Some(nonce) = Nonce::generate() else {
            continue;
        };
        if tx.send(nonce).is_err() {
            return;
        }
        made.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Curve, HashAlg, SigningKey};
    use std::time::{Duration, Instant};

    /// Signs `root` with a pooled nonce, waiting for the pool's thread to make one.
    fn sign_pooled(key: &SigningKey, root: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while key.nonces_ready() == 0 {
            assert!(Instant::now() < deadline, "the pool never filled");
            std::thread::sleep(Duration::from_millis(2));
        }
        let before = key.pooled_signatures();
        let der = key.sign_prehashed(root).unwrap();
        assert_eq!(
            key.pooled_signatures(),
            before + 1,
            "a ready nonce was not used"
        );
        der
    }

    #[test]
    fn signatures_with_pooled_nonces_verify_and_never_share_a_nonce() {
        let key = SigningKey::generate(Curve::P384)
            .unwrap()
            .with_nonces(NoncePool::start(8).unwrap());
        let vk = key.verifying_key();
        let mut rs = std::collections::HashSet::new();
        for i in 0..100u32 {
            let root = crate::sha256(&i.to_be_bytes());
            let der = sign_pooled(&key, &root);
            // Both verifiers: the pure-Rust one over the digest, ring over its preimage.
            vk.verify_prehashed(&root, &der).unwrap();
            vk.verify_der_sha256(&i.to_be_bytes(), &der).unwrap();
            let sig = p384::ecdsa::Signature::from_der(&der).unwrap();
            assert!(
                rs.insert(sig.r().to_bytes().to_vec()),
                "a nonce was used twice"
            );
            // Messages (COSE): SHA-384 of the message, signed with the next nonce.
            let msg = format!("message {i}");
            let used = key.pooled_signatures();
            let raw = key.sign_raw(msg.as_bytes());
            let sig = p384::ecdsa::Signature::from_slice(&raw).unwrap();
            vk.verify_der(msg.as_bytes(), sig.to_der().as_bytes(), HashAlg::Sha384)
                .unwrap();
            assert!(
                rs.insert(sig.r().to_bytes().to_vec()),
                "a nonce was used twice"
            );
            assert!(key.pooled_signatures() <= used + 1);
        }
    }

    #[test]
    fn an_empty_pool_falls_back_and_a_wrong_digest_or_key_fails() {
        let (pool, thread) = NoncePool::start_thread(1).unwrap();
        let key = SigningKey::generate(Curve::P384).unwrap().with_nonces(pool);
        let other = SigningKey::generate(Curve::P384).unwrap();
        let root = crate::sha256(b"root");
        // However many signatures come faster than the pool refills, each verifies.
        for _ in 0..20 {
            let der = key.sign_prehashed(&root).unwrap();
            key.verifying_key().verify_prehashed(&root, &der).unwrap();
        }
        let der = sign_pooled(&key, &root);
        key.verifying_key().verify_prehashed(&root, &der).unwrap();
        assert!(
            key.verifying_key()
                .verify_prehashed(&crate::sha256(b"other"), &der)
                .is_err()
        );
        assert!(other.verifying_key().verify_prehashed(&root, &der).is_err());
        // The pool's thread ends once no key holds the pool.
        drop(key);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "the pool's thread outlived it");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
