//! The three schemes (docs/manager.md), in one place: what each keeps per device at rest, and
//! where a device's keys come from.
//!
//! | scheme   | per device at rest                       | device keys                          |
//! |----------|------------------------------------------|--------------------------------------|
//! | stored   | a random 32-byte root, wrapped (KEK)     | derivation v1 with the root as PRK   |
//! | derived  | nothing                                  | derivation v1 with the generation's master |
//! | governed | nothing (plus the fleet's Ed25519 root)  | as derived                           |

use super::Fleet;
use crate::error::Error;
use crate::model::{DeviceRecord, Scheme, WrappedKey};

/// Where a device's keys come from.
#[derive(Clone, Copy, Debug)]
pub enum KeySource<'a> {
    /// The stored scheme: the device's own root (wrapped under the KEK).
    Root(&'a WrappedKey),
    /// The derived schemes: the master of the generation the derivation inputs name.
    Master,
}

impl KeySource<'_> {
    /// The source of `device`'s keys: its root when it has one (stored scheme), the generation's
    /// master otherwise.
    pub fn of(device: &DeviceRecord) -> KeySource<'_> {
        match &device.wrapped_root {
            Some(root) => KeySource::Root(root),
            None => KeySource::Master,
        }
    }
}

impl Fleet {
    /// What a new key set of a device needs at rest: the stored scheme draws a fresh random root
    /// (only its wrapped form leaves the key module), the derived schemes need nothing.
    pub(super) fn new_device_root(&self) -> Result<Option<WrappedKey>, Error> {
        match self.config.scheme {
            Scheme::Stored => Ok(Some(self.module()?.new_wrapped_root()?)),
            Scheme::Derived | Scheme::Governed => Ok(None),
        }
    }
}
