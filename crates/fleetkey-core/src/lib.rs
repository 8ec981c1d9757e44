#![doc = include_str!("../README.md")]
#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable
    )
)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod derive;
pub mod governance;
pub mod keys;
pub mod prf;
pub mod roll;
pub mod secoc;
pub mod she;

pub use derive::{
    DeriveError, Deriver, DeviceKey, DeviceKeyInputs, Generation, Revision, Serial, Usage,
};
pub use keys::{Key128, MasterKey, RollSeed, SessionKey};
pub use roll::{Epoch, RollError, RollSchedule, Roller};
