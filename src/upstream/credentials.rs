//! The user and password keyward's own connections to Redis authenticate with.
//!
//! A password from `[upstream] password_file` is read again on every reload request and
//! whenever the file changes (as Kubernetes updates a mounted secret), so that SREs rotate it
//! without a restart. Whether Redis accepts them is learnt at every handshake: while it
//! refuses them, keyward says so once in its log and `/readyz` answers not ready.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use crate::secret;

pub struct Credentials {
    username: Vec<u8>,
    password: ArcSwapOption<Vec<u8>>,
    /// Where the password is read from, when it can change.
    file: Option<PathBuf>,
    /// Why Redis refused these credentials at the last handshake, until one succeeds.
    refused: Mutex<Option<String>>,
    /// keyward's own, whose refusal is logged and makes keyward not ready; not a client's.
    own: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// keyward's own credentials that never change (the password from the environment).
    pub fn fixed(username: Option<String>, password: Option<String>) -> Credentials {
        Credentials {
            username: username.map_or_else(|| b"default".to_vec(), String::into_bytes),
            password: ArcSwapOption::new(password.map(|password| Arc::new(password.into_bytes()))),
            file: None,
            refused: Mutex::new(None),
            own: true,
        }
    }

    /// A client's own `AUTH user password`, which may be any bytes.
    pub fn client(user: Vec<u8>, password: Vec<u8>) -> Credentials {
        Credentials {
            username: user,
            password: ArcSwapOption::new(Some(Arc::new(password))),
            file: None,
            refused: Mutex::new(None),
            own: false,
        }
    }

    /// Credentials whose password is the content of `file` (without a final newline), read
    /// now: an unreadable or empty file is an error at start.
    pub fn from_file(username: Option<String>, file: PathBuf) -> Result<Credentials, String> {
        let password = read_password(&file)?;
        Ok(Credentials {
            file: Some(file),
            ..Credentials::fixed(username, Some(password))
        })
    }

    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    /// `AUTH`'s arguments for `HELLO … AUTH` (user, password), if a password is set.
    pub fn login(&self) -> Option<(&[u8], Arc<Vec<u8>>)> {
        Some((&self.username, self.password.load_full()?))
    }

    /// Whether a client's `AUTH user password` names these credentials.
    pub fn are(&self, user: &[u8], password: &[u8]) -> bool {
        self.login()
            .is_some_and(|(own_user, own)| own_user == user && secret::same(password, &own))
    }

    /// Reads the password file again; logs a change, or why the file cannot be read (the
    /// password in use stays). `true` if the password changed.
    pub fn reread(&self) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        match read_password(file) {
            Ok(password) => {
                let current = self.password.load();
                if current.as_deref().map(Vec::as_slice) == Some(password.as_bytes()) {
                    return false;
                }
                self.password.store(Some(Arc::new(password.into_bytes())));
                tracing::info!(
                    file = %file.display(),
                    "upstream password changed: connections keyward opens from now on use it"
                );
                true
            }
            Err(error) => {
                tracing::warn!("{error}; connections keyward opens keep the password read before");
                false
            }
        }
    }

    /// Redis refused these credentials at a handshake.
    pub fn note_refused(&self, message: &str) {
        if !self.own {
            return;
        }
        let mut refused = self.refused.lock();
        if refused.is_none() {
            tracing::error!(
                refusal = message,
                "Redis refuses keyward's credentials: connections keyward opens fail until \
                 they are updated ([upstream] password_file or password_env); /readyz answers \
                 not ready"
            );
        }
        *refused = Some(message.to_string());
    }

    /// A handshake with these credentials succeeded.
    pub fn note_accepted(&self) {
        if !self.own {
            return;
        }
        let mut refused = self.refused.lock();
        if refused.take().is_some() {
            tracing::info!("Redis accepts keyward's credentials again");
        }
    }

    /// Why Redis refuses these credentials, while it does.
    pub fn refusal(&self) -> Option<String> {
        self.refused.lock().clone()
    }
}

fn read_password(file: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| format!("upstream password file {}: {error}", file.display()))?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(format!(
            "upstream password file {} is empty; a password must not be",
            file.display()
        ));
    }
    Ok(password.to_string())
}

/// Whether Redis refused a handshake for its credentials (rather than anything else).
pub fn is_refusal(message: &str) -> bool {
    message.starts_with("WRONGPASS")
        || message.starts_with("NOAUTH")
        || message.starts_with("NOPERM")
        || message.contains("invalid password")
        || message.contains("AUTH <password> called without any password configured")
}
