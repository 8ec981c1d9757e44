//! The primitives of the memory update protocol: the SHE KDF, AES-CMAC, AES-CBC and AES-ECB over
//! whole blocks, all on the RustCrypto `aes` and `cmac` crates.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use cmac::{Cmac, Mac};
use zeroize::Zeroize;

use crate::keys::Key128;

/// SHE constant `KEY_UPDATE_ENC_C` (SHE spec v1.1, "Constants used within SHE").
pub const KEY_UPDATE_ENC_C: [u8; 16] = [
    0x01, 0x01, 0x53, 0x48, 0x45, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0xb0,
];
/// SHE constant `KEY_UPDATE_MAC_C` (SHE spec v1.1, "Constants used within SHE").
pub const KEY_UPDATE_MAC_C: [u8; 16] = [
    0x01, 0x02, 0x53, 0x48, 0x45, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0xb0,
];

pub(super) type Block = [u8; 16];

pub(super) fn cipher(key: &Key128) -> Aes128 {
    Aes128::new(&Array::from(*key.expose_secret()))
}

/// One Miyaguchi-Preneel step: `H' = E_H(x) xor H xor x`.
fn mp_step(h: &mut Block, x: &Block) {
    let key = Key128::from_bytes(*h);
    let mut block = Array::from(*x);
    cipher(&key).encrypt_block(&mut block);
    for ((h, e), x) in h.iter_mut().zip(block.iter()).zip(x.iter()) {
        *h ^= e ^ x;
    }
    block.zeroize();
}

/// The SHE key derivation `KDF(K, C)`: the AES-128 Miyaguchi-Preneel compression of `K || C`
/// with `H0 = 0` (SHE spec v1.1, "Key derivation function"). The constants already hold the
/// padding, so exactly two blocks are compressed.
pub fn kdf(key: &Key128, constant: &[u8; 16]) -> Key128 {
    let mut h = [0u8; 16];
    mp_step(&mut h, key.expose_secret());
    mp_step(&mut h, constant);
    let out = Key128::from_bytes(h);
    h.zeroize();
    out
}

/// Both keys the memory update protocol derives from one key, `KDF(K, KEY_UPDATE_ENC_C)` and
/// `KDF(K, KEY_UPDATE_MAC_C)` (K1 and K2 of an authorising key, K3 and K4 of a new key), equal to
/// two [`kdf`] calls: the first compression step (`E_0(K) xor K`) is the same for both, and the
/// second encrypts both constants under the one key it yields. Made once for many keys: it
/// keeps the cipher of the all-zero key `H0`.
pub(super) struct KdfPair {
    zero: Aes128,
}

impl KdfPair {
    pub(super) fn new() -> Self {
        KdfPair {
            zero: Aes128::new(&Array::from([0u8; 16])),
        }
    }

    /// (`KDF(key, KEY_UPDATE_ENC_C)`, `KDF(key, KEY_UPDATE_MAC_C)`).
    pub(super) fn derive(&self, key: &Key128) -> (Key128, Key128) {
        let k = key.expose_secret();
        let mut h = Array::from(*k);
        self.zero.encrypt_block(&mut h);
        let mut h1 = [0u8; 16];
        for ((o, e), x) in h1.iter_mut().zip(h.iter()).zip(k.iter()) {
            *o = e ^ x;
        }
        let step = Aes128::new(&Array::from(h1));
        let mut blocks = [Array::from(KEY_UPDATE_ENC_C), Array::from(KEY_UPDATE_MAC_C)];
        step.encrypt_blocks(&mut blocks);
        let finish = |e: &Array<u8, _>, c: &[u8; 16]| {
            let mut out = [0u8; 16];
            for (((o, e), h), c) in out.iter_mut().zip(e.iter()).zip(h1.iter()).zip(c.iter()) {
                *o = e ^ h ^ c;
            }
            let key = Key128::from_bytes(out);
            out.zeroize();
            key
        };
        let [enc, mac] = &blocks;
        let pair = (
            finish(enc, &KEY_UPDATE_ENC_C),
            finish(mac, &KEY_UPDATE_MAC_C),
        );
        h.zeroize();
        h1.zeroize();
        blocks.zeroize();
        pair
    }
}

/// AES-128-CMAC (RFC 4493) of `message` under `key`.
pub fn cmac(key: &Key128, message: &[u8]) -> [u8; 16] {
    cmac_parts(key, &[message])
}

/// AES-128-CMAC of the concatenation of `parts`, without building the concatenation.
pub(super) fn cmac_parts(key: &Key128, parts: &[&[u8]]) -> [u8; 16] {
    cmac_with(&cmac_of(key), parts)
}

/// The CMAC state of `key`, to clone for each message under it (the key schedule is done once).
pub(super) fn cmac_of(key: &Key128) -> Cmac<Aes128> {
    <Cmac<Aes128> as KeyInit>::new(&Array::from(*key.expose_secret()))
}

/// AES-128-CMAC of the concatenation of `parts` under a state from [`cmac_of`].
pub(super) fn cmac_with(mac: &Cmac<Aes128>, parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = mac.clone();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// AES-128-ECB encryption of one block.
pub(super) fn ecb_encrypt(key: &Key128, block: &Block) -> Block {
    let mut b = Array::from(*block);
    cipher(key).encrypt_block(&mut b);
    b.into()
}

/// AES-128-ECB decryption of one block.
pub(super) fn ecb_decrypt(key: &Key128, block: &Block) -> Block {
    let mut b = Array::from(*block);
    cipher(key).decrypt_block(&mut b);
    b.into()
}

/// AES-128-CBC encryption of two blocks with a zero IV.
#[cfg(test)]
pub(super) fn cbc_encrypt_2(key: &Key128, first: &Block, second: &Block) -> (Block, Block) {
    cbc_encrypt_2_with(&cipher(key), first, second)
}

/// [`cbc_encrypt_2`] under a cipher already keyed.
pub(super) fn cbc_encrypt_2_with(aes: &Aes128, first: &Block, second: &Block) -> (Block, Block) {
    let mut c1 = Array::from(*first);
    aes.encrypt_block(&mut c1);
    let mut c2 = Array::from(xor(second, &c1.into()));
    aes.encrypt_block(&mut c2);
    (c1.into(), c2.into())
}

/// AES-128-CBC decryption of two blocks with a zero IV.
pub(super) fn cbc_decrypt_2(key: &Key128, first: &Block, second: &Block) -> (Block, Block) {
    let aes = cipher(key);
    let mut p1 = Array::from(*first);
    aes.decrypt_block(&mut p1);
    let mut p2 = Array::from(*second);
    aes.decrypt_block(&mut p2);
    let p2 = xor(&p2.into(), first);
    (p1.into(), p2)
}

fn xor(a: &Block, b: &Block) -> Block {
    let mut out = *a;
    for (o, b) in out.iter_mut().zip(b.iter()) {
        *o ^= b;
    }
    out
}
