//! Snapshots in CCF's format: one entry of type `Snapshot` holding every map's state at a seqno,
//! private maps encrypted like in transactions, followed in a committed snapshot file by the JSON
//! receipt of the evidence transaction.
//!
//! ```text
//! public_domain = entry_type(1) version(i64) max_conflict_version(i64)
//!                 hash_at_snapshot(sized) view_history(sized: u64 LE each) map*
//! map           = name(sized) map_version(u64) size(u64) (key value)*        size: bytes that follow
//! key           = len(u64) bytes pad8                value = len(u64) version(u64) bytes pad8
//! ```
//! Files: `snapshot_<seqno>_<evidence seqno>.committed`.

use crate::codec::{DecodeError, Reader, put_i64, put_sized, put_u64};
use crate::entry::{ENTRY_HEADER_SIZE, EntryType, GCM_HEADER_SIZE, is_public_map, seal};
use crate::txid::TxId;
use ccl_crypto::aead::AesGcmKey;

/// The state of one map in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnapshotMap<'a> {
    pub name: &'a str,
    pub version: u64,
    /// (key, version of the last write, value), in key order.
    pub entries: Vec<(&'a [u8], u64, &'a [u8])>,
}

fn pad8(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + (8 - n % 8) % 8, 0);
}

fn put_map(out: &mut Vec<u8>, m: &SnapshotMap<'_>) {
    put_sized(out, m.name.as_bytes());
    put_u64(out, m.version);
    let size_at = out.len();
    put_u64(out, 0);
    let body = out.len();
    for (k, ver, v) in &m.entries {
        put_sized(out, k);
        pad8(out, k.len());
        put_u64(out, 8 + v.len() as u64);
        put_u64(out, *ver);
        out.extend_from_slice(v);
        pad8(out, 8 + v.len());
    }
    let size = (out.len() - body) as u64;
    out[size_at..size_at + 8].copy_from_slice(&size.to_le_bytes());
}

/// Encodes a snapshot of `maps` at `txid`. `hash_at_snapshot` is the Merkle leaf of the
/// transaction at `txid`, `view_history[v]` the first seqno of view `v`.
pub fn encode_snapshot(
    txid: TxId,
    hash_at_snapshot: &[u8],
    view_history: &[u64],
    maps: &[SnapshotMap<'_>],
    key: &AesGcmKey,
) -> Vec<u8> {
    let mut out = vec![0u8; ENTRY_HEADER_SIZE + GCM_HEADER_SIZE + 8];
    let public_start = out.len();
    out.push(EntryType::Snapshot as u8);
    put_i64(&mut out, txid.seqno as i64);
    put_i64(&mut out, txid.seqno as i64);
    put_sized(&mut out, hash_at_snapshot);
    put_u64(&mut out, 8 * view_history.len() as u64);
    for v in view_history {
        put_u64(&mut out, *v);
    }
    for m in maps.iter().filter(|m| is_public_map(m.name)) {
        put_map(&mut out, m);
    }
    let private_start = out.len();
    for m in maps.iter().filter(|m| !is_public_map(m.name)) {
        put_map(&mut out, m);
    }
    seal(&mut out, 0, public_start, private_start, txid, true, 0, key);
    out
}

/// Iterates snapshot map sections (the public domain's tail, or the decrypted private domain).
pub struct SnapshotMapIter<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> SnapshotMapIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        SnapshotMapIter {
            r: Reader::new(buf),
            failed: false,
        }
    }

    fn next_map(&mut self) -> Result<SnapshotMap<'a>, DecodeError> {
        let r = &mut self.r;
        let name =
            std::str::from_utf8(r.sized("map name")?).map_err(|_| r.err("map name (utf-8)"))?;
        let version = r.u64("map version")?;
        let size = r.len_prefix("map size")?;
        let mut body = Reader::new(r.bytes(size, "map body")?);
        let mut entries = Vec::new();
        while !body.is_empty() {
            let k = body.sized("key")?;
            body.skip((8 - k.len() % 8) % 8, "key padding")?;
            let vlen = body.len_prefix("value size")?;
            if vlen < 8 {
                return Err(body.err("value size"));
            }
            let ver = body.u64("value version")?;
            let v = body.bytes(vlen - 8, "value")?;
            body.skip((8 - vlen % 8) % 8, "value padding")?;
            entries.push((k, ver, v));
        }
        Ok(SnapshotMap {
            name,
            version,
            entries,
        })
    }
}

impl<'a> Iterator for SnapshotMapIter<'a> {
    type Item = Result<SnapshotMap<'a>, DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.is_empty() {
            return None;
        }
        let m = self.next_map();
        self.failed = m.is_err();
        Some(m)
    }
}

/// What a snapshot file's name says: `snapshot_<seqno>_<evidence seqno>[.committed]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotName {
    pub seqno: u64,
    pub evidence_seqno: u64,
    pub committed: bool,
}

impl SnapshotName {
    pub fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix("snapshot_")?;
        let (rest, committed) = match rest.strip_suffix(crate::chunk::COMMITTED_SUFFIX) {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let (a, b) = rest.split_once('_')?;
        let num = |s: &str| {
            (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        let (seqno, evidence_seqno) = (num(a)?, num(b)?);
        (evidence_seqno > seqno).then_some(SnapshotName {
            seqno,
            evidence_seqno,
            committed,
        })
    }

    pub fn file_name(&self) -> String {
        format!(
            "snapshot_{}_{}{}",
            self.seqno,
            self.evidence_seqno,
            if self.committed {
                crate::chunk::COMMITTED_SUFFIX
            } else {
                ""
            }
        )
    }
}

/// Splits a committed snapshot file into the snapshot entry and its receipt JSON.
pub fn split_snapshot_file(bytes: &[u8]) -> Result<(crate::entry::Entry<'_>, &[u8]), DecodeError> {
    let (entry, len) = crate::entry::Entry::parse(bytes)?;
    if !entry.is_snapshot {
        return Err(DecodeError {
            what: "snapshot entry (IV lacks the snapshot bit)",
            offset: 0,
        });
    }
    Ok((entry, &bytes[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::PublicDomain;

    #[test]
    fn round_trip() {
        let key = AesGcmKey::new(&[1u8; 32]);
        let maps = vec![
            SnapshotMap {
                name: "public:a",
                version: 9,
                entries: vec![(b"k1", 3, b"v"), (b"key-twelve!!", 9, b"value of 9 bytes")],
            },
            SnapshotMap {
                name: "private",
                version: 7,
                entries: vec![(b"s", 7, b"SECRETVALUE")],
            },
        ];
        let bytes = encode_snapshot(TxId::new(2, 10), &[5u8; 32], &[0, 1, 4], &maps, &key);
        assert!(!bytes.windows(11).any(|w| w == b"SECRETVALUE"));
        let (e, rest) = split_snapshot_file(&bytes).unwrap();
        assert!(rest.is_empty());
        assert_eq!(e.txid, TxId::new(2, 10));
        let pd = PublicDomain::parse(e.public).unwrap();
        assert_eq!(pd.entry_type, EntryType::Snapshot);
        let sh = pd.snapshot.clone().unwrap();
        assert_eq!(sh.view_history, vec![0, 1, 4]);
        assert_eq!(sh.hash_at_snapshot, &[5u8; 32]);
        let public: Vec<_> = SnapshotMapIter::new(pd.maps)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(public, vec![maps[0].clone()]);
        let plain = e.decrypt_private(&key).unwrap();
        let private: Vec<_> = SnapshotMapIter::new(&plain)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(private, vec![maps[1].clone()]);
    }

    #[test]
    fn names() {
        let n = SnapshotName::parse("snapshot_100_105.committed").unwrap();
        assert_eq!(
            n,
            SnapshotName {
                seqno: 100,
                evidence_seqno: 105,
                committed: true
            }
        );
        assert_eq!(n.file_name(), "snapshot_100_105.committed");
        for bad in ["snapshot_100", "snapshot_5_5", "snapshot_a_b", "ledger_1_2"] {
            assert!(SnapshotName::parse(bad).is_none());
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            for m in SnapshotMapIter::new(&bytes) { let _ = m; }
            let _ = split_snapshot_file(&bytes);
        }
    }
}
