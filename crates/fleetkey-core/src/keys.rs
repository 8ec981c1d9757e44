//! Secret key types, one per role.
//!
//! Every type here zeroizes its bytes on drop, prints only its name under `Debug`, and compares in
//! constant time. Bytes leave a key only through `expose_secret`, so a reader can find every place
//! where key material is handed to a primitive.

use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop};

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident, $len:literal) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length of this key in bytes.
            pub const LEN: usize = $len;

            /// Takes ownership of key bytes. The caller should zeroize its own copy, if any.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Copies key bytes from a slice; `None` when the length is not exactly `LEN`.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                let array: [u8; $len] = bytes.try_into().ok()?;
                Some(Self(array))
            }

            /// The key bytes, for handing to a primitive. Do not log, print or store them.
            pub const fn expose_secret(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> Choice {
                self.0.ct_eq(&other.0)
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.ct_eq(other).into()
            }
        }

        impl Eq for $name {}
    };
}

secret_key!(
    /// The master of one generation (32 bytes): the PRK of device key derivation v1.
    /// On the manager side it stays in the key module; it never reaches a device.
    MasterKey,
    32
);
secret_key!(
    /// A 128-bit AES key: a device's AUTH or KEY_UPDATE key, or a SHE slot key.
    Key128,
    16
);
secret_key!(
    /// The base of rolling session keys (32 bytes): a device's ROLL_SEED key or a network's
    /// group seed.
    RollSeed,
    32
);
secret_key!(
    /// The AES-128 key of one roll epoch on one channel, used for SecOC frame MACs.
    SessionKey,
    16
);

#[cfg(test)]
mod tests;
