//! Reading keys and hex from stdin, files and arguments, with errors that name the field.

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::CliError;

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
    let mut text = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| CliError::input(field, format_args!("cannot read stdin ({e})")))?;
    key_from_text(field, &text).map_err(|e| {
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
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        CliError::input(field, format_args!("cannot read {} ({e})", path.display()))
    })?);
    key_from_text(field, &text)
}

fn key_from_text<const N: usize>(field: &str, text: &str) -> Result<Zeroizing<[u8; N]>, CliError> {
    let text = text.trim();
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
    hex::decode_to_slice(text, key.as_mut_slice())
        .map_err(|e| CliError::input(field, format_args!("not valid hex ({e})")))?;
    Ok(key)
}
