//! The one error type of the command line: a message, a hint on what to do next, an exit code.

use std::fmt;

/// Exit code for bad input (a field out of range, malformed hex, a missing file).
pub(crate) const EXIT_INPUT: u8 = 2;
/// Exit code for a check that ran and failed (a MAC that does not verify).
pub(crate) const EXIT_REJECTED: u8 = 1;

/// An error the command reports on stderr; nothing is printed on stdout.
#[derive(Debug)]
pub(crate) struct CliError {
    message: String,
    hint: Option<String>,
    code: u8,
}

impl CliError {
    /// Bad input: `field` names what was wrong.
    pub(crate) fn input(field: &str, problem: impl fmt::Display) -> Self {
        Self {
            message: format!("{field}: {problem}"),
            hint: None,
            code: EXIT_INPUT,
        }
    }

    /// An operation that failed or was refused (exit 1).
    pub(crate) fn failed(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            hint: None,
            code: EXIT_REJECTED,
        }
    }

    /// A check that ran and failed.
    pub(crate) fn rejected(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            hint: None,
            code: EXIT_REJECTED,
        }
    }

    /// Adds what the user can do next.
    pub(crate) fn hint(mut self, hint: impl fmt::Display) -> Self {
        self.hint = Some(hint.to_string());
        self
    }

    /// Prints the error and returns the process exit code.
    pub(crate) fn report(&self) -> std::process::ExitCode {
        eprintln!("error: {}", self.message);
        if let Some(hint) = &self.hint {
            eprintln!("  hint: {hint}");
        }
        std::process::ExitCode::from(self.code)
    }
}
