//! Reading keys and hex from stdin, files and arguments, with errors that name the field.
//!
//! Every text this crate reads from stdin or a file goes through [`read_bounded`]: at most a
//! fixed number of bytes (a longer input is refused, not held), then UTF-8 where text is
//! expected. Key text lives in zeroizing memory.

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::CliError;

/// Most bytes of a key, seed, PIN or public key text (64 hex characters and a line end fit
/// many times over).
pub(crate) const MAX_KEY_TEXT: usize = 1024;
/// Most bytes of a small JSON or CBOR file read whole (a factory file, a wrapped master, a
/// governance record).
pub(crate) const MAX_SMALL_FILE: usize = 1 << 20;

/// Why text read from stdin or a file was refused. Never holds the text itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TextError {
    /// The read failed.
    #[error("cannot read {what} ({source})")]
    Io {
        /// `stdin` or the file's path.
        what: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// More bytes than allowed.
    #[error("longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Not UTF-8 text.
    #[error("not UTF-8 text")]
    NotUtf8,
}

impl TextError {
    /// As bad input naming `field`.
    pub(crate) fn field(self, field: &str) -> CliError {
        CliError::input(field, self)
    }
}

/// Reads at most `max` bytes (one more is read to tell a longer input), into zeroizing memory.
pub(crate) fn read_bounded(
    reader: impl Read,
    max: usize,
    what: &dyn std::fmt::Display,
) -> Result<Zeroizing<Vec<u8>>, TextError> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(max.min(64 * 1024) + 1));
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|source| TextError::Io {
            what: what.to_string(),
            source,
        })?;
    if bytes.len() > max {
        return Err(TextError::TooLong { max });
    }
    Ok(bytes)
}

/// [`read_bounded`], then UTF-8. The text stays in zeroizing memory.
pub(crate) fn read_text(
    reader: impl Read,
    max: usize,
    what: &dyn std::fmt::Display,
) -> Result<Zeroizing<String>, TextError> {
    let mut bytes = read_bounded(reader, max, what)?;
    if std::str::from_utf8(&bytes).is_err() {
        return Err(TextError::NotUtf8);
    }
    // Checked above, so no copy is left behind in an error.
    Ok(Zeroizing::new(
        String::from_utf8(std::mem::take(&mut *bytes)).unwrap_or_default(),
    ))
}

/// The bytes of a file, at most `max`; bad input naming `field` otherwise.
pub(crate) fn file_bytes(
    field: &str,
    path: &Path,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let file = std::fs::File::open(path).map_err(|e| {
        CliError::input(field, format_args!("cannot read {} ({e})", path.display()))
    })?;
    read_bounded(file, max, &path.display()).map_err(|e| e.field(field))
}

/// The text of a file, at most `max` bytes of UTF-8; bad input naming `field` otherwise.
pub(crate) fn file_text(
    field: &str,
    path: &Path,
    max: usize,
) -> Result<Zeroizing<String>, CliError> {
    let file = std::fs::File::open(path).map_err(|e| {
        CliError::input(field, format_args!("cannot read {} ({e})", path.display()))
    })?;
    read_text(file, max, &path.display()).map_err(|e| e.field(field))
}

/// Decodes hex text (surrounding whitespace allowed) into bytes.
pub(crate) fn hex_bytes(field: &str, text: &str) -> Result<Vec<u8>, CliError> {
    let text = text.trim();
    hex::decode(text).map_err(|e| CliError::input(field, format_args!("not valid hex ({e})")))
}

/// Decodes hex text that must hold exactly `N` bytes.
pub(crate) fn hex_array<const N: usize>(field: &str, text: &str) -> Result<[u8; N], CliError> {
    let bytes = hex_bytes(field, text)?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| {
        CliError::input(
            field,
            format_args!("{len} bytes, expected {N} ({} hex characters)", 2 * N),
        )
    })
}

/// Reads a key of `N` bytes as hex text from stdin. The text and bytes are zeroized after use.
pub(crate) fn key_from_stdin<const N: usize>(field: &str) -> Result<Zeroizing<[u8; N]>, CliError> {
    let text = read_text(std::io::stdin(), MAX_KEY_TEXT, &"stdin");
    text.map_err(|e| e.field(field))
        .and_then(|text| key_from_text(field, &text))
        .map_err(|e| {
            e.hint(format_args!(
                "pipe the {field} as {} hex characters on stdin",
                2 * N
            ))
        })
}

/// Reads a key of `N` bytes as hex text from a file.
pub(crate) fn key_from_file<const N: usize>(
    field: &str,
    path: &Path,
) -> Result<Zeroizing<[u8; N]>, CliError> {
    let text = file_text(field, path, MAX_KEY_TEXT)?;
    key_from_text(field, &text)
}

fn key_from_text<const N: usize>(field: &str, text: &str) -> Result<Zeroizing<[u8; N]>, CliError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CliError::input(
            field,
            format_args!("empty, expected {} hex characters", 2 * N),
        ));
    }
    if text.len() != 2 * N {
        return Err(CliError::input(
            field,
            format_args!(
                "{} characters, expected {} hex characters",
                text.len(),
                2 * N
            ),
        ));
    }
    let mut key = Zeroizing::new([0u8; N]);
    // The error names no character: it is part of a key.
    hex::decode_to_slice(text, key.as_mut_slice()).map_err(|_| {
        CliError::input(
            field,
            format_args!("not valid hex (expected {} hex characters)", 2 * N),
        )
    })?;
    Ok(key)
}
