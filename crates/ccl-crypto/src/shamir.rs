//! Shamir secret sharing of a 32-byte secret over GF(2^8), byte by byte (k-of-n): any `k` shares
//! give the secret back, fewer give no information about it.
//!
//! Used to split the key that wraps the latest ledger secret among the recovery members. A share
//! is [`SHARE_LEN`] bytes: its x coordinate (1..=255), then the 32 y bytes (one polynomial of
//! degree `k - 1` per secret byte, whose constant term is that byte). The field is the AES one
//! (x^8 + x^4 + x^3 + x + 1); multiplication runs in constant time (no tables indexed by secrets).
//!
//! Small enough to be checked by eye and by the property tests below, rather than a dependency:
//! the crates.io implementations are either unmaintained or far larger than this.

use crate::{CryptoError, Result};
use zeroize::Zeroizing;

/// Length of the shared secret.
pub const SECRET_LEN: usize = 32;
/// Length of one share: x, then the y bytes.
pub const SHARE_LEN: usize = 1 + SECRET_LEN;
/// Most shares of one secret (x runs over the non-zero field elements).
pub const MAX_SHARES: usize = 255;

/// Multiplication in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1, without data-dependent branches.
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    for _ in 0..8 {
        p ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    p
}

/// Multiplicative inverse (a^254); `inv(0)` is 0 and never asked for.
fn inv(a: u8) -> u8 {
    let mut result = 1u8;
    let mut base = a;
    let mut e = 254u8;
    while e > 0 {
        if e & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    result
}

/// Splits `secret` into `n` shares, any `k` of which recover it (1 <= k <= n <= 255).
pub fn split(
    secret: &[u8; SECRET_LEN],
    n: usize,
    k: usize,
) -> Result<Vec<Zeroizing<[u8; SHARE_LEN]>>> {
    if k == 0 || k > n || n > MAX_SHARES {
        return Err(CryptoError::InvalidKey(format!(
            "cannot split a secret {k}-of-{n} (1 <= k <= n <= {MAX_SHARES})"
        )));
    }
    // coefficients[i][j]: coefficient of x^j of byte i's polynomial; j = 0 is the secret byte.
    let mut coefficients = Zeroizing::new(vec![[0u8; SECRET_LEN]; k]);
    coefficients[0] = *secret;
    for c in coefficients.iter_mut().skip(1) {
        crate::random_bytes(c)?;
    }
    let mut shares = Vec::with_capacity(n);
    for x in 1..=n as u8 {
        let mut share = Zeroizing::new([0u8; SHARE_LEN]);
        share[0] = x;
        for i in 0..SECRET_LEN {
            // Horner, from the highest coefficient.
            let mut y = 0u8;
            for c in coefficients.iter().rev() {
                y = mul(y, x) ^ c[i];
            }
            share[1 + i] = y;
        }
        shares.push(share);
    }
    Ok(shares)
}

/// Recovers the secret from `shares` (at least the k they were split with, distinct x; with
/// fewer, the result is some other value: callers check it, e.g. by unwrapping with it).
pub fn combine(shares: &[&[u8]]) -> Result<Zeroizing<[u8; SECRET_LEN]>> {
    if shares.is_empty() || shares.len() > MAX_SHARES {
        return Err(CryptoError::InvalidKey("no shares to combine".into()));
    }
    let mut xs = Vec::with_capacity(shares.len());
    for s in shares {
        if s.len() != SHARE_LEN || s[0] == 0 {
            return Err(CryptoError::InvalidKey(format!(
                "a recovery share is {SHARE_LEN} bytes with a non-zero first byte"
            )));
        }
        if xs.contains(&s[0]) {
            return Err(CryptoError::InvalidKey(
                "two shares have the same index".into(),
            ));
        }
        xs.push(s[0]);
    }
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    for (j, share) in shares.iter().enumerate() {
        // Lagrange basis polynomial j at 0: prod over m != j of x_m / (x_m - x_j) (minus is xor).
        let mut num = 1u8;
        let mut den = 1u8;
        for (m, xm) in xs.iter().enumerate() {
            if m != j {
                num = mul(num, *xm);
                den = mul(den, xm ^ xs[j]);
            }
        }
        let l = mul(num, inv(den));
        for i in 0..SECRET_LEN {
            secret[i] ^= mul(l, share[1 + i]);
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn field_arithmetic() {
        // FIPS-197's example: {57} x {83} = {c1}.
        assert_eq!(mul(0x57, 0x83), 0xc1);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "inverse of {a}");
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
        }
    }

    #[test]
    fn bad_parameters_and_shares_are_refused() {
        let s = [7u8; 32];
        assert!(split(&s, 3, 0).is_err());
        assert!(split(&s, 2, 3).is_err());
        assert!(split(&s, 256, 2).is_err());
        let shares = split(&s, 3, 2).unwrap();
        assert!(combine(&[]).is_err());
        assert!(combine(&[&shares[0][..], &shares[0][..]]).is_err());
        assert!(combine(&[&shares[0][..5]]).is_err());
        let mut zero = *shares[1];
        zero[0] = 0;
        assert!(combine(&[&shares[0][..], &zero[..]]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any k of the n shares, in any order, give the secret back; k - 1 of them (k >= 2) do not.
        #[test]
        fn any_k_shares_recover_the_secret(
            secret in any::<[u8; 32]>(),
            n in 1usize..12,
            k_seed in any::<usize>(),
            pick_seed in any::<u64>(),
        ) {
            let k = 1 + k_seed % n;
            let shares = split(&secret, n, k).unwrap();
            prop_assert_eq!(shares.len(), n);
            // A deterministic shuffle from the seed picks which shares.
            let mut idx: Vec<usize> = (0..n).collect();
            let mut r = pick_seed;
            for i in (1..n).rev() {
                r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                idx.swap(i, (r >> 33) as usize % (i + 1));
            }
            let picked: Vec<&[u8]> = idx[..k].iter().map(|i| &shares[*i][..]).collect();
            prop_assert_eq!(*combine(&picked).unwrap(), secret);
            let all: Vec<&[u8]> = shares.iter().map(|s| &s[..]).collect();
            prop_assert_eq!(*combine(&all).unwrap(), secret);
            if k >= 2 {
                // With overwhelming probability (the missing share's randomness is 256 bits).
                prop_assert_ne!(*combine(&picked[..k - 1]).unwrap(), secret);
            }
        }

        /// A share altered in any byte no longer recovers the secret.
        #[test]
        fn an_altered_share_gives_another_secret(
            secret in any::<[u8; 32]>(),
            byte in 1usize..SHARE_LEN,
            flip in 1u8..=255,
        ) {
            let shares = split(&secret, 3, 2).unwrap();
            let mut bad = *shares[0];
            bad[byte] ^= flip;
            prop_assert_ne!(*combine(&[&bad[..], &shares[1][..]]).unwrap(), secret);
        }
    }
}
