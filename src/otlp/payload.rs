//! An encoded export request held as one or more byte segments, so a request whose spans were
//! tagged shares the received bytes instead of being copied whole into a new buffer.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// The bytes of one encoded request: usually the received buffer as it came, or, once spliced,
/// slices of it interleaved with the few bytes that changed. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Payload {
    One(Bytes),
    Parts {
        parts: Arc<[Bytes]>,
        /// The sum of the parts' lengths.
        len: usize,
    },
}

impl Default for Payload {
    fn default() -> Self {
        Payload::One(Bytes::new())
    }
}

impl Payload {
    /// A payload of these parts, in order (one part is kept as it is).
    pub fn from_parts(mut parts: Vec<Bytes>) -> Self {
        if parts.len() <= 1 {
            return Payload::One(parts.pop().unwrap_or_default());
        }
        let len = parts.iter().map(Bytes::len).sum();
        Payload::Parts {
            parts: parts.into(),
            len,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Payload::One(b) => b.len(),
            Payload::Parts { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segments, in order; their concatenation is the request.
    pub fn parts(&self) -> &[Bytes] {
        match self {
            Payload::One(b) => std::slice::from_ref(b),
            Payload::Parts { parts, .. } => parts,
        }
    }

    /// The request as one contiguous buffer: free for a single part, one copy otherwise.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Payload::One(b) => b.clone(),
            Payload::Parts { parts, len } => {
                let mut out = BytesMut::with_capacity(*len);
                for p in parts.iter() {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload::One(b)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload::One(Bytes::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_concatenate_in_order() {
        let p = Payload::from_parts(vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
        ]);
        assert_eq!(p.len(), 5);
        assert_eq!(p.parts().len(), 3);
        assert_eq!(&p.to_bytes()[..], b"abcde");
        assert_eq!(&p.clone().to_bytes()[..], b"abcde");
    }

    #[test]
    fn one_part_is_not_copied() {
        let b = Bytes::from(vec![7u8; 64]);
        let p = Payload::from_parts(vec![b.clone()]);
        assert!(matches!(p, Payload::One(_)));
        assert_eq!(p.to_bytes().as_ptr(), b.as_ptr());
        assert!(Payload::from_parts(Vec::new()).is_empty());
    }
}
