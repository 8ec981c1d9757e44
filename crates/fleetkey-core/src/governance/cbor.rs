//! A strict reader over `minicbor` (definite lengths, shortest-form heads only) and the
//! `Sig_structure` writer of RFC 9052 section 4.4, both without allocation.

use minicbor::Decoder;
use minicbor::data::Type;

use super::{EXTERNAL_AAD, Field, GovernanceError, MAX_RECORD_LEN};

/// The length of the shortest CBOR head carrying `value` (RFC 8949 section 4.2.1).
const fn head_len(value: u64) -> usize {
    if value < 24 {
        1
    } else if value <= 0xff {
        2
    } else if value <= 0xffff {
        3
    } else if value <= 0xffff_ffff {
        5
    } else {
        9
    }
}

/// Reads the deterministic CBOR subset the records use. Every error is `Malformed(field)`.
pub(super) struct Reader<'b> {
    d: Decoder<'b>,
}

impl<'b> Reader<'b> {
    pub(super) fn new(bytes: &'b [u8]) -> Self {
        Self {
            d: Decoder::new(bytes),
        }
    }

    /// Checks that the item just read took `expected` bytes from `start`.
    fn consumed(&self, start: usize, expected: usize, field: Field) -> Result<(), GovernanceError> {
        if self.d.position().checked_sub(start) == Some(expected) {
            Ok(())
        } else {
            Err(GovernanceError::Malformed(field))
        }
    }

    pub(super) fn at_end(&self) -> bool {
        self.d.position() == self.d.input().len()
    }

    pub(super) fn uint(&mut self, field: Field) -> Result<u64, GovernanceError> {
        let start = self.d.position();
        match self.d.datatype() {
            Ok(Type::U8 | Type::U16 | Type::U32 | Type::U64) => {}
            _ => return Err(GovernanceError::Malformed(field)),
        }
        let v = self
            .d
            .u64()
            .map_err(|_| GovernanceError::Malformed(field))?;
        self.consumed(start, head_len(v), field)?;
        Ok(v)
    }

    pub(super) fn u32(&mut self, field: Field) -> Result<u32, GovernanceError> {
        u32::try_from(self.uint(field)?).map_err(|_| GovernanceError::Malformed(field))
    }

    /// A negative integer (major type 1), returned as its value.
    pub(super) fn nint(&mut self, field: Field) -> Result<i64, GovernanceError> {
        let start = self.d.position();
        match self.d.datatype() {
            Ok(Type::I8 | Type::I16 | Type::I32 | Type::I64) => {}
            _ => return Err(GovernanceError::Malformed(field)),
        }
        let v = self
            .d
            .i64()
            .map_err(|_| GovernanceError::Malformed(field))?;
        // v < 0 here, so -1 - v is the head's argument and fits in u64.
        let arg = u64::try_from(-1_i64 - v).map_err(|_| GovernanceError::Malformed(field))?;
        self.consumed(start, head_len(arg), field)?;
        Ok(v)
    }

    pub(super) fn bytes(&mut self, field: Field) -> Result<&'b [u8], GovernanceError> {
        let start = self.d.position();
        let b = self
            .d
            .bytes()
            .map_err(|_| GovernanceError::Malformed(field))?;
        let n = u64::try_from(b.len()).map_err(|_| GovernanceError::Malformed(field))?;
        self.consumed(start, head_len(n).saturating_add(b.len()), field)?;
        Ok(b)
    }

    pub(super) fn str(&mut self, field: Field) -> Result<&'b str, GovernanceError> {
        let start = self.d.position();
        let s = self
            .d
            .str()
            .map_err(|_| GovernanceError::Malformed(field))?;
        let n = u64::try_from(s.len()).map_err(|_| GovernanceError::Malformed(field))?;
        self.consumed(start, head_len(n).saturating_add(s.len()), field)?;
        Ok(s)
    }

    fn length(&mut self, field: Field, map: bool) -> Result<u64, GovernanceError> {
        let start = self.d.position();
        let n = if map { self.d.map() } else { self.d.array() };
        let n = n
            .map_err(|_| GovernanceError::Malformed(field))?
            .ok_or(GovernanceError::Malformed(field))?;
        self.consumed(start, head_len(n), field)?;
        Ok(n)
    }

    pub(super) fn array(&mut self, field: Field) -> Result<u64, GovernanceError> {
        self.length(field, false)
    }

    pub(super) fn map(&mut self, field: Field) -> Result<u64, GovernanceError> {
        self.length(field, true)
    }

    pub(super) fn tag(&mut self, field: Field) -> Result<u64, GovernanceError> {
        let start = self.d.position();
        let t = self
            .d
            .tag()
            .map_err(|_| GovernanceError::Malformed(field))?
            .as_u64();
        self.consumed(start, head_len(t), field)?;
        Ok(t)
    }

    /// Reads a map key and requires it to be `label`: with labels read in ascending order this
    /// makes every field present exactly once, in deterministic order.
    pub(super) fn label(&mut self, label: u64, field: Field) -> Result<(), GovernanceError> {
        if self.uint(field)? == label {
            Ok(())
        } else {
            Err(GovernanceError::Malformed(field))
        }
    }
}

/// The longest `Sig_structure`: the record's protected header and payload together are shorter
/// than the record, plus the fixed parts and three heads.
pub(super) const MAX_TBS_LEN: usize = MAX_RECORD_LEN + 64;

/// `Sig_structure = ["Signature1", protected, external_aad, payload]` (RFC 9052 section 4.4),
/// written into a fixed buffer.
pub(super) struct Tbs {
    bytes: [u8; MAX_TBS_LEN],
    len: usize,
}

impl Tbs {
    pub(super) fn new(protected: &[u8], payload: &[u8]) -> Result<Self, GovernanceError> {
        let mut tbs = Self {
            bytes: [0; MAX_TBS_LEN],
            len: 0,
        };
        tbs.head(4, 4)?;
        tbs.head(3, 10)?;
        tbs.push(b"Signature1")?;
        tbs.bstr(protected)?;
        tbs.bstr(EXTERNAL_AAD)?;
        tbs.bstr(payload)?;
        Ok(tbs)
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    fn push(&mut self, data: &[u8]) -> Result<(), GovernanceError> {
        let end = self
            .len
            .checked_add(data.len())
            .ok_or(GovernanceError::TooLarge(Field::Record))?;
        self.bytes
            .get_mut(self.len..end)
            .ok_or(GovernanceError::TooLarge(Field::Record))?
            .copy_from_slice(data);
        self.len = end;
        Ok(())
    }

    fn bstr(&mut self, data: &[u8]) -> Result<(), GovernanceError> {
        let n = u64::try_from(data.len()).map_err(|_| GovernanceError::TooLarge(Field::Record))?;
        self.head(2, n)?;
        self.push(data)
    }

    fn head(&mut self, major: u8, value: u64) -> Result<(), GovernanceError> {
        let m = major << 5;
        let be = value.to_be_bytes();
        match head_len(value) {
            1 => self.push(&[m | be[7]]),
            2 => self.push(&[m | 24, be[7]]),
            3 => self.push(&[m | 25, be[6], be[7]]),
            5 => {
                self.push(&[m | 26])?;
                self.push(&[be[4], be[5], be[6], be[7]])
            }
            _ => {
                self.push(&[m | 27])?;
                self.push(&be)
            }
        }
    }
}
