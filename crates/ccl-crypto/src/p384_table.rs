//! P-384 multiplication of the generator `G` from a table of its multiples, for the nonce of
//! every signature ([`crate::presign`]).
//!
//! The table holds `j·16ⁱ·G` for the 96 hexadecimal digits `i` of a scalar and the 16 values `j`
//! of a digit, so `k·G` is 96 additions and no doubling: about a fifth of the generic
//! multiplication's cost. It is built once per process, on first use (about 45 ms of
//! inversions, on a nonce pool's thread).
//!
//! (A table per verifying key, for a backup that checks every signature of its primary, was
//! measured too: 1.7× faster per verification than ring, but no gain visible in the network
//! benchmark, so it was not kept: hand-written verification code must earn its place.)

use p384::elliptic_curve::subtle::{ConditionallySelectable, ConstantTimeEq};
use p384::{AffinePoint, ProjectivePoint, Scalar};
use std::sync::OnceLock;

/// Hexadecimal digits of a P-384 scalar: the rows of a table.
const ROWS: usize = 96;

/// The multiples `j·16ⁱ·P` of one point `P`, as affine points (slower to build, one inversion
/// per entry, faster to add: the generator's) or projective ones.
pub(crate) struct Table<P> {
    rows: Vec<[P; 16]>,
}

impl Table<AffinePoint> {
    fn affine(point: ProjectivePoint) -> Self {
        let projective = Table::projective(point);
        let rows = projective
            .rows
            .iter()
            .map(|row| row.map(|p| p.to_affine()))
            .collect();
        Table { rows }
    }
}

impl Table<ProjectivePoint> {
    fn projective(point: ProjectivePoint) -> Self {
        let mut rows = Vec::with_capacity(ROWS);
        let mut base = point;
        for _ in 0..ROWS {
            let mut row = [ProjectivePoint::IDENTITY; 16];
            let mut multiple = ProjectivePoint::IDENTITY;
            for entry in row.iter_mut() {
                *entry = multiple;
                multiple += base;
            }
            // `multiple` is now 16·base.
            rows.push(row);
            base = multiple;
        }
        Table { rows }
    }
}

impl<P> Table<P>
where
    P: Copy + Default + ConditionallySelectable,
    ProjectivePoint: std::ops::AddAssign<P>,
{
    /// The digits of `k`, least significant first.
    fn digits(k: &Scalar) -> impl Iterator<Item = u8> {
        let bytes = k.to_bytes();
        (0..ROWS).map(move |i| {
            let byte = bytes[bytes.len() - 1 - i / 2];
            if i % 2 == 0 { byte & 0x0f } else { byte >> 4 }
        })
    }

    /// `k·P` in constant time (`k` is secret): every row is scanned whole, whatever the digit.
    pub(crate) fn mul_secret(&self, k: &Scalar) -> ProjectivePoint {
        let mut acc = ProjectivePoint::IDENTITY;
        for (row, digit) in self.rows.iter().zip(Self::digits(k)) {
            let mut point = P::default();
            for (j, entry) in row.iter().enumerate().skip(1) {
                point.conditional_assign(entry, digit.ct_eq(&(j as u8)));
            }
            acc += point;
        }
        acc
    }
}

/// The table of the generator `G`, built on first use.
pub(crate) fn generator() -> &'static Table<AffinePoint> {
    static TABLE: OnceLock<Table<AffinePoint>> = OnceLock::new();
    TABLE.get_or_init(|| Table::affine(ProjectivePoint::GENERATOR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::elliptic_curve::ops::Reduce;
    use p384::{FieldBytes, NonZeroScalar, U384};
    use proptest::prelude::*;

    fn scalar(top: [u8; 16], rest: [u8; 32]) -> Scalar {
        let mut wide = [0u8; 48];
        wide[..16].copy_from_slice(&top);
        wide[16..].copy_from_slice(&rest);
        <Scalar as Reduce<U384>>::reduce_bytes(&FieldBytes::from(wide))
    }

    #[test]
    fn tables_multiply_like_the_curve_library() {
        let point = ProjectivePoint::GENERATOR * *NonZeroScalar::random(&mut rand_core::OsRng);
        let table = Table::projective(point);
        let mut scalars = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::from(16u64),
            Scalar::from(0xf0u64),
        ];
        for _ in 0..32 {
            scalars.push(*NonZeroScalar::random(&mut rand_core::OsRng));
        }
        for k in scalars {
            let g = (ProjectivePoint::GENERATOR * k).to_affine();
            assert_eq!(generator().mul_secret(&k).to_affine(), g);
            let p = (point * k).to_affine();
            assert_eq!(table.mul_secret(&k).to_affine(), p);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_generator_table_agrees_for_any_digits(top in any::<[u8; 16]>(), rest in any::<[u8; 32]>()) {
            let k = scalar(top, rest);
            let g = (ProjectivePoint::GENERATOR * k).to_affine();
            prop_assert_eq!(generator().mul_secret(&k).to_affine(), g);
        }
    }
}
