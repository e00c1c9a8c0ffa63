//! A cursor over one protobuf message's fields, for the decoders written by
//! hand where prost's generated ones cost too much: the client's `Read`
//! answers (`factum-client`'s `read.rs`) and the server's append requests
//! (`factum-server`'s `append_wire.rs`). It reads what prost reads and
//! refuses what prost refuses (a varint past 64 bits, field number 0 or one
//! past `u32::MAX >> 3`, a length past the end, groups nested more than
//! 100 deep), naming what was wrong; each decoder decides what a refusal
//! means (the client's error, the server's fallback to prost).
//!
//! Positions are offsets into the buffer the cursor was made over, so a
//! decoder holding that buffer as `Bytes` can slice a field without
//! copying it.

use std::ops::Range;

/// Wire type of varints (`int32`, `uint64`, `bool`, enums …).
pub const VARINT: u8 = 0;
/// Wire type of 8-byte fixed fields.
pub const I64: u8 = 1;
/// Wire type of length-delimited fields (bytes, strings, messages).
pub const LEN: u8 = 2;
/// Wire type of a group's start (proto2).
pub const START_GROUP: u8 = 3;
/// Wire type of a group's end.
pub const END_GROUP: u8 = 4;
/// Wire type of 4-byte fixed fields.
pub const I32: u8 = 5;

/// How deep skipped groups may nest (prost's recursion limit), so that a
/// message of nested group starts cannot overflow the stack.
pub const MAX_GROUP_DEPTH: u32 = 100;

/// What is wrong with a message, in a few words ("truncated varint").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

/// The fields of one message: `buf[at..end]`.
pub struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    /// The fields of the message that is all of `buf`.
    #[inline]
    pub fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields {
            buf,
            at: 0,
            end: buf.len(),
        }
    }

    /// The fields of the message at `range` of `buf` (a sub-message
    /// [`Fields::delimited`] returned); positions stay offsets into `buf`.
    /// A range past `buf` is cut to it.
    #[inline]
    pub fn within(buf: &'a [u8], range: Range<usize>) -> Fields<'a> {
        let end = range.end.min(buf.len());
        Fields {
            buf,
            at: range.start.min(end),
            end,
        }
    }

    /// Whether every field has been read.
    #[inline]
    pub fn done(&self) -> bool {
        self.at >= self.end
    }

    /// A varint.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, Malformed> {
        // Most varints (keys, lengths, small numbers) are one byte.
        if self.at < self.end {
            let b = self.buf[self.at];
            if b < 0x80 {
                self.at += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_long()
    }

    fn varint_long(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for i in 0..10 {
            if self.at >= self.end {
                return Err(Malformed("truncated varint"));
            }
            let b = self.buf[self.at];
            self.at += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // A tenth byte carries the 64th bit only.
                if i == 9 && b > 1 {
                    break;
                }
                return Ok(v);
            }
        }
        Err(Malformed("varint too long"))
    }

    /// The next field's number and wire type; `None` at the end.
    #[inline]
    pub fn key(&mut self) -> Result<Option<(u64, u8)>, Malformed> {
        if self.done() {
            return Ok(None);
        }
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(Malformed("field number too large"));
        }
        let field = key >> 3;
        if field == 0 {
            return Err(Malformed("field number 0"));
        }
        Ok(Some((field, (key & 7) as u8)))
    }

    /// A length-delimited field's position (its length prefix read).
    #[inline]
    pub fn delimited(&mut self) -> Result<Range<usize>, Malformed> {
        let len = self.varint()?;
        let start = self.at;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|e| *e <= self.end)
            .ok_or(Malformed("length past the end"))?;
        self.at = end;
        Ok(start..end)
    }

    /// A length-delimited field's bytes.
    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let range = self.delimited()?;
        Ok(&self.buf[range])
    }

    /// A length-delimited field, after checking its wire type.
    #[inline]
    pub fn expect_delimited(&mut self, wire_type: u8) -> Result<Range<usize>, Malformed> {
        if wire_type != LEN {
            return Err(Malformed("wrong wire type"));
        }
        self.delimited()
    }

    /// A varint field, after checking its wire type.
    #[inline]
    pub fn expect_varint(&mut self, wire_type: u8) -> Result<u64, Malformed> {
        if wire_type != VARINT {
            return Err(Malformed("wrong wire type"));
        }
        self.varint()
    }

    #[inline]
    fn advance(&mut self, n: usize) -> Result<(), Malformed> {
        if self.end - self.at < n {
            return Err(Malformed("truncated field"));
        }
        self.at += n;
        Ok(())
    }

    /// Skips a field of this number and wire type (its key already read),
    /// a group with everything in it.
    #[inline]
    pub fn skip(&mut self, field: u64, wire_type: u8) -> Result<(), Malformed> {
        self.skip_nested(field, wire_type, 0)
    }

    fn skip_nested(&mut self, field: u64, wire_type: u8, depth: u32) -> Result<(), Malformed> {
        match wire_type {
            VARINT => self.varint().map(drop),
            I64 => self.advance(8),
            LEN => self.delimited().map(drop),
            I32 => self.advance(4),
            START_GROUP if depth >= MAX_GROUP_DEPTH => Err(Malformed("groups nested too deep")),
            START_GROUP => loop {
                match self.key()? {
                    Some((f, END_GROUP)) if f == field => return Ok(()),
                    Some((f, t)) => self.skip_nested(f, t, depth + 1)?,
                    None => return Err(Malformed("unterminated group")),
                }
            },
            _ => Err(Malformed("unknown wire type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// What prost makes of a message of unknown fields only: accepted or
    /// refused, as the cursor skipping every field does.
    fn prost_accepts(buf: &[u8]) -> bool {
        crate::shared::Empty::decode(buf).is_ok()
    }

    fn cursor_accepts(buf: &[u8]) -> bool {
        let mut f = Fields::new(buf);
        loop {
            match f.key() {
                Ok(Some((field, wire))) => {
                    if f.skip(field, wire).is_err() {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn varints_at_their_edges() {
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Fields::new(&max).varint(), Ok(u64::MAX));
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(
            Fields::new(&over).varint(),
            Err(Malformed("varint too long"))
        );
        assert_eq!(
            Fields::new(&[0x80, 0x80]).varint(),
            Err(Malformed("truncated varint"))
        );
        assert_eq!(Fields::new(&[0x96, 0x01]).varint(), Ok(150));
        // Within a range: the bytes after it are not the message's.
        let mut f = Fields::within(&[0x08, 0x96, 0x01], 0..2);
        assert_eq!(f.key(), Ok(Some((1, VARINT))));
        assert_eq!(f.varint(), Err(Malformed("truncated varint")));
    }

    #[test]
    fn keys_lengths_and_groups_as_prost_takes_them() {
        let cases: &[&[u8]] = &[
            &[],
            &[0x08, 0x01],                         // field 1 varint
            &[0x00, 0x01],                         // field 0
            &[0x0a, 0x05, 1, 2],                   // length past the end
            &[0x0b, 0x08, 0x01, 0x0c],             // group 1 { field 1 }
            &[0x0b, 0x08, 0x01],                   // unterminated group
            &[0x0b, 0x14],                         // group 1 ended as 2
            &[0x0e],                               // wire type 6
            &[0x09, 1, 2, 3, 4, 5, 6, 7, 8],       // fixed64
            &[0x0d, 1, 2, 3],                      // truncated fixed32
            &[0xf8, 0xff, 0xff, 0xff, 0x0f, 0x01], // field u32::MAX >> 3
            &[0x80, 0x80, 0x80, 0x80, 0x10, 0x01], // key past u32::MAX
        ];
        for buf in cases {
            assert_eq!(cursor_accepts(buf), prost_accepts(buf), "{buf:x?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n(0x0b, 101)
            .chain(std::iter::repeat_n(0x0c, 101))
            .collect();
        assert!(!cursor_accepts(&deep));
        let shallow: Vec<u8> = std::iter::repeat_n(0x0b, 99)
            .chain(std::iter::repeat_n(0x0c, 99))
            .collect();
        assert!(cursor_accepts(&shallow));
    }

    #[test]
    fn fields_slice_the_buffer_they_were_made_over() {
        // field 2 "abc", field 3 varint 7
        let buf = [0x12, 3, b'a', b'b', b'c', 0x18, 7];
        let mut f = Fields::new(&buf);
        let (n, w) = f.key().unwrap().unwrap();
        assert_eq!((n, w), (2, LEN));
        assert_eq!(f.expect_delimited(w), Ok(2..5));
        let (n, w) = f.key().unwrap().unwrap();
        assert_eq!(n, 3);
        assert_eq!(f.expect_delimited(w), Err(Malformed("wrong wire type")));
        let mut f = Fields::new(&buf);
        f.key().unwrap();
        assert_eq!(f.bytes(), Ok(&b"abc"[..]));
        assert_eq!(f.key(), Ok(Some((3, VARINT))));
        assert_eq!(f.expect_varint(VARINT), Ok(7));
        assert!(f.done());
        assert_eq!(f.key(), Ok(None));
    }
}
