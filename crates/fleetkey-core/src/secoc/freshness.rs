//! Freshness values: the sender's 64-bit counter, truncation, and the receiver's reconstruction
//! (AUTOSAR SWS SecOC, "verification of a Secured I-PDU": replace the low bits of the latest
//! FV, carry into the high bits when the received bits are not above them).

use super::SecocError;

/// A sender's freshness counter for one DataId: full FVs 1, 2, 3, ..., never reset, never
/// wrapped.
///
/// **Persistence by reservation.** A counter that must survive power cycles never hands out an
/// FV above its reservation limit. The application persists a limit *before* using the FVs
/// under it, so a crash at any point loses at most unused FVs and never repeats one:
///
/// 1. At boot: `FreshnessCounter::restore(persisted)`: the next FV is `persisted + 1` and
///    nothing is reserved yet.
/// 2. `let r = counter.reservation(n)`; write `r` to non-volatile memory and wait until the
///    write is durable; then `counter.commit_reservation(r)`.
/// 3. [`next_fv`](Self::next_fv) hands out FVs up to `r`, then fails with
///    [`SecocError::FreshnessNotReserved`] until step 2 is done again (do it early, e.g. when
///    [`reserved_remaining`](Self::reserved_remaining) falls below `n / 2`).
///
/// After a power cycle the FVs between the last one sent and `r` are skipped; receivers accept
/// the jump (within the profile's reconstruction range and verify attempts: keep `n` below
/// `2^fv_bits` for the truncated profiles, or the receiver needs extra verify attempts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreshnessCounter {
    last: u64,
    limit: u64,
}

impl Default for FreshnessCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl FreshnessCounter {
    /// A volatile counter whose first FV is 1, with no reservation limit.
    pub const fn new() -> Self {
        Self {
            last: 0,
            limit: u64::MAX,
        }
    }

    /// A volatile counter whose first FV is `first` (at least 1).
    pub const fn starting_at(first: u64) -> Result<Self, SecocError> {
        match first.checked_sub(1) {
            Some(last) => Ok(Self {
                last,
                limit: u64::MAX,
            }),
            None => Err(SecocError::FreshnessZero),
        }
    }

    /// A counter restored from a persisted reservation: the next FV is `persisted + 1`, and none
    /// is available until a new reservation is committed.
    pub const fn restore(persisted: u64) -> Self {
        Self {
            last: persisted,
            limit: persisted,
        }
    }

    /// The last FV handed out (0 before the first).
    pub const fn last(&self) -> u64 {
        self.last
    }

    /// How many FVs remain under the committed reservation.
    pub const fn reserved_remaining(&self) -> u64 {
        self.limit.saturating_sub(self.last)
    }

    /// The value to persist to reserve `count` more FVs (saturates at `u64::MAX`).
    pub const fn reservation(&self, count: u64) -> u64 {
        self.last.saturating_add(count)
    }

    /// Records that `persisted` is durably stored: FVs up to it may now be used. A value below
    /// the current limit changes nothing.
    pub fn commit_reservation(&mut self, persisted: u64) {
        self.limit = self.limit.max(persisted);
    }

    /// The next full FV. Fails at `u64::MAX` (no wrap) and past the committed reservation.
    pub fn next_fv(&mut self) -> Result<u64, SecocError> {
        let Some(fv) = self.last.checked_add(1) else {
            return Err(SecocError::FreshnessExhausted);
        };
        if fv > self.limit {
            return Err(SecocError::FreshnessNotReserved);
        }
        self.last = fv;
        Ok(fv)
    }

    /// Whether [`next_fv`](Self::next_fv) would succeed, without using an FV.
    pub const fn can_send(&self) -> bool {
        self.last < self.limit
    }
}

/// The low `fv_bits` bits of a full FV (`fv_bits` 0..=64).
pub const fn truncate_fv(fv: u64, fv_bits: u32) -> u64 {
    if fv_bits >= 64 {
        fv
    } else {
        fv & ((1u64 << fv_bits) - 1)
    }
}

/// The full FV a receiver tries for a truncated value `t`, given its latest accepted FV
/// `latest`, at verify attempt `attempt` (0 for the first).
///
/// ```text
/// base      = (latest with its low fv_bits replaced by t)       if t > low fv_bits of latest
///           = ((latest >> fv_bits) + 1) << fv_bits | t           otherwise (carry)
/// candidate = base + attempt * 2^fv_bits
/// ```
/// With `fv_bits = 0` this is `latest + 1 + attempt`. The result is always above `latest`;
/// `None` when it would pass `u64::MAX` or `fv_bits > 64` or `t` has more than `fv_bits` bits.
pub fn reconstruct(latest: u64, t: u64, fv_bits: u32, attempt: u32) -> Option<u64> {
    if !fits(t, fv_bits) {
        return None;
    }
    if fv_bits == 64 {
        return (attempt == 0 && t > latest).then_some(t);
    }
    let modulus = 1u64 << fv_bits;
    let high = latest & !(modulus - 1);
    let base = if t > latest & (modulus - 1) {
        high | t
    } else {
        high.checked_add(modulus)? | t
    };
    base.checked_add(u64::from(attempt).checked_mul(modulus)?)
}

/// The most recent full FV at or below `latest` whose low `fv_bits` bits are `t`: the FV a
/// replayed frame with truncated value `t` most likely carried. `None` when there is none above
/// 0 (FV 0 is never sent).
pub fn replay_candidate(latest: u64, t: u64, fv_bits: u32) -> Option<u64> {
    if !fits(t, fv_bits) {
        return None;
    }
    let fv = if fv_bits == 64 {
        t
    } else {
        let modulus = 1u64 << fv_bits;
        let base = (latest & !(modulus - 1)) | t;
        if base <= latest {
            base
        } else {
            base.checked_sub(modulus)?
        }
    };
    (fv > 0 && fv <= latest).then_some(fv)
}

/// Whether `t` is a truncated value of `fv_bits` bits (`fv_bits` 0..=64).
const fn fits(t: u64, fv_bits: u32) -> bool {
    match fv_bits {
        64 => true,
        0..64 => t >> fv_bits == 0,
        _ => false,
    }
}
