//! The configuration in force, and how it changes while keyward runs.
//!
//! A reload (file change, SIGHUP or `POST /reload`) reads and validates the whole file. A valid
//! file is compiled into new policies and swapped in at once: commands already decided keep
//! the rules they were decided by, new ones see the new rules, and no connection notices.
//! An invalid or unreadable file changes nothing; its errors are logged, shown at `GET /config`
//! and counted in `keyward_config_reloads_total{result="error"}`. Settings that only a restart
//! can apply (listen and admin addresses, upstream, runtime, the REST API) are reported as
//! needing one and ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::logging;
use crate::metrics;
use crate::policy::Policies;

/// One loaded version of the config.
pub struct Active {
    pub config: Config,
    pub policies: Policies,
}

/// What `GET /config` reports about loading.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub path: Option<String>,
    /// SHA-256 of the file contents in force (hex, as `sha256sum` prints it), to tell
    /// versions apart.
    pub hash: String,
    /// When the version in force was loaded (seconds since the epoch).
    pub loaded_at: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    /// Whether the file was last read with errors, so that what runs is not what it says (the
    /// last error is then current, not history); false again once the file is fixed.
    pub last_reload_failed: bool,
    /// Settings changed in the file that only apply after a restart.
    pub needs_restart: Vec<String>,
    pub reloads_ok: u64,
    pub reloads_error: u64,
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file watcher: one save can raise several events, so a file already judged is not
    /// judged (and counted) again.
    FileChange,
    /// SIGHUP or `POST /reload`: someone asked, so the file is read and judged again.
    Request(&'static str),
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::FileChange => "file change",
            Trigger::Request(what) => what,
        }
    }
}

/// A version of the file as rejections remember it: its contents hash (or, for a file that
/// cannot be read, why) and its modification time.
type Version = (String, Option<SystemTime>);

pub struct LiveConfig {
    path: Option<PathBuf>,
    /// The last version rejected, so that the several events one save raises (or any event
    /// in the folder while the file cannot be read) are not counted as several failed reloads.
    last_rejected: Mutex<Option<Version>>,
    /// The file's (modification time, length) when last read for a file event. Reading the
    /// file raises events of its own (inotify reports opens), so an event that finds the file
    /// unchanged must not read it again.
    last_seen: Mutex<Option<(SystemTime, u64)>>,
    active: ArcSwap<Active>,
    status: Mutex<Status>,
    /// Serializes reloads, which can be triggered from several places at once.
    reloading: Mutex<()>,
    /// What else a reload request reads again (keyward's upstream password file).
    also_on_request: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

/// How a reload ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    Unchanged,
    Rejected(Vec<String>),
}

impl LiveConfig {
    /// `text` is the file as it was read for `config`, so the hash in force is that version's.
    pub fn new(path: Option<&Path>, config: Config, text: &str) -> LiveConfig {
        let policies = Policies::compile(&config, None);
        LiveConfig {
            path: path.map(Path::to_path_buf),
            last_rejected: Mutex::new(None),
            last_seen: Mutex::new(None),
            active: ArcSwap::from_pointee(Active { config, policies }),
            status: Mutex::new(Status {
                path: path.map(|path| path.display().to_string()),
                hash: content_hash(text),
                loaded_at: now_seconds(),
                last_error: None,
                last_error_at: None,
                last_reload_failed: false,
                needs_restart: Vec::new(),
                reloads_ok: 0,
                reloads_error: 0,
            }),
            reloading: Mutex::new(()),
            also_on_request: Mutex::default(),
        }
    }

    /// The version in force; cheap enough to call per batch of commands.
    pub fn load(&self) -> arc_swap::Guard<Arc<Active>> {
        self.active.load()
    }

    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Has `also` run on every reload request (SIGHUP, `POST /reload`), before the file is read.
    pub fn also_on_request(&self, also: impl Fn() + Send + Sync + 'static) {
        self.also_on_request.lock().push(Box::new(also));
    }

    /// Reads the file again and swaps it in if it is valid.
    pub fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        let _one_at_a_time = self.reloading.lock();
        if let Trigger::Request(_) = trigger {
            for also in self.also_on_request.lock().iter() {
                also();
            }
        }
        let Some(path) = &self.path else {
            return ReloadOutcome::Rejected(vec!["keyward runs without a config file".into()]);
        };
        if trigger == Trigger::FileChange {
            let stamp = std::fs::metadata(path)
                .ok()
                .and_then(|meta| Some((meta.modified().ok()?, meta.len())));
            let mut last_seen = self.last_seen.lock();
            if stamp.is_some() && *last_seen == stamp {
                return ReloadOutcome::Unchanged;
            }
            *last_seen = stamp;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            // A file that cannot be read is a rejected version as much as one that does not
            // parse: what runs is no longer what the file says.
            Err(error) => {
                let message = format!("{}: cannot read: {error}", path.display());
                return self.reject(trigger, (message.clone(), None), vec![message]);
            }
        };
        let hash = content_hash(&text);
        {
            let mut status = self.status.lock();
            if hash == status.hash {
                // The file says what runs, even if a rejected edit came in between.
                status.last_reload_failed = false;
                return ReloadOutcome::Unchanged;
            }
        }
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let version = (hash.clone(), modified);
        if self.rejected_already(trigger, &version) {
            return ReloadOutcome::Unchanged;
        }
        let file = path.display().to_string();
        match Config::parse_file(&text, Some(path)) {
            Ok((config, warnings)) => {
                for warning in &warnings {
                    tracing::warn!("{}", warning.render(&file, &text));
                }
                let current = self.active.load();
                let (config, needs_restart) = keep_restart_only(&current.config, config);
                for setting in &needs_restart {
                    tracing::warn!(setting, "changed in the config; applies after a restart");
                }
                if config.log.level != current.config.log.level {
                    logging::set_level(config.log.level.as_str());
                }
                let policies = Policies::compile(&config, Some(&current.policies));
                self.active.store(Arc::new(Active { config, policies }));
                let mut status = self.status.lock();
                status.hash = hash;
                status.loaded_at = now_seconds();
                status.needs_restart = needs_restart;
                status.reloads_ok += 1;
                status.last_reload_failed = false;
                metrics::config_reloaded(true);
                tracing::info!(trigger = trigger.name(), path = %file, "config reloaded");
                ReloadOutcome::Applied
            }
            Err(diagnostics) => {
                let messages: Vec<String> = diagnostics
                    .iter()
                    .map(|diagnostic| diagnostic.render(&file, &text))
                    .collect();
                self.reject(trigger, version, messages)
            }
        }
    }

    /// Whether a file event brings a version already rejected: judged (and counted) once.
    fn rejected_already(&self, trigger: Trigger, version: &Version) -> bool {
        trigger == Trigger::FileChange && self.last_rejected.lock().as_ref() == Some(version)
    }

    /// Keeps the version in force, and says why the file was not taken: in the log, in
    /// `/config`, and in the reload metrics.
    fn reject(&self, trigger: Trigger, version: Version, messages: Vec<String>) -> ReloadOutcome {
        if self.rejected_already(trigger, &version) {
            return ReloadOutcome::Unchanged;
        }
        *self.last_rejected.lock() = Some(version);
        for message in &messages {
            tracing::error!(
                trigger = trigger.name(),
                "config rejected, previous version stays: {message}"
            );
        }
        let mut status = self.status.lock();
        status.last_error = Some(messages.join("\n"));
        status.last_error_at = Some(now_seconds());
        status.reloads_error += 1;
        status.last_reload_failed = true;
        metrics::config_reloaded(false);
        ReloadOutcome::Rejected(messages)
    }
}

/// Keeps the running values of settings that cannot change live, naming those the new file
/// changed.
fn keep_restart_only(running: &Config, mut new: Config) -> (Config, Vec<String>) {
    let mut needs_restart = Vec::new();
    if new.listen != running.listen {
        needs_restart.push("listen".to_string());
        new.listen = running.listen.clone();
    }
    if new.admin != running.admin {
        needs_restart.push("admin".to_string());
        new.admin = running.admin.clone();
    }
    if new.upstream != running.upstream {
        needs_restart.push("upstream".to_string());
        new.upstream = running.upstream.clone();
    }
    if new.runtime != running.runtime {
        needs_restart.push("runtime".to_string());
        new.runtime = running.runtime.clone();
    }
    if new.http_api != running.http_api {
        needs_restart.push("http_api".to_string());
        new.http_api = running.http_api.clone();
    }
    (new, needs_restart)
}

/// The SHA-256 of the file's bytes in hex, as `sha256sum` prints it: the same file has the
/// same identity on every build of keyward, and an SRE can compare it with the file on disk.
fn content_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            hex.push_str(&format!("{byte:02x}"));
            hex
        })
}

/// Seconds since the epoch, as `/config` and the admin page give times.
pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Reloads when the file changes.
pub fn watch_file(live: Arc<LiveConfig>) -> Result<impl Drop, String> {
    let path = live.path().ok_or("no config file to watch")?.to_path_buf();
    let runtime = tokio::runtime::Handle::current();
    watch_directory_of(&path, move || {
        let live = Arc::clone(&live);
        runtime.spawn_blocking(move || live.reload(Trigger::FileChange));
    })
}

/// Calls `changed` whenever anything changes in the directory of `path`, until the returned
/// watcher is dropped. Editors save in pieces (write a temporary file, rename it over), so the
/// directory is watched and events are debounced; any event counts, not just ones naming the
/// file: a Kubernetes ConfigMap or Secret update swaps a symlink (`..data`) and never names
/// it. `changed` must be cheap when nothing it cares about changed.
pub fn watch_directory_of(
    path: &Path,
    changed: impl Fn() + Send + 'static,
) -> Result<impl Drop, String> {
    use notify_debouncer_mini::{new_debouncer, notify::RecursiveMode};
    let directory = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut debouncer = new_debouncer(
        Duration::from_millis(100),
        move |events: notify_debouncer_mini::DebounceEventResult| {
            if events.is_ok_and(|events| !events.is_empty()) {
                changed();
            }
        },
    )
    .map_err(|e| e.to_string())?;
    debouncer
        .watcher()
        .watch(&directory, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", directory.display()))?;
    Ok(debouncer)
}
