//! Transaction ids: `view.seqno`.

use std::fmt;
use std::str::FromStr;

/// Views are stored in 31 bits of an entry's IV (the top bit marks snapshots).
pub const MAX_VIEW: u64 = (1 << 31) - 1;

/// A transaction id: the consensus view (term) in which the transaction was made and its sequence
/// number in the ledger. Written `view.seqno`, e.g. `2.15`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TxId {
    pub view: u64,
    pub seqno: u64,
}

impl TxId {
    pub const fn new(view: u64, seqno: u64) -> Self {
        TxId { view, seqno }
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.view, self.seqno)
    }
}

/// Why a text is not a transaction id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transaction id {0:?}: expected <view>.<seqno>, two decimal numbers")]
pub struct TxIdParseError(pub String);

impl FromStr for TxId {
    type Err = TxIdParseError;
    /// Strict: two runs of ASCII digits around one dot, each at most 20 digits and in range.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TxIdParseError(s.chars().take(64).collect());
        let (v, n) = s.split_once('.').ok_or_else(err)?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(v) || !digits(n) {
            return Err(err());
        }
        let view = v.parse::<u64>().map_err(|_| err())?;
        let seqno = n.parse::<u64>().map_err(|_| err())?;
        if view > MAX_VIEW {
            return Err(err());
        }
        Ok(TxId { view, seqno })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_strictly() {
        assert_eq!("2.15".parse::<TxId>().unwrap(), TxId::new(2, 15));
        for bad in [
            "",
            ".",
            "2.",
            ".3",
            "2.3.4",
            "a.b",
            "-1.2",
            "+1.2",
            " 1.2",
            "1.2 ",
            "1,2",
            "99999999999.1",
            "1.99999999999999999999",
        ] {
            assert!(bad.parse::<TxId>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(view in 0..=MAX_VIEW, seqno in any::<u64>()) {
            let t = TxId::new(view, seqno);
            prop_assert_eq!(t.to_string().parse::<TxId>().unwrap(), t);
        }

        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = s.parse::<TxId>();
        }
    }
}
