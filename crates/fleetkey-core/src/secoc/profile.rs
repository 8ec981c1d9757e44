//! SecOC profiles: how many FV and MAC bytes a secured frame carries, and how long it may be.

use super::SecocError;

/// The longest frame of any profile: a CAN FD data field.
pub const MAX_FRAME: usize = 64;

/// The data field lengths a CAN FD frame can have (ISO 11898-1: DLC 0..=15).
pub const CAN_FD_LENGTHS: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64];

/// Whether `len` is a CAN FD data field length.
pub fn is_can_fd_length(len: usize) -> bool {
    CAN_FD_LENGTHS.contains(&len)
}

/// The lengths of one SecOC profile, in whole bytes.
///
/// | name    | FV sent | MAC      | frame    | origin                                       |
/// |---------|---------|----------|----------|----------------------------------------------|
/// | `p1`    | 8 bits  | 24 bits  | <= 8     | AUTOSAR Profile 1 (24Bit-CMAC-8Bit-FV)       |
/// | `p2`    | none    | 24 bits  | <= 8     | AUTOSAR Profile 2 (24Bit-CMAC-No-FV) layout  |
/// | `fd64`  | 16 bits | 64 bits  | <= 64    | fleetkey, CAN FD                             |
/// | `fd128` | 32 bits | 128 bits | <= 64    | fleetkey, CAN FD                             |
///
/// The full FV in the MAC input is always 64 bits, for every profile (also `p2`, whose FV is
/// implicit: see `docs/secoc.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Profile {
    name: &'static str,
    fv_len: u8,
    mac_len: u8,
    max_frame: u8,
}

impl Profile {
    /// AUTOSAR Profile 1 for classic CAN: 8-bit truncated FV, 24-bit MAC, frame <= 8 bytes.
    pub const P1: Profile = Profile {
        name: "p1",
        fv_len: 1,
        mac_len: 3,
        max_frame: 8,
    };
    /// AUTOSAR Profile 2's layout for classic CAN: no FV sent, 24-bit MAC, frame <= 8 bytes.
    pub const P2: Profile = Profile {
        name: "p2",
        fv_len: 0,
        mac_len: 3,
        max_frame: 8,
    };
    /// CAN FD: 16-bit truncated FV, 64-bit MAC, frame <= 64 bytes.
    pub const FD64: Profile = Profile {
        name: "fd64",
        fv_len: 2,
        mac_len: 8,
        max_frame: 64,
    };
    /// CAN FD: 32-bit truncated FV, 128-bit MAC, frame <= 64 bytes.
    pub const FD128: Profile = Profile {
        name: "fd128",
        fv_len: 4,
        mac_len: 16,
        max_frame: 64,
    };
    /// The named profiles.
    pub const ALL: [Profile; 4] = [Self::P1, Self::P2, Self::FD64, Self::FD128];

    /// A named profile: `p1`, `p2`, `fd64` or `fd128`.
    pub fn by_name(name: &str) -> Result<Profile, SecocError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name == name)
            .ok_or(SecocError::UnknownProfile)
    }

    /// A custom profile: FV 0..=8 bytes, MAC 1..=16 bytes, `fv_len + mac_len <= max_frame <= 64`.
    pub const fn custom(
        name: &'static str,
        fv_len: u8,
        mac_len: u8,
        max_frame: u8,
    ) -> Result<Profile, SecocError> {
        if fv_len > 8
            || mac_len == 0
            || mac_len > 16
            || max_frame as usize > MAX_FRAME
            || (fv_len as usize + mac_len as usize) > max_frame as usize
        {
            return Err(SecocError::ProfileLengths);
        }
        Ok(Profile {
            name,
            fv_len,
            mac_len,
            max_frame,
        })
    }

    /// The profile's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Bytes of truncated FV in a secured frame.
    pub const fn fv_len(&self) -> usize {
        self.fv_len as usize
    }

    /// Bits of truncated FV in a secured frame (`8 * fv_len`).
    pub const fn fv_bits(&self) -> u32 {
        8 * self.fv_len as u32
    }

    /// Bytes of truncated MAC in a secured frame.
    pub const fn mac_len(&self) -> usize {
        self.mac_len as usize
    }

    /// The longest secured frame.
    pub const fn max_frame(&self) -> usize {
        self.max_frame as usize
    }

    /// FV and MAC bytes added to the payload.
    pub const fn overhead(&self) -> usize {
        self.fv_len() + self.mac_len()
    }

    /// The longest authentic payload.
    pub const fn max_payload(&self) -> usize {
        self.max_frame() - self.overhead()
    }

    /// The secured frame's length for a payload, `None` when the payload is too long.
    pub const fn secured_len(&self, payload_len: usize) -> Option<usize> {
        if payload_len > self.max_payload() {
            None
        } else {
            Some(payload_len + self.overhead())
        }
    }
}

impl core::fmt::Display for Profile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

impl core::str::FromStr for Profile {
    type Err = SecocError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::by_name(s)
    }
}
