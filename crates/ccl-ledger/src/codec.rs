//! Bounds-checked little-endian reading and writing, the building blocks of the ledger format.
//! Every read checks the remaining length first: malformed input yields a [`DecodeError`], never a
//! panic.

/// A malformed byte string: what was being read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} at byte {offset}")]
pub struct DecodeError {
    pub what: &'static str,
    pub offset: usize,
}

/// A cursor over a byte slice.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    pub fn err(&self, what: &'static str) -> DecodeError {
        DecodeError {
            what,
            offset: self.pos,
        }
    }
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.err(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    /// A length (u64 LE) that must fit in the remaining input.
    pub fn len_prefix(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > self.remaining() as u64 {
            return Err(DecodeError { what, offset: at });
        }
        Ok(n as usize)
    }
    /// A u64-length-prefixed byte string.
    pub fn sized(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.len_prefix(what)?;
        self.bytes(n, what)
    }
    /// A count (u64 LE) of items each at least `min_item_size` bytes long, checked against the
    /// remaining input so that a forged count cannot make the caller allocate without bound.
    pub fn count(
        &mut self,
        min_item_size: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n.saturating_mul(min_item_size as u64) > self.remaining() as u64 {
            return Err(DecodeError { what, offset: at });
        }
        Ok(n as usize)
    }
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        self.bytes(n, what).map(|_| ())
    }
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a u64-length-prefixed byte string.
pub fn put_sized(out: &mut Vec<u8>, data: &[u8]) {
    put_u64(out, data.len() as u64);
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let mut buf = Vec::new();
        put_u64(&mut buf, 7);
        put_sized(&mut buf, b"abc");
        let mut r = Reader::new(&buf);
        assert_eq!(r.u64("x").unwrap(), 7);
        assert_eq!(r.sized("s").unwrap(), b"abc");
        assert!(r.is_empty());
        assert!(r.u8("end").is_err());
        // A length larger than the input is refused, not allocated.
        let mut forged = Vec::new();
        put_u64(&mut forged, u64::MAX);
        assert_eq!(Reader::new(&forged).sized("s").unwrap_err().offset, 0);
        assert!(Reader::new(&forged).count(1, "n").is_err());
    }
}
