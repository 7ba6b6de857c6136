//! A primary that Redis Sentinel names, followed through its failovers.
//!
//! keyward asks the sentinels, in order, which node is the primary (`SENTINEL
//! GET-MASTER-ADDR-BY-NAME`), and checks the answer with `ROLE` on that node: a sentinel may
//! lag a failover. It listens for `+switch-master` on every sentinel it can reach, and asks
//! again every [`CHECK_EVERY`], and whenever a connection finds its node no longer the
//! primary (`-READONLY`) or unreachable.
//!
//! Connections to the primary are opened with [`Sentinel::primary_link`]: the primary's
//! address, and a token cancelled when the primary changes. The connection then ends, failing
//! what is in flight on it (never leaving it unanswered), and a pooled connection opens again
//! to the new primary; a session's own connection ends, and the session closes its client, as
//! Redis closes clients when it is demoted.

mod ask;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::BytesMut;
use parking_lot::Mutex;
use redis_protocol::resp2::decode::decode;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::credentials::Credentials;
use super::handshake::{self, read_frame};
use super::{next_backoff, UpstreamSettings};
use crate::config::HostPort;
use crate::metrics;
use crate::resp::Protocol;

/// How often keyward asks the sentinels again when nothing asked it to sooner.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Asked-for checks come at most this often.
const CHECK_GAP: Duration = Duration::from_millis(100);
/// How often a sentinel connection proves it is alive.
const PING_EVERY: Duration = Duration::from_secs(5);
/// While no primary is known, keyward asks this often.
const SEARCH_EVERY: Duration = Duration::from_millis(500);

/// The primary as the sentinels name it.
pub struct Sentinel {
    /// For connections to data nodes (keyward's credentials, TLS, timeouts).
    settings: UpstreamSettings,
    /// For connections to each sentinel, in the configured order.
    sentinels: Vec<UpstreamSettings>,
    master_name: String,
    primary: ArcSwapOption<HostPort>,
    /// Cancelled when the primary changes; then replaced.
    leave: Mutex<CancellationToken>,
    /// Wakes the checker before its interval is up.
    check: Notify,
    /// Which sentinels keyward is subscribed to now.
    listening: Vec<AtomicBool>,
    /// Why the last check failed, while none has succeeded since.
    last_error: Mutex<Option<String>>,
}

impl Sentinel {
    pub fn new(settings: &UpstreamSettings) -> Option<Arc<Sentinel>> {
        let plan = settings.sentinel.as_ref()?;
        let credentials = Arc::new(Credentials::fixed(None, plan.password.clone()));
        let sentinels: Vec<UpstreamSettings> = plan
            .sentinels
            .iter()
            .map(|address| UpstreamSettings {
                address: address.clone(),
                credentials: Arc::clone(&credentials),
                ..settings.clone()
            })
            .collect();
        Some(Arc::new(Sentinel {
            listening: sentinels.iter().map(|_| AtomicBool::new(false)).collect(),
            sentinels,
            master_name: plan.master_name.clone(),
            settings: settings.clone(),
            primary: ArcSwapOption::empty(),
            leave: Mutex::new(CancellationToken::new()),
            check: Notify::new(),
            last_error: Mutex::default(),
        }))
    }

    /// The primary, once known.
    pub fn primary(&self) -> Option<Arc<HostPort>> {
        self.primary.load_full()
    }

    /// Settings for a connection to the primary now, and the token that ends it when the
    /// primary changes; `Err` while no primary is known.
    pub fn primary_link(&self) -> Result<(UpstreamSettings, CancellationToken), String> {
        // The token first: a change after it is read cancels it.
        let leave = self.leave.lock().clone();
        let primary = self.primary().ok_or_else(|| self.unknown_because())?;
        let settings = UpstreamSettings {
            address: (*primary).clone(),
            ..self.settings.clone()
        };
        Ok((settings, leave))
    }

    /// A connection found its node no longer the primary, or could not reach it: ask again.
    pub fn check_soon(&self) {
        self.check.notify_one();
    }

    /// Why keyward cannot serve, if it cannot: no primary is known.
    pub fn not_ready_because(&self) -> Option<String> {
        self.primary().is_none().then(|| self.unknown_because())
    }

    /// What readiness should mention while keyward serves: no sentinel can tell it of a
    /// failover.
    pub fn caveat(&self) -> Option<String> {
        let primary = self.primary()?;
        (self.sentinels_listening() == 0)
            .then(|| format!("no sentinel reachable: keeping the last known primary {primary}"))
    }

    /// How many sentinels keyward is subscribed to now.
    pub fn sentinels_listening(&self) -> usize {
        self.listening
            .iter()
            .filter(|listening| listening.load(Ordering::Relaxed))
            .count()
    }

    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    pub fn sentinel_count(&self) -> usize {
        self.sentinels.len()
    }

    fn unknown_because(&self) -> String {
        let reason = self.last_error.lock().clone();
        let reason = reason.unwrap_or_else(|| "not asked yet".into());
        format!("no primary known for {:?}: {reason}", self.master_name)
    }

    /// Finds the primary, then keeps it current for as long as keyward runs, with a listener
    /// on every sentinel.
    pub async fn keep_current(self: Arc<Self>) {
        for index in 0..self.sentinels.len() {
            tokio::spawn(Arc::clone(&self).listen(index));
        }
        loop {
            match self.find_primary().await {
                Ok(primary) => {
                    self.adopt(primary);
                    *self.last_error.lock() = None;
                }
                Err(error) => {
                    if self.last_error.lock().replace(error.clone()).is_none() {
                        tracing::warn!(%error, "cannot learn the primary from the sentinels");
                    }
                }
            }
            tokio::time::sleep(CHECK_GAP).await;
            let wait = match self.primary() {
                Some(_) => CHECK_EVERY,
                None => SEARCH_EVERY,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.check.notified() => {}
            }
        }
    }

    /// The primary the first sentinel that can tell names, once it says it is one.
    async fn find_primary(&self) -> Result<HostPort, String> {
        let mut errors = Vec::new();
        for sentinel in &self.sentinels {
            let named = ask::primary_named(sentinel, &self.master_name).await;
            let checked = match named {
                Ok(primary) => self.confirm(primary).await,
                Err(error) => Err(error),
            };
            match checked {
                Ok(primary) => return Ok(primary),
                Err(error) => errors.push(format!("sentinel {}: {error}", sentinel.address)),
            }
        }
        Err(errors.join("; "))
    }

    /// `primary` if it says it is one.
    async fn confirm(&self, primary: HostPort) -> Result<HostPort, String> {
        let settings = UpstreamSettings {
            address: primary.clone(),
            ..self.settings.clone()
        };
        ask::is_primary(&settings)
            .await
            .map(|()| primary.clone())
            .map_err(|error| format!("it names {primary}, but {error}"))
    }

    /// Makes `primary` the one connections go to; those to another end now.
    fn adopt(&self, primary: HostPort) {
        let previous = self.primary();
        if previous.as_deref() == Some(&primary) {
            return;
        }
        let node = primary.to_string();
        self.primary.store(Some(Arc::new(primary)));
        let old = std::mem::replace(&mut *self.leave.lock(), CancellationToken::new());
        old.cancel();
        let previous_node = previous.as_ref().map(|previous| previous.to_string());
        metrics::upstream_primary(&node, previous_node.as_deref());
        match previous_node {
            Some(previous) => {
                metrics::upstream_failover();
                tracing::warn!(%previous, primary = %node, master = %self.master_name, "the primary changed: connections move to the new one");
            }
            None => tracing::info!(primary = %node, master = %self.master_name, "primary found"),
        }
    }

    /// Listens for `+switch-master` on sentinel `index` for as long as keyward runs,
    /// reconnecting when the connection drops.
    async fn listen(self: Arc<Self>, index: usize) {
        let mut backoff = Duration::ZERO;
        loop {
            let ended = self.follow_announcements(index).await;
            self.listening[index].store(false, Ordering::Relaxed);
            let sentinel = &self.sentinels[index].address;
            tracing::debug!(%sentinel, reason = %ended, "not listening to a sentinel");
            if self.sentinels_listening() == 0 {
                if let Some(primary) = self.primary() {
                    tracing::warn!(%primary, "no sentinel reachable: keeping the last known primary");
                }
            }
            backoff = next_backoff(backoff);
            tokio::time::sleep(backoff).await;
        }
    }

    /// Subscribes to `+switch-master` on sentinel `index` and adopts each announced primary
    /// (once it says it is one); returns why the connection ended.
    async fn follow_announcements(&self, index: usize) -> String {
        let sentinel = &self.sentinels[index];
        let opened = handshake::connect(sentinel, Protocol::Resp2, 0, &[], false).await;
        let mut stream = match opened {
            Ok(connected) => connected.stream,
            Err(error) => return error.to_string(),
        };
        if let Err(error) = ask::send(&mut stream, &[b"SUBSCRIBE", b"+switch-master"]).await {
            return error;
        }
        let mut input = BytesMut::new();
        // A sentinel that silently went away (a dropped NAT entry, a crashed host) would
        // otherwise look listened to forever.
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut unanswered_ping = false;
        loop {
            let frame = tokio::select! {
                frame = read_frame(&mut stream, &mut input, decode) => match frame {
                    Ok(frame) => frame,
                    Err(error) => return error,
                },
                _ = ping.tick() => {
                    if unanswered_ping {
                        return format!("no answer to PING within {PING_EVERY:?}");
                    }
                    if let Err(error) = ask::send(&mut stream, &[b"PING"]).await {
                        return error;
                    }
                    unanswered_ping = true;
                    continue;
                }
            };
            unanswered_ping = false;
            self.listening[index].store(true, Ordering::Relaxed);
            let Some(primary) = ask::switched_to(&frame, &self.master_name) else {
                continue;
            };
            match self.confirm(primary).await {
                Ok(primary) => self.adopt(primary),
                // Announced before the node took the role: the checker asks again.
                Err(_) => self.check_soon(),
            }
        }
    }
}
