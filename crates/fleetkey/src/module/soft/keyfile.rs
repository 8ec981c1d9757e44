//! The key file's format: a small versioned JSON document inside an age file encrypted to an
//! scrypt passphrase recipient (age v1, <https://c2sp.org/age#scrypt-recipient-stanza>), so that
//! `age -d` can open it in an emergency.
//!
//! Plaintext, version 1 (written without spaces, generations ascending):
//! ```text
//! {"version":1,"masters":{"1":"<64 hex>","2":"<64 hex>"},"kek":"<64 hex>","signing_seed":"<64 hex>",
//!  "next_signing_seed":"<64 hex>"}
//! ```
//! `masters` maps a generation (a u32 in canonical decimal) to its 32-byte master; `kek` (the
//! AES-256 key-encryption key), `signing_seed` (the Ed25519 secret key of the governance root,
//! RFC 8032 section 5.1.5) and `next_signing_seed` (the next root, staged during a root rotation)
//! are absent while the module has none. Nothing else is allowed.
//!
//! Every plaintext buffer is a `Zeroizing` one, sized before it is written so that it never
//! reallocates (a reallocation would leave a copy behind), and hex is parsed where it lies.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use age::secrecy::SecretString;
use fleetkey_core::MasterKey;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::ModuleError;

/// The plaintext version this code writes and reads.
pub(super) const VERSION: u32 = 1;

/// The secrets of one key file, decoded.
#[derive(Default)]
pub(super) struct Contents {
    pub(super) masters: BTreeMap<u32, MasterKey>,
    pub(super) kek: Option<Zeroizing<[u8; 32]>>,
    pub(super) signing_seed: Option<Zeroizing<[u8; 32]>>,
    pub(super) next_signing_seed: Option<Zeroizing<[u8; 32]>>,
}

/// Borrowed secrets to encode.
pub(super) struct ContentsRef<'a> {
    pub(super) masters: Vec<(u32, &'a [u8; 32])>,
    pub(super) kek: Option<&'a [u8; 32]>,
    pub(super) signing_seed: Option<&'a [u8; 32]>,
    pub(super) next_signing_seed: Option<&'a [u8; 32]>,
}

/// Encodes the plaintext document.
pub(super) fn encode(contents: &ContentsRef<'_>) -> Zeroizing<Vec<u8>> {
    // An entry is at most `"4294967295":"<64 hex>",` (80 bytes), `"kek":"<64 hex>"` 72 and
    // `"signing_seed":"<64 hex>"` 81, `"next_signing_seed":"<64 hex>"` 86, plus 26 bytes around
    // them: 96 per entry and 128 cover it.
    let capacity = 128 + 96 * (contents.masters.len() + 3);
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    out.extend_from_slice(b"{\"version\":");
    out.extend_from_slice(VERSION.to_string().as_bytes());
    out.extend_from_slice(b",\"masters\":{");
    for (i, (generation, master)) in contents.masters.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(generation.to_string().as_bytes());
        out.extend_from_slice(b"\":");
        push_hex_string(&mut out, master);
    }
    out.push(b'}');
    if let Some(kek) = contents.kek {
        out.extend_from_slice(b",\"kek\":");
        push_hex_string(&mut out, kek);
    }
    if let Some(seed) = contents.signing_seed {
        out.extend_from_slice(b",\"signing_seed\":");
        push_hex_string(&mut out, seed);
    }
    if let Some(seed) = contents.next_signing_seed {
        out.extend_from_slice(b",\"next_signing_seed\":");
        push_hex_string(&mut out, seed);
    }
    out.push(b'}');
    debug_assert_eq!(
        out.capacity(),
        capacity,
        "the plaintext buffer must not reallocate"
    );
    out
}

/// Appends `"<hex of bytes>"`, writing the hex in place.
fn push_hex_string(out: &mut Vec<u8>, bytes: &[u8; 32]) {
    out.push(b'"');
    let start = out.len();
    out.resize(start + 64, 0);
    if let Some(dst) = out.get_mut(start..) {
        // 64 bytes for 32: the length is right, so this cannot fail.
        let _ = hex::encode_to_slice(bytes, dst);
    }
    out.push(b'"');
}

/// Only the version, read first so that a newer file is named as such.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument<'a> {
    #[serde(rename = "version")]
    _version: u32,
    #[serde(borrow)]
    masters: RawMasters<'a>,
    #[serde(borrow, default)]
    kek: Option<&'a str>,
    #[serde(borrow, default)]
    signing_seed: Option<&'a str>,
    #[serde(borrow, default)]
    next_signing_seed: Option<&'a str>,
}

/// The `masters` object as written, duplicates kept so that they can be refused.
struct RawMasters<'a>(Vec<(&'a str, &'a str)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawMasters<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Entries<'a> {
            type Value = RawMasters<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of generation to hex master")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<&'de str, &'de str>()? {
                    entries.push(entry);
                }
                Ok(RawMasters(entries))
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

/// Decodes the plaintext document. Errors name the field and never echo its value.
pub(super) fn decode(plaintext: &[u8]) -> Result<Contents, ModuleError> {
    let version = serde_json::from_slice::<VersionOnly>(plaintext)
        .map_err(json_error)?
        .version;
    if version != VERSION {
        return Err(ModuleError::Corrupt(format!(
            "key file version {version}; this fleetkey reads version {VERSION} (a newer fleetkey wrote it?)"
        )));
    }
    let raw: RawDocument<'_> = serde_json::from_slice(plaintext).map_err(json_error)?;
    let mut contents = Contents::default();
    for (generation, master) in raw.masters.0 {
        let parsed = generation
            .parse::<u32>()
            .ok()
            .filter(|g| g.to_string() == generation)
            .ok_or_else(|| {
                ModuleError::Corrupt("key file: a master's generation is not a decimal u32".into())
            })?;
        let bytes = secret_hex(master, "a master")?;
        if contents
            .masters
            .insert(parsed, MasterKey::from_bytes(*bytes))
            .is_some()
        {
            return Err(ModuleError::Corrupt(format!(
                "key file: generation {parsed} appears twice"
            )));
        }
    }
    contents.kek = raw.kek.map(|h| secret_hex(h, "kek")).transpose()?;
    contents.signing_seed = raw
        .signing_seed
        .map(|h| secret_hex(h, "signing_seed"))
        .transpose()?;
    contents.next_signing_seed = raw
        .next_signing_seed
        .map(|h| secret_hex(h, "next_signing_seed"))
        .transpose()?;
    Ok(contents)
}

fn secret_hex(text: &str, field: &str) -> Result<Zeroizing<[u8; 32]>, ModuleError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text, &mut bytes[..])
        .map_err(|_| ModuleError::Corrupt(format!("key file: {field} is not 64 hex digits")))?;
    Ok(bytes)
}

/// serde_json's messages can quote the offending value, which may be key material: keep only
/// the position and the category.
fn json_error(e: serde_json::Error) -> ModuleError {
    ModuleError::Corrupt(format!(
        "key file contents at line {} column {}: {:?} error (not a fleetkey key document)",
        e.line(),
        e.column(),
        e.classify()
    ))
}

/// Encrypts the plaintext to the scrypt recipient (passphrase and work factor).
pub(super) fn seal(
    recipient: &age::scrypt::Recipient,
    plaintext: &[u8],
) -> Result<Vec<u8>, ModuleError> {
    let backend = |e: &dyn std::fmt::Display| ModuleError::Backend {
        operation: "age encrypt",
        detail: e.to_string(),
    };
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|e| backend(&e))?;
    let mut ciphertext = Vec::with_capacity(plaintext.len() + 256);
    let mut writer = encryptor
        .wrap_output(&mut ciphertext)
        .map_err(|e| backend(&e))?;
    writer.write_all(plaintext).map_err(|e| backend(&e))?;
    writer.finish().map_err(|e| backend(&e))?;
    Ok(ciphertext)
}

/// Decrypts a key file with the passphrase.
///
/// A wrong passphrase and a damaged scrypt stanza look the same to age (the stanza's AEAD
/// fails): both are [`ModuleError::Authentication`]. A damaged header or payload under the
/// right passphrase is [`ModuleError::Corrupt`].
pub(super) fn unseal(
    ciphertext: &[u8],
    passphrase: &SecretString,
) -> Result<Zeroizing<Vec<u8>>, ModuleError> {
    let decryptor = age::Decryptor::new_buffered(ciphertext).map_err(decrypt_error)?;
    if !decryptor.is_scrypt() {
        return Err(ModuleError::Corrupt(
            "the key file is an age file, but not a passphrase-encrypted one".into(),
        ));
    }
    let identity = age::scrypt::Identity::new(passphrase.clone());
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(decrypt_error)?;
    // The plaintext is shorter than the ciphertext: this buffer never reallocates.
    let mut plaintext = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
    reader.read_to_end(&mut plaintext).map_err(|e| {
        ModuleError::Corrupt(format!(
            "the key file's payload does not decrypt ({})",
            e.kind()
        ))
    })?;
    Ok(plaintext)
}

fn decrypt_error(e: age::DecryptError) -> ModuleError {
    use age::DecryptError as E;
    match e {
        E::DecryptionFailed | E::KeyDecryptionFailed | E::NoMatchingKeys => {
            ModuleError::Authentication
        }
        E::ExcessiveWork { required, target } => ModuleError::Backend {
            operation: "age decrypt",
            detail: format!(
                "the key file's scrypt work factor 2^{required} is above what this machine accepts \
                 (2^{}, about 16 s here)",
                target.saturating_add(4)
            ),
        },
        E::InvalidHeader | E::InvalidMac | E::UnknownFormat => {
            ModuleError::Corrupt(format!("the key file is not a valid age file ({e})"))
        }
        E::Io(io) => ModuleError::Corrupt(format!(
            "the key file is truncated or damaged ({})",
            io.kind()
        )),
        other => ModuleError::Backend {
            operation: "age decrypt",
            detail: other.to_string(),
        },
    }
}

/// The scrypt work factor (log2 N) in an age file's header, from its scrypt stanza
/// (`-> scrypt <salt> <log_n>` on the second line).
pub(super) fn work_factor(ciphertext: &[u8]) -> Option<u8> {
    let mut lines = ciphertext.split(|b| *b == b'\n');
    if lines.next()? != b"age-encryption.org/v1" {
        return None;
    }
    let stanza = std::str::from_utf8(lines.next()?).ok()?;
    let mut args = stanza.strip_prefix("-> scrypt ")?.split(' ');
    let (_salt, log_n, rest) = (args.next()?, args.next()?, args.next());
    if rest.is_some() {
        return None;
    }
    log_n.parse().ok()
}
