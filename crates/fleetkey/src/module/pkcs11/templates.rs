//! Every attribute template the module gives a token, in one place to review: the token objects
//! (masters, the KEK, the governance root's two halves) and the short-lived session objects of
//! wrapping and of the stored scheme's device roots. Every usage attribute is set explicitly
//! (SoftHSM's defaults are permissive). The backup KEK's template is in `backup.rs`.

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use fleetkey_core::derive::Generation;

use super::Pkcs11Module;

/// DER of the Ed25519 curve's object identifier 1.3.101.112, for `CKA_EC_PARAMS`.
pub(super) const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

impl Pkcs11Module {
    /// The attributes every master gets: sign only; extractable only wrapped under a trusted
    /// key when the module backs masters up by trusted wrap.
    pub(super) fn master_template(&self, generation: Generation) -> Vec<Attribute> {
        let backup = self.options.backup_by_trusted_wrap;
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(backup),
            Attribute::WrapWithTrusted(backup),
            Attribute::Label(self.master_label(generation).into_bytes()),
            Attribute::Id(self.id("master")),
        ];
        template.extend(secret_usages(&[AttributeType::Sign]));
        template
    }

    /// The attributes of a governance root's public half: verify only.
    pub(super) fn root_public_template(&self, role: &str) -> Vec<Attribute> {
        let label = self.id(role);
        vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::EcParams(ED25519_OID.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
        ]
    }

    /// The attributes of a governance root's private half: sensitive, not extractable, sign
    /// only.
    pub(super) fn root_private_template(&self, role: &str) -> Vec<Attribute> {
        let label = self.id(role);
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
        ]
    }

    /// The KEK: AES-256, token, sensitive, not extractable; wrap and unwrap, and AES-ECB
    /// encryption (never decryption) for RFC 5649 of odd lengths (`kek.rs`: `wrap_by_blocks`).
    pub(super) fn kek_template(&self) -> Vec<Attribute> {
        [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(self.id("kek")),
            Attribute::Id(self.id("kek")),
        ]
        .into_iter()
        .chain(secret_usages(&[
            AttributeType::Wrap,
            AttributeType::Unwrap,
            AttributeType::Encrypt,
        ]))
        .collect()
    }
}

/// Key bytes to wrap under the KEK, as a session object: sensitive, extractable, no usage. It
/// holds the bytes in `CKA_VALUE`: the caller zeroizes them once the object is made.
pub(super) fn key_to_wrap(key: &[u8]) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Value(key.to_vec()),
    ];
    template.extend(secret_usages(&[]));
    template
}

/// Key bytes unwrapped to be read back (`KeyModule::unwrap`): a session object, not sensitive,
/// extractable, no usage.
pub(super) fn unwrapped_key() -> Vec<Attribute> {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
    .into_iter()
    .chain(secret_usages(&[]))
    .collect()
}

/// A fresh 32-byte device root (stored scheme), made only to be wrapped: a session object,
/// sensitive, extractable, no usage.
pub(super) fn new_device_root() -> Vec<Attribute> {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
    ]
    .into_iter()
    .chain(secret_usages(&[]))
    .collect()
}

/// A device root unwrapped to derive with: a session object, sensitive, sign only.
pub(super) fn unwrapped_device_root() -> Vec<Attribute> {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        // Only so that the length probe (`kek.rs`: `check_root_length`) can wrap it under the KEK.
        Attribute::Extractable(true),
    ]
    .into_iter()
    .chain(secret_usages(&[AttributeType::Sign]))
    .collect()
}

/// The usage attributes of a secret key, every one set explicitly (SoftHSM's defaults are
/// permissive, so a template that leaves one out grants it): true for those in `allowed`, false
/// for the rest.
pub(super) fn secret_usages(allowed: &[AttributeType]) -> impl Iterator<Item = Attribute> + '_ {
    type Usage = (AttributeType, fn(bool) -> Attribute);
    const USAGES: [Usage; 7] = [
        (AttributeType::Sign, Attribute::Sign),
        (AttributeType::Verify, Attribute::Verify),
        (AttributeType::Encrypt, Attribute::Encrypt),
        (AttributeType::Decrypt, Attribute::Decrypt),
        (AttributeType::Wrap, Attribute::Wrap),
        (AttributeType::Unwrap, Attribute::Unwrap),
        (AttributeType::Derive, Attribute::Derive),
    ];
    USAGES
        .into_iter()
        .map(move |(usage, attribute)| attribute(allowed.contains(&usage)))
}
