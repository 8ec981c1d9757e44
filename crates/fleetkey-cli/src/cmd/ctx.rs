//! What every fleet command shares: where the fleet is, who acts, output format, secrets.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use fleetkey::fleet::{Access, Fleet, SecretString};
use fleetkey::home::{FleetConfig, ModuleConfig};
use serde::Serialize;

use crate::error::CliError;

/// Options of every fleet command.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct Global {
    /// The fleet home directory.
    #[arg(long, global = true, env = "FLEETKEY_HOME", default_value = "fleet")]
    pub(crate) home: PathBuf,
    /// Print JSON on stdout (for scripts).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Who acts, recorded in every change and audit event [default: $USER].
    #[arg(long, global = true, env = "FLEETKEY_ACTOR")]
    pub(crate) actor: Option<String>,
}

impl Global {
    fn access(&self, confirm: bool) -> Result<Access, CliError> {
        self.access_with(passphrase(confirm)?)
    }

    fn access_with(&self, passphrase: SecretString) -> Result<Access, CliError> {
        Ok(Access {
            passphrase,
            actor: self
                .actor
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".into()),
            clock: fleetkey::fleet::lifecycle::clock_from_env()?,
        })
    }

    /// Now, by the clock every command uses (shifted by `FLEETKEY_CLOCK_OFFSET_MS` in tests).
    pub(crate) fn now_ms(&self) -> Result<i64, CliError> {
        Ok(fleetkey::fleet::lifecycle::clock_from_env()?.now_ms())
    }

    /// Who holds the scheduler lease when this process acts: `<what>:<host>:<pid>`.
    pub(crate) fn lease_holder(what: &str) -> String {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{what}:{host}:{}", std::process::id())
    }

    /// Whether the fleet's keys are on a PKCS#11 token: it has no key file, its PIN is read at
    /// open, and there is no passphrase to ask for.
    fn on_token(&self) -> bool {
        FleetConfig::load(&self.home).is_ok_and(|c| matches!(c.module, ModuleConfig::Pkcs11 { .. }))
    }

    /// The passphrase of the fleet's key file, asked for now; empty for a fleet on a token.
    fn module_passphrase(&self) -> Result<SecretString, CliError> {
        if self.on_token() {
            Ok(SecretString::from(String::new()))
        } else {
            passphrase(false)
        }
    }

    /// Opens the fleet at `--home`. The key module is opened only when the command first needs
    /// a key: only then is the passphrase read (or the token's PIN), so a command that reads the
    /// fleet asks for nothing and costs no scrypt unlock.
    pub(crate) fn open(&self) -> Result<Fleet, CliError> {
        let on_token = self.on_token();
        let home = self.home.clone();
        let opener: fleetkey::fleet::ModuleOpener = Box::new(move || {
            let passphrase = if on_token {
                SecretString::from(String::new())
            } else {
                read_passphrase(false)
                    .map_err(|problem| fleetkey::Error::invalid("passphrase", problem))?
            };
            let access = Access {
                passphrase,
                actor: String::new(),
                clock: Arc::new(fleetkey::fleet::SystemClock),
            };
            fleetkey::fleet::open_module(&home, &access)
        });
        let access = self.access_with(SecretString::from(String::new()))?;
        Fleet::open_with_opener(&self.home, access, opener).map_err(CliError::from)
    }

    /// Opens more handles on the fleet at `--home` (the service's pool): the key module is opened
    /// once (the soft module's scrypt unlock, or the token login) and shared; each handle has its
    /// own store connection.
    pub(crate) fn opener(&self) -> Result<fleetkey_server::pool::Opener, CliError> {
        let passphrase = self.module_passphrase()?;
        let template = self.access_with(passphrase)?;
        let module = fleetkey::fleet::open_module(&self.home, &template)?;
        let home = self.home.clone();
        Ok(Arc::new(move || {
            Fleet::open_with_module(
                &home,
                Arc::clone(&module),
                Access {
                    passphrase: template.passphrase.clone(),
                    actor: template.actor.clone(),
                    clock: Arc::clone(&template.clock),
                },
            )
        }))
    }

    /// Opens a fresh handle (its own key module, read anew) each time it is called: the service's
    /// lifecycle scheduler, which must see generations another instance created.
    pub(crate) fn fresh_opener(&self) -> Result<fleetkey_server::scheduler::FreshOpener, CliError> {
        let passphrase = self.module_passphrase()?;
        let template = self.access_with(passphrase)?;
        let home = self.home.clone();
        Ok(Box::new(move || {
            Fleet::open(
                &home,
                Access {
                    passphrase: template.passphrase.clone(),
                    actor: template.actor.clone(),
                    clock: Arc::clone(&template.clock),
                },
            )
        }))
    }

    /// Access for `init` on a PKCS#11 token (no key file, so no passphrase).
    pub(crate) fn access_for_token(&self) -> Result<Access, CliError> {
        self.access_with(SecretString::from(String::new()))
    }

    /// Access for `init` (asks for the passphrase twice at a terminal).
    pub(crate) fn access_for_init(&self) -> Result<Access, CliError> {
        self.access(true)
    }

    /// Prints a value: JSON with `--json`, else the human form.
    pub(crate) fn print<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        let text = if self.json {
            serde_json::to_string_pretty(value).map_err(|e| CliError::input("output", e))?
        } else {
            human(value)
        };
        if !text.is_empty() {
            write_stdout(&text)?;
        }
        Ok(())
    }
}

/// The soft key file's passphrase: `FLEETKEY_PASSPHRASE`, or a prompt at a terminal. Never argv.
fn passphrase(confirm: bool) -> Result<SecretString, CliError> {
    read_passphrase(confirm).map_err(passphrase_error)
}

/// Why no passphrase could be read, when nothing can ask for it.
const NO_PASSPHRASE: &str = "FLEETKEY_PASSPHRASE is not set and there is no terminal to ask";

/// Bad input in the `passphrase` field, with the hint when nothing could ask for it.
pub(crate) fn passphrase_error(problem: impl std::fmt::Display) -> CliError {
    let problem = problem.to_string();
    let err = CliError::input("passphrase", &problem);
    if problem == NO_PASSPHRASE {
        err.hint("export FLEETKEY_PASSPHRASE, or run at a terminal")
    } else {
        err
    }
}

/// [`passphrase`], its error the problem with the `passphrase` field (never the passphrase).
fn read_passphrase(confirm: bool) -> Result<SecretString, String> {
    if let Ok(p) = std::env::var("FLEETKEY_PASSPHRASE") {
        return Ok(SecretString::from(p));
    }
    if !std::io::stdin().is_terminal() {
        return Err(NO_PASSPHRASE.into());
    }
    let first =
        rpassword::prompt_password("fleet key file passphrase: ").map_err(|e| e.to_string())?;
    if confirm {
        let second = rpassword::prompt_password("again: ").map_err(|e| e.to_string())?;
        if first != second {
            return Err("the two entries differ".into());
        }
        if first.len() < 12 {
            return Err("at least 12 characters".into());
        }
    }
    Ok(SecretString::from(first))
}

/// A progress bar on stderr for long operations (hidden when stderr is not a terminal).
pub(crate) struct Bar(indicatif::ProgressBar);

impl Bar {
    pub(crate) fn new() -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        Bar(bar)
    }
}

impl fleetkey::fleet::Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        self.0.reset();
        self.0.set_length(total);
        let template = if total > 0 {
            "{msg:>28} [{bar:40}] {pos}/{len} ({per_sec}, {eta})"
        } else {
            "{msg:>28} {spinner} {pos}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            self.0.set_style(style.progress_chars("=> "));
        }
        self.0.set_message(phase.to_owned());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Writes a line to stdout; a closed pipe (`| head`) ends the output quietly.
pub(crate) fn write_stdout(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::input("stdout", e)),
        _ => Ok(()),
    }
}
