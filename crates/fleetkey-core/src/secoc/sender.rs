//! Securing frames: `payload || truncated FV || truncated MAC`.

use super::SecocError;
use super::freshness::FreshnessCounter;
use super::mac::FrameKey;
use super::profile::{MAX_FRAME, Profile};

/// Secures `payload` with an explicit full FV into `out`; returns the secured frame's length.
///
/// `out[..len] = payload || low fv_len bytes of fv (BE) || leftmost mac_len bytes of
/// AES-CMAC(key, data_id (BE) || payload || fv (u64 BE))`. This is the stateless form (for
/// tools and test vectors); a [`Sender`] picks the FV from its counter.
pub fn secure(
    profile: &Profile,
    key: &FrameKey,
    data_id: u16,
    payload: &[u8],
    fv: u64,
    out: &mut [u8],
) -> Result<usize, SecocError> {
    let len = check_lengths(profile, payload.len(), out.len())?;
    let tag = key.authenticator(data_id, payload, fv);
    let fv_bytes = fv.to_be_bytes();
    let needed = SecocError::OutputTooSmall { needed: len };
    // `check_lengths` proved `payload.len() + fv_len + mac_len == len <= out.len()`, and a
    // profile has `fv_len <= 8` and `mac_len <= 16`: every split and copy below has equal lengths.
    let (p, rest) = out
        .get_mut(..len)
        .ok_or(needed)?
        .split_at_mut_checked(payload.len())
        .ok_or(needed)?;
    let (f, m) = rest.split_at_mut_checked(profile.fv_len()).ok_or(needed)?;
    p.copy_from_slice(payload);
    f.copy_from_slice(fv_bytes.get(8 - profile.fv_len()..).ok_or(needed)?);
    m.copy_from_slice(tag.get(..profile.mac_len()).ok_or(needed)?);
    Ok(len)
}

fn check_lengths(
    profile: &Profile,
    payload_len: usize,
    out_len: usize,
) -> Result<usize, SecocError> {
    let len = profile
        .secured_len(payload_len)
        .ok_or(SecocError::PayloadTooLong {
            len: payload_len,
            max: profile.max_payload(),
        })?;
    if out_len < len {
        return Err(SecocError::OutputTooSmall { needed: len });
    }
    Ok(len)
}

/// What [`Sender::secure`] wrote: the secured frame's length and the full FV it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Secured {
    /// Bytes written to the output.
    pub len: usize,
    /// The full freshness value used.
    pub fv: u64,
}

/// A secured frame in a fixed 64-byte buffer (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecuredFrame {
    bytes: [u8; MAX_FRAME],
    len: u8,
    fv: u64,
}

impl SecuredFrame {
    /// The secured frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The secured frame's length.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the frame is empty (never, for a valid profile).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The full freshness value the frame was secured with.
    pub const fn fv(&self) -> u64 {
        self.fv
    }
}

impl core::fmt::Debug for SecuredFrame {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SecuredFrame")
            .field("bytes", &self.as_bytes())
            .field("fv", &self.fv)
            .finish()
    }
}

/// The sending side of one DataId (one PDU): its profile and its freshness counter.
///
/// The key is an argument, so one sender keeps its counter across key rolls: the epoch selects
/// the key, never the FV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    profile: Profile,
    data_id: u16,
    freshness: FreshnessCounter,
}

impl Sender {
    /// A sender whose first FV is 1 (a volatile counter).
    pub const fn new(profile: Profile, data_id: u16) -> Self {
        Self {
            profile,
            data_id,
            freshness: FreshnessCounter::new(),
        }
    }

    /// A sender with a given counter (restored or starting elsewhere).
    pub const fn with_freshness(
        profile: Profile,
        data_id: u16,
        freshness: FreshnessCounter,
    ) -> Self {
        Self {
            profile,
            data_id,
            freshness,
        }
    }

    /// The profile.
    pub const fn profile(&self) -> Profile {
        self.profile
    }

    /// The DataId.
    pub const fn data_id(&self) -> u16 {
        self.data_id
    }

    /// The freshness counter.
    pub const fn freshness(&self) -> &FreshnessCounter {
        &self.freshness
    }

    /// The freshness counter, to reserve and commit FVs for persistence.
    pub const fn freshness_mut(&mut self) -> &mut FreshnessCounter {
        &mut self.freshness
    }

    /// Secures `payload` with the next FV into `out`. Lengths are checked before an FV is used;
    /// an FV is never used twice.
    pub fn secure(
        &mut self,
        key: &FrameKey,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Secured, SecocError> {
        check_lengths(&self.profile, payload.len(), out.len())?;
        let fv = self.freshness.next_fv()?;
        let len = secure(&self.profile, key, self.data_id, payload, fv, out)?;
        Ok(Secured { len, fv })
    }

    /// Secures `payload` with the next FV into a [`SecuredFrame`].
    pub fn secure_frame(
        &mut self,
        key: &FrameKey,
        payload: &[u8],
    ) -> Result<SecuredFrame, SecocError> {
        let mut bytes = [0u8; MAX_FRAME];
        let Secured { len, fv } = self.secure(key, payload, &mut bytes)?;
        let len = u8::try_from(len).map_err(|_| SecocError::OutputTooSmall { needed: len })?;
        Ok(SecuredFrame { bytes, len, fv })
    }
}
