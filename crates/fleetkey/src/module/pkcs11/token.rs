//! The token a module works on: the library (loaded and initialised once per process), the slot
//! found by label, the login, and a pool of sessions. Shared by every [`super::Pkcs11Module`] of
//! the process on the same library and token label, so that one module's drop never logs out
//! another's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::error::ModuleError;

/// The environment variable the PIN is read from.
pub const PIN_ENV: &str = "FLEETKEY_PKCS11_PIN";

/// The environment variable the security officer's PIN is read from (only to import the backup
/// key-encryption key and mark it `CKA_TRUSTED`).
pub const SO_PIN_ENV: &str = "FLEETKEY_PKCS11_SO_PIN";

/// The longest PIN or backup KEK file read (a PIN or 64 hex digits fit many times over).
pub const MAX_SECRET_FILE_LEN: usize = 1024;

/// The first line of a small secret file, without its line end, in zeroizing memory: at most
/// [`MAX_SECRET_FILE_LEN`] bytes are read, and the file must be UTF-8 with a first line that
/// is not empty.
pub(crate) fn first_line_of_secret_file(
    path: &Path,
    what: &'static str,
) -> Result<Zeroizing<String>, ModuleError> {
    use std::io::Read as _;
    let bad = |problem| ModuleError::SecretFile {
        what,
        path: path.to_owned(),
        problem,
    };
    let io = |source| ModuleError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_SECRET_FILE_LEN + 1));
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_SECRET_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > MAX_SECRET_FILE_LEN {
        return Err(bad("longer than 1024 bytes"));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8 text"))?;
    let line = text.lines().next().unwrap_or("");
    if line.trim().is_empty() {
        return Err(bad("empty first line"));
    }
    Ok(Zeroizing::new(line.to_owned()))
}

/// A token's user PIN, zeroized on drop; `Debug` shows no character of it.
pub struct Pin(AuthPin);

impl Pin {
    /// A PIN from its text.
    pub fn new(pin: impl Into<String>) -> Self {
        Pin(AuthPin::from(pin.into()))
    }

    /// The PIN in [`PIN_ENV`], if set.
    pub fn from_env() -> Option<Self> {
        std::env::var(PIN_ENV).ok().map(Pin::new)
    }

    /// The PIN in a file: its first line (a trailing newline is not part of it). The file
    /// must be UTF-8, at most [`MAX_SECRET_FILE_LEN`] bytes, with a first line that is not
    /// empty ([`ModuleError::SecretFile`] otherwise).
    pub fn from_file(path: &Path) -> Result<Self, ModuleError> {
        let line = first_line_of_secret_file(path, "PIN file")?;
        Ok(Pin::new(line.as_str()))
    }

    /// The PIN from `file` when given, else from [`PIN_ENV`]; neither is an error saying both.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Self, ModuleError> {
        match file {
            Some(path) => Pin::from_file(path),
            None => Pin::from_env().ok_or_else(|| ModuleError::Backend {
                operation: "reading the token PIN",
                detail: format!("set {PIN_ENV} or give a PIN file"),
            }),
        }
    }

    /// The security officer's PIN from `file` when given, else from [`SO_PIN_ENV`].
    pub fn so_from_file_or_env(file: Option<&Path>) -> Result<Self, ModuleError> {
        match file {
            Some(path) => Pin::from_file(path),
            None => {
                std::env::var(SO_PIN_ENV)
                    .ok()
                    .map(Pin::new)
                    .ok_or_else(|| ModuleError::Backend {
                        operation: "reading the security officer's PIN",
                        detail: format!("set {SO_PIN_ENV} or give an SO PIN file"),
                    })
            }
        }
    }

    fn duplicate(&self) -> Pin {
        Pin::new(self.0.expose_secret().to_owned())
    }

    fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0.expose_secret().as_bytes()).into()
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

/// Maps a cryptoki error to [`ModuleError::Backend`] naming the C function.
pub(crate) fn backend(operation: &'static str) -> impl Fn(CkError) -> ModuleError {
    move |e| ModuleError::Backend {
        operation,
        detail: e.to_string(),
    }
}

/// A failed `C_UnwrapKey`: [`ModuleError::Unwrap`] when the token says the wrapped blob is bad
/// (SoftHSM 2.6.1 answers a failed integrity check with `CKR_GENERAL_ERROR`; creations are
/// retried first, which a passing store fault would not survive), a backend error otherwise.
pub(crate) fn unwrap_failure(e: CkError) -> ModuleError {
    match rv(&e) {
        Some(
            RvError::WrappedKeyInvalid
            | RvError::WrappedKeyLenRange
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::GeneralError,
        ) => ModuleError::Unwrap,
        _ => backend("C_UnwrapKey")(e),
    }
}

/// The return value of a failed call, when the token gave one.
pub(crate) fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// One token of one library, logged in as the user.
pub(crate) struct Token {
    pub(crate) pkcs11: Pkcs11,
    pub(crate) slot: Slot,
    pub(crate) label: String,
    library: PathBuf,
    pin_digest: [u8; 32],
    /// The user PIN, to log the user back in after a security officer's operation.
    pin: Pin,
    /// Keeps the login: a PKCS#11 login lasts while the application has a session open.
    login: Mutex<Session>,
    pool: Mutex<Vec<Session>>,
    /// Serialises the creation and destruction of token objects in this process.
    pub(crate) changes: Mutex<()>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("library", &self.library)
            .field("label", &self.label)
            .field("slot", &self.slot.id())
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Libraries loaded and initialised in this process. A library is never finalised: another
/// module may open it again, and C_Initialize may run once per process.
static LIBRARIES: Mutex<Vec<(PathBuf, Pkcs11)>> = Mutex::new(Vec::new());
/// Tokens open in this process.
static TOKENS: Mutex<Vec<(PathBuf, String, Weak<Token>)>> = Mutex::new(Vec::new());

fn library(path: &Path) -> Result<Pkcs11, ModuleError> {
    let mut libraries = lock(&LIBRARIES);
    if let Some((_, pkcs11)) = libraries.iter().find(|(p, _)| p == path) {
        return Ok(pkcs11.clone());
    }
    let pkcs11 = Pkcs11::new(path).map_err(|e| ModuleError::Backend {
        operation: "loading the PKCS#11 library",
        detail: format!("{}: {e}", path.display()),
    })?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(e) if rv(&e) == Some(RvError::CryptokiAlreadyInitialized) => {}
        Err(e) => return Err(backend("C_Initialize")(e)),
    }
    libraries.push((path.to_owned(), pkcs11.clone()));
    Ok(pkcs11)
}

impl Token {
    /// Opens (or shares) the token labelled `label` of the library at `library`, logged in
    /// with `pin`. A token already open in this process with another PIN is refused as
    /// [`ModuleError::Authentication`].
    pub(crate) fn open(
        library_path: &Path,
        label: &str,
        pin: &Pin,
    ) -> Result<Arc<Token>, ModuleError> {
        let mut tokens = lock(&TOKENS);
        tokens.retain(|(_, _, t)| t.strong_count() > 0);
        let digest = pin.digest();
        if let Some(token) = tokens
            .iter()
            .filter(|(p, l, _)| p == library_path && l == label)
            .find_map(|(_, _, t)| t.upgrade())
        {
            return if bool::from(token.pin_digest.ct_eq(&digest)) {
                Ok(token)
            } else {
                Err(ModuleError::Authentication)
            };
        }
        let pkcs11 = library(library_path)?;
        let slot = find_slot(&pkcs11, library_path, label)?;
        let session = pkcs11
            .open_rw_session(slot)
            .map_err(backend("C_OpenSession"))?;
        match session.login(UserType::User, Some(&pin.0)) {
            Ok(()) => {}
            Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => {}
            Err(e)
                if matches!(
                    rv(&e),
                    Some(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange)
                ) =>
            {
                return Err(ModuleError::Authentication);
            }
            Err(e) => return Err(backend("C_Login")(e)),
        }
        let token = Arc::new(Token {
            pkcs11,
            slot,
            label: label.to_owned(),
            library: library_path.to_owned(),
            pin_digest: digest,
            pin: pin.duplicate(),
            login: Mutex::new(session),
            pool: Mutex::new(Vec::new()),
            changes: Mutex::new(()),
        });
        tokens.push((
            library_path.to_owned(),
            label.to_owned(),
            Arc::downgrade(&token),
        ));
        Ok(token)
    }

    /// Runs `work` in a session logged in as the security officer with `so_pin`, then logs the
    /// user back in. The login is the application's, not the session's: while `work` runs,
    /// the user's sessions of this process cannot use private objects, so callers hold
    /// [`Token::changes`] and run this as an administrative step on its own. A refused SO PIN
    /// is [`ModuleError::Authentication`], with the user logged back in.
    pub(crate) fn as_security_officer<T>(
        &self,
        so_pin: &Pin,
        work: impl FnOnce(&Session) -> Result<T, ModuleError>,
    ) -> Result<T, ModuleError> {
        let session = lock(&self.login);
        session.logout().map_err(backend("C_Logout"))?;
        let result = match session.login(UserType::So, Some(&so_pin.0)) {
            Ok(()) => {
                let result = work(&session);
                session.logout().map_err(backend("C_Logout")).and(result)
            }
            Err(e)
                if matches!(
                    rv(&e),
                    Some(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange)
                ) =>
            {
                Err(ModuleError::Authentication)
            }
            Err(e) => Err(backend("C_Login (security officer)")(e)),
        };
        match session.login(UserType::User, Some(&self.pin.0)) {
            Ok(()) => result,
            Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => result,
            Err(e) => result.and(Err(backend("C_Login (user, after the security officer)")(
                e,
            ))),
        }
    }

    /// A session from the pool, or a new one.
    pub(crate) fn session(&self) -> Result<Session, ModuleError> {
        if let Some(session) = lock(&self.pool).pop() {
            return Ok(session);
        }
        self.pkcs11
            .open_rw_session(self.slot)
            .map_err(backend("C_OpenSession"))
    }

    /// Gives a session back to the pool.
    pub(crate) fn give_back(&self, session: Session) {
        lock(&self.pool).push(session);
    }
}

fn find_slot(pkcs11: &Pkcs11, library: &Path, label: &str) -> Result<Slot, ModuleError> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(backend("C_GetSlotList"))?;
    let mut present = Vec::new();
    let mut found = Vec::new();
    for slot in slots {
        let info = pkcs11
            .get_token_info(slot)
            .map_err(backend("C_GetTokenInfo"))?;
        if !info.token_initialized() {
            continue;
        }
        if info.label() == label {
            found.push(slot);
        }
        present.push(format!("{:?}", info.label()));
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(ModuleError::Backend {
            operation: "finding the token by label",
            detail: format!(
                "no token labelled {label:?} in {}; tokens present: {}",
                library.display(),
                if present.is_empty() {
                    "none".to_owned()
                } else {
                    present.join(", ")
                }
            ),
        }),
        _ => Err(ModuleError::Backend {
            operation: "finding the token by label",
            detail: format!(
                "{} tokens are labelled {label:?} in {}; labels must be unique",
                found.len(),
                library.display()
            ),
        }),
    }
}
