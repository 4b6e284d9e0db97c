//! Protobuf wire-format reading and splicing of OTLP trace requests, without decoding every span.
//!
//! The hot path scans an `ExportTraceServiceRequest` once, field by field, looking only at what can
//! reveal a failure signal (status code, event names, a few attribute keys) and at id lengths. Spans
//! that need a change (tags appended, or removal of a span with invalid ids) are spliced: appended
//! attributes go at the end of the span (a repeated field may be appended to), and only the length
//! prefixes of the enclosing messages are rewritten. Everything else is copied as it came.

use std::ops::Range;

use thiserror::Error;

/// A protobuf payload that could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated varint at byte {0}")]
    TruncatedVarint(usize),
    #[error("field at byte {at} has length {len}, past the end of its message ({end})")]
    LengthOutOfRange { at: usize, len: u64, end: usize },
    #[error("unsupported wire type {wire_type} at byte {at}")]
    BadWireType { at: usize, wire_type: u8 },
    #[error("field number 0 at byte {0}")]
    ZeroField(usize),
    #[error(
        "field {field} at byte {at} has wire type {wire_type}, expected a length-delimited message"
    )]
    NotAMessage {
        at: usize,
        field: u32,
        wire_type: u8,
    },
}

pub const WT_VARINT: u8 = 0;
pub const WT_I64: u8 = 1;
pub const WT_LEN: u8 = 2;
pub const WT_I32: u8 = 5;

/// Reads a base-128 varint at `*pos`, advancing it.
#[inline(always)]
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    // Tags and most lengths are one byte.
    if let Some(&b) = buf.get(*pos) {
        if b < 0x80 {
            *pos += 1;
            return Ok(u64::from(b));
        }
    }
    read_varint_slow(buf, pos)
}

#[inline(never)]
fn read_varint_slow(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let start = *pos;
    let mut value: u64 = 0;
    let mut shift = 0u32;
    loop {
        let Some(&b) = buf.get(*pos) else {
            return Err(WireError::TruncatedVarint(start));
        };
        *pos += 1;
        if shift < 64 {
            value |= u64::from(b & 0x7f) << shift;
        }
        if b < 0x80 {
            return Ok(value);
        }
        shift += 7;
        if shift >= 70 {
            return Err(WireError::TruncatedVarint(start));
        }
    }
}

/// Number of bytes `v` takes as a varint.
#[inline]
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `v` as a varint.
#[inline]
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One field of a message: its number, wire type, where it starts (at its tag), where its value
/// starts, and where it ends. For length-delimited fields the value range excludes the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub number: u32,
    pub wire_type: u8,
    pub start: usize,
    pub tag_end: usize,
    pub value_start: usize,
    pub end: usize,
    /// The varint value for wire type 0, the raw bits for fixed types.
    pub scalar: u64,
}

impl Field {
    #[inline]
    pub fn value(&self) -> Range<usize> {
        self.value_start..self.end
    }
}

/// Iterates the fields of the message in `buf[range]`.
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    #[inline]
    pub fn new(buf: &'a [u8], range: Range<usize>) -> Self {
        Fields {
            buf,
            pos: range.start,
            end: range.end,
            failed: false,
        }
    }

    #[inline(always)]
    fn next_field(&mut self) -> Result<Field, WireError> {
        let start = self.pos;
        let buf = &self.buf[..self.end];
        let key = read_varint(buf, &mut self.pos)?;
        let number = (key >> 3) as u32;
        let wire_type = (key & 7) as u8;
        if number == 0 {
            return Err(WireError::ZeroField(start));
        }
        let tag_end = self.pos;
        let mut scalar = 0;
        let value_start;
        match wire_type {
            WT_VARINT => {
                scalar = read_varint(buf, &mut self.pos)?;
                value_start = tag_end;
            }
            WT_I64 | WT_I32 => {
                let n = if wire_type == WT_I64 { 8 } else { 4 };
                let Some(bytes) = buf.get(self.pos..self.pos + n) else {
                    return Err(WireError::LengthOutOfRange {
                        at: start,
                        len: n as u64,
                        end: self.end,
                    });
                };
                let mut raw = [0u8; 8];
                raw[..n].copy_from_slice(bytes);
                scalar = u64::from_le_bytes(raw);
                self.pos += n;
                value_start = tag_end;
            }
            WT_LEN => {
                let len = read_varint(buf, &mut self.pos)?;
                value_start = self.pos;
                if len > (self.end - self.pos) as u64 {
                    return Err(WireError::LengthOutOfRange {
                        at: start,
                        len,
                        end: self.end,
                    });
                }
                self.pos += len as usize;
            }
            other => {
                return Err(WireError::BadWireType {
                    at: start,
                    wire_type: other,
                })
            }
        }
        Ok(Field {
            number,
            wire_type,
            start,
            tag_end,
            value_start,
            end: self.pos,
            scalar,
        })
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<Field, WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.end {
            return None;
        }
        let r = self.next_field();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Requires a field to be length-delimited (a sub-message, string or bytes).
#[inline]
pub fn expect_len(f: &Field) -> Result<Range<usize>, WireError> {
    if f.wire_type == WT_LEN {
        Ok(f.value())
    } else {
        Err(WireError::NotAMessage {
            at: f.start,
            field: f.number,
            wire_type: f.wire_type,
        })
    }
}

/// Appends a length-delimited field with the given number and payload.
pub fn write_len_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    write_varint(out, (u64::from(number) << 3) | u64::from(WT_LEN));
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Counts the occurrences of length-delimited field `outer`, then of field `inner` inside each:
/// used to count log records and metric data for pass-through accounting.
pub fn count_nested(buf: &[u8], path: &[u32]) -> Result<u64, WireError> {
    fn walk(buf: &[u8], range: Range<usize>, path: &[u32]) -> Result<u64, WireError> {
        let Some((&first, rest)) = path.split_first() else {
            return Ok(1);
        };
        let mut n = 0;
        for f in Fields::new(buf, range) {
            let f = f?;
            if f.number == first {
                let r = expect_len(&f)?;
                n += if rest.is_empty() {
                    1
                } else {
                    walk(buf, r, rest)?
                };
            }
        }
        Ok(n)
    }
    walk(buf, 0..buf.len(), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "len of {v}");
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos).unwrap(), v);
            assert_eq!(pos, out.len());
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut pos = 0;
        assert!(read_varint(&[0x80, 0x80], &mut pos).is_err());
        // field 1, LEN, length 10 but only 2 bytes follow
        let buf = [0x0a, 10, 1, 2];
        let r: Result<Vec<_>, _> = Fields::new(&buf, 0..buf.len()).collect();
        assert!(matches!(r, Err(WireError::LengthOutOfRange { .. })));
    }
}
