//! M1-M5: their byte layouts, [`build`] on the key manager's side and [`verify`] of the proof.

use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use super::crypto::{
    Block, KEY_UPDATE_ENC_C, KEY_UPDATE_MAC_C, KdfPair, cbc_decrypt_2, cbc_encrypt_2_with, cipher,
    cmac_of, cmac_parts, cmac_with, ecb_decrypt, ecb_encrypt, kdf,
};
use super::types::{Counter, KeyFlags, SheError, SlotId, Uid};
use crate::keys::Key128;

/// Which of the five messages, for errors and lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// M1: UID | ID | AuthID, 16 bytes.
    M1,
    /// M2: the encrypted counter, flags and new key, 32 bytes.
    M2,
    /// M3: CMAC over M1 || M2, 16 bytes.
    M3,
    /// M4: UID | ID | AuthID || encrypted counter, 32 bytes.
    M4,
    /// M5: CMAC over M4, 16 bytes.
    M5,
}

impl MessageKind {
    /// The message's fixed length in bytes.
    pub const fn length(self) -> usize {
        match self {
            Self::M1 | Self::M3 | Self::M5 => 16,
            Self::M2 | Self::M4 => 32,
        }
    }

    /// The lowercase name, `m1` .. `m5`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::M1 => "m1",
            Self::M2 => "m2",
            Self::M3 => "m3",
            Self::M4 => "m4",
            Self::M5 => "m5",
        }
    }
}

impl core::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

fn fixed<const N: usize>(kind: MessageKind, bytes: &[u8]) -> Result<[u8; N], SheError> {
    bytes.try_into().map_err(|_| SheError::Length {
        message: kind,
        expected: N,
        actual: bytes.len(),
    })
}

/// M1 = UID (15 bytes) || key id (high nibble) | auth id (low nibble).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct M1 {
    uid: Uid,
    key_id: SlotId,
    auth_id: SlotId,
}

impl M1 {
    /// Length in bytes.
    pub const LEN: usize = 16;

    /// M1 addressing `key_id` on the SHE with `uid`, authorised by `auth_id`.
    pub const fn new(uid: Uid, key_id: SlotId, auth_id: SlotId) -> Self {
        Self {
            uid,
            key_id,
            auth_id,
        }
    }

    /// The UID (may be the wildcard).
    pub const fn uid(&self) -> Uid {
        self.uid
    }

    /// The slot to update.
    pub const fn key_id(&self) -> SlotId {
        self.key_id
    }

    /// The authorising slot.
    pub const fn auth_id(&self) -> SlotId {
        self.auth_id
    }

    /// The 16 bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (uid, ids) = out.split_at_mut(Uid::LEN);
        uid.copy_from_slice(self.uid.as_bytes());
        ids.copy_from_slice(&[(self.key_id.id() << 4) | self.auth_id.id()]);
        out
    }

    /// Parses 16 bytes. Both nibbles must be slot ids `1 ..= 14`; whether the pair is allowed
    /// is a policy question left to the receiver ([`SlotId::may_be_updated_by`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SheError> {
        let [uid @ .., ids]: [u8; 16] = fixed(MessageKind::M1, bytes)?;
        let key_id = SlotId::new(ids >> 4).map_err(|_| SheError::KeyId(ids >> 4))?;
        let auth_id = SlotId::new(ids & 0x0f).map_err(|_| SheError::AuthId(ids & 0x0f))?;
        let uid = Uid::from_bytes(uid);
        Ok(Self {
            uid,
            key_id,
            auth_id,
        })
    }
}

/// M2 = AES-CBC(K1, IV = 0, counter | flags | zeros || new key): 32 opaque bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct M2([u8; 32]);

impl M2 {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// The 32 bytes.
    pub const fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// Takes exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SheError> {
        fixed(MessageKind::M2, bytes).map(Self)
    }

    fn blocks(&self) -> (Block, Block) {
        let (first, second) = self.0.split_at(16);
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        a.copy_from_slice(first);
        b.copy_from_slice(second);
        (a, b)
    }
}

macro_rules! mac_message {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name([u8; 16]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = 16;

            /// The 16 bytes.
            pub const fn to_bytes(&self) -> [u8; 16] {
                self.0
            }

            /// Takes exactly 16 bytes.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, SheError> {
                fixed($kind, bytes).map(Self)
            }
        }

        impl ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> Choice {
                self.0.ct_eq(&other.0)
            }
        }

        /// Compares in constant time.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.ct_eq(other).into()
            }
        }

        impl Eq for $name {}
    };
}

mac_message!(
    /// M3 = AES-CMAC(K2, M1 || M2).
    M3,
    MessageKind::M3
);
mac_message!(
    /// M5 = AES-CMAC(K4, M4).
    M5,
    MessageKind::M5
);

/// M4 = UID | ID | AuthID (as M1) || AES-ECB(K3, counter | 1 | zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct M4 {
    m1: M1,
    encrypted_counter: [u8; 16],
}

impl M4 {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// The first 16 bytes, UID | ID | AuthID, laid out as M1.
    pub const fn header(&self) -> M1 {
        self.m1
    }

    /// The second 16 bytes: the counter block encrypted under K3.
    pub const fn encrypted_counter(&self) -> [u8; 16] {
        self.encrypted_counter
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let (head, tail) = out.split_at_mut(16);
        head.copy_from_slice(&self.m1.to_bytes());
        tail.copy_from_slice(&self.encrypted_counter);
        out
    }

    /// Parses 32 bytes; the header's ids must be slot ids as in [`M1::from_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SheError> {
        let bytes: [u8; 32] = fixed(MessageKind::M4, bytes)?;
        let (head, tail) = bytes.split_at(16);
        let m1 = M1::from_bytes(head).map_err(|e| match e {
            SheError::Length { .. } => SheError::Length {
                message: MessageKind::M4,
                expected: 32,
                actual: bytes.len(),
            },
            other => other,
        })?;
        let mut encrypted_counter = [0u8; 16];
        encrypted_counter.copy_from_slice(tail);
        Ok(Self {
            m1,
            encrypted_counter,
        })
    }
}

/// What the key manager asks of one SHE: put a new key with `counter` and `flags` into `key_id`,
/// authorised by the key in `auth_id`, on the SHE with `uid` (or any SHE, with the wildcard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpdateRequest {
    uid: Uid,
    key_id: SlotId,
    auth_id: SlotId,
    counter: Counter,
    flags: KeyFlags,
}

impl UpdateRequest {
    /// A request; refused when `auth_id` may not authorise `key_id`
    /// ([`SlotId::may_be_updated_by`], which also refuses RAM_KEY as a target).
    pub const fn new(
        uid: Uid,
        key_id: SlotId,
        auth_id: SlotId,
        counter: Counter,
        flags: KeyFlags,
    ) -> Result<Self, SheError> {
        if !key_id.may_be_updated_by(auth_id) {
            return Err(SheError::AuthNotAllowed { key_id, auth_id });
        }
        Ok(Self {
            uid,
            key_id,
            auth_id,
            counter,
            flags,
        })
    }

    /// The addressed UID.
    pub const fn uid(&self) -> Uid {
        self.uid
    }
    /// The slot to update.
    pub const fn key_id(&self) -> SlotId {
        self.key_id
    }
    /// The authorising slot.
    pub const fn auth_id(&self) -> SlotId {
        self.auth_id
    }
    /// The new counter.
    pub const fn counter(&self) -> Counter {
        self.counter
    }
    /// The new flags.
    pub const fn flags(&self) -> KeyFlags {
        self.flags
    }
    /// M1 of this request.
    pub const fn m1(&self) -> M1 {
        M1::new(self.uid, self.key_id, self.auth_id)
    }
}

/// The five messages of one update: M1-M3 to send, M4 and M5 to expect back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateMessages {
    /// UID | ID | AuthID.
    pub m1: M1,
    /// The encrypted counter, flags and new key.
    pub m2: M2,
    /// CMAC under K2 over M1 || M2.
    pub m3: M3,
    /// The proof the SHE should answer: UID | ID | AuthID || encrypted counter.
    pub m4: M4,
    /// CMAC under K4 over M4.
    pub m5: M5,
}

/// The first 32 bits of M2's first plaintext block: counter (28) | 4 high flag bits; the fifth
/// byte's top bit is the WILDCARD flag.
fn m2_first_block(counter: Counter, flags: KeyFlags) -> Block {
    let mut block = [0u8; 16];
    let word = (counter.get() << 4) | u32::from(flags.bits() >> 1);
    let (head, rest) = block.split_at_mut(4);
    head.copy_from_slice(&word.to_be_bytes());
    if let Some(b) = rest.first_mut() {
        *b = (flags.bits() & 1) << 7;
    }
    block
}

/// The counter block of M4: counter (28) | 1 | 99 zero bits.
fn m4_counter_block(counter: Counter) -> Block {
    let mut block = [0u8; 16];
    let word = (counter.get() << 4) | 0x8;
    let (head, _) = block.split_at_mut(4);
    head.copy_from_slice(&word.to_be_bytes());
    block
}

/// M4 and M5 for `m1`'s header, proving that `new_key` sits in the slot with `counter`.
pub(super) fn proof(m1: &M1, new_key: &Key128, counter: Counter) -> (M4, M5) {
    proof_with(&KdfPair::new(), m1, new_key, counter)
}

/// [`proof`], with K3 and K4 derived by `pair`.
fn proof_with(pair: &KdfPair, m1: &M1, new_key: &Key128, counter: Counter) -> (M4, M5) {
    let (k3, k4) = pair.derive(new_key);
    let m4 = M4 {
        m1: *m1,
        encrypted_counter: ecb_encrypt(&k3, &m4_counter_block(counter)),
    };
    let m5 = M5(cmac_parts(&k4, &[&m4.to_bytes()]));
    (m4, m5)
}

/// The CMAC M3 should carry for `m1`, `m2` under the authorising key's K2.
pub(super) fn expected_m3(k2: &Key128, m1: &M1, m2: &M2) -> M3 {
    m3_with(&cmac_of(k2), m1, m2)
}

/// [`expected_m3`] under K2's CMAC state, already keyed.
fn m3_with(k2: &cmac::Cmac<aes::Aes128>, m1: &M1, m2: &M2) -> M3 {
    M3(cmac_with(k2, &[&m1.to_bytes(), &m2.0]))
}

/// The plaintext of M2, once M3 has been checked.
pub(super) struct M2Plain {
    pub(super) counter: Counter,
    pub(super) flags: KeyFlags,
    pub(super) key: Key128,
    /// Whether the 95 bits after the flags are zero, as SHE requires.
    pub(super) padding_ok: bool,
}

/// Decrypts M2 under K1.
pub(super) fn open_m2(k1: &Key128, m2: &M2) -> M2Plain {
    let (c1, c2) = m2.blocks();
    let (p1, p2) = cbc_decrypt_2(k1, &c1, &c2);
    let p2 = Zeroizing::new(p2);
    let key = Key128::from_bytes(*p2);
    let (head, rest) = p1.split_at(4);
    let mut word = [0u8; 4];
    word.copy_from_slice(head);
    let word = u32::from_be_bytes(word);
    let fifth = rest.first().copied().unwrap_or_default();
    let counter = Counter::new(word >> 4).unwrap_or(Counter::ZERO);
    // The five flag bits: four from the word's low nibble, one from the next byte's top bit.
    let flag_bits = (((word & 0x0f) << 1) as u8) | (fifth >> 7);
    let flags = KeyFlags::new(flag_bits).unwrap_or(KeyFlags::NONE);
    let padding_ok = fifth & 0x7f == 0 && rest.iter().skip(1).all(|b| *b == 0);
    M2Plain {
        counter,
        flags,
        key,
        padding_ok,
    }
}

/// Builds M1-M3 for `request`, authorised by `auth_key` (the key in `request.auth_id()`), and the
/// M4, M5 the SHE must answer once `new_key` is stored (SHE spec v1.1, memory update protocol).
pub fn build(auth_key: &Key128, new_key: &Key128, request: &UpdateRequest) -> UpdateMessages {
    Authorisation::new(auth_key).build(new_key, request)
}

/// The two keys an authorising key gives the memory update protocol (K1 encrypts M2, K2 MACs M3),
/// derived once for several updates under the same key: [`Authorisation::build`] is [`build`]
/// without the two key derivations. Zeroized on drop; Debug shows no key.
pub struct Authorisation {
    /// Derives the new key's K3 and K4 (and made K1, K2).
    pair: KdfPair,
    /// AES under K1, for M2.
    k1: aes::Aes128,
    /// CMAC under K2, for M3.
    k2: cmac::Cmac<aes::Aes128>,
}

impl core::fmt::Debug for Authorisation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Authorisation").finish_non_exhaustive()
    }
}

impl Authorisation {
    /// K1 and K2 of `auth_key`, keyed once (the ciphers zeroize their key schedules on drop).
    pub fn new(auth_key: &Key128) -> Self {
        let pair = KdfPair::new();
        let (k1, k2) = pair.derive(auth_key);
        Authorisation {
            k1: cipher(&k1),
            k2: cmac_of(&k2),
            pair,
        }
    }

    /// [`build`] under the key this was made from.
    pub fn build(&self, new_key: &Key128, request: &UpdateRequest) -> UpdateMessages {
        let m1 = request.m1();
        let first = m2_first_block(request.counter, request.flags);
        let (c1, c2) = cbc_encrypt_2_with(&self.k1, &first, new_key.expose_secret());
        let mut m2 = [0u8; 32];
        let (a, b) = m2.split_at_mut(16);
        a.copy_from_slice(&c1);
        b.copy_from_slice(&c2);
        let m2 = M2(m2);
        let m3 = m3_with(&self.k2, &m1, &m2);
        let (m4, m5) = proof_with(&self.pair, &m1, new_key, request.counter);
        UpdateMessages { m1, m2, m3, m4, m5 }
    }
}

/// Why M4 and M5 were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// M5 does not authenticate M4 under the new key.
    Mac,
    /// M5 authenticates M4, but M4's counter block does not decrypt to `counter | 1 | zeros`.
    CounterBlock,
}

impl core::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Mac => f.write_str("m5: does not authenticate m4 under the new key"),
            Self::CounterBlock => {
                f.write_str("m4: the counter block is not counter | 1 | zeros under the new key")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for VerifyError {}

/// What an authentic M4/M5 proves: the SHE `uid` holds the new key in `key_id` with `counter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confirmation {
    /// The UID the SHE answered with (its own, also for a wildcard update).
    pub uid: Uid,
    /// The updated slot.
    pub key_id: SlotId,
    /// The slot that authorised the update.
    pub auth_id: SlotId,
    /// The counter now stored with the key.
    pub counter: Counter,
}

/// Checks a SHE's M4, M5 under the key that was loaded: M5 in constant time, then M4's counter
/// block. The caller compares the confirmed UID, slot and counter with what it asked for.
pub fn verify(new_key: &Key128, m4: &M4, m5: &M5) -> Result<Confirmation, VerifyError> {
    let k4 = kdf(new_key, &KEY_UPDATE_MAC_C);
    let expected = M5(cmac_parts(&k4, &[&m4.to_bytes()]));
    if !bool::from(expected.ct_eq(m5)) {
        return Err(VerifyError::Mac);
    }
    let k3 = kdf(new_key, &KEY_UPDATE_ENC_C);
    let block = ecb_decrypt(&k3, &m4.encrypted_counter);
    let (head, rest) = block.split_at(4);
    let mut word = [0u8; 4];
    word.copy_from_slice(head);
    let word = u32::from_be_bytes(word);
    if word & 0xf != 0x8 || rest.iter().any(|b| *b != 0) {
        return Err(VerifyError::CounterBlock);
    }
    let counter = Counter::new(word >> 4).map_err(|_| VerifyError::CounterBlock)?;
    Ok(Confirmation {
        uid: m4.m1.uid(),
        key_id: m4.m1.key_id(),
        auth_id: m4.m1.auth_id(),
        counter,
    })
}
