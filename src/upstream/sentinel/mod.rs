//! A primary that Redis Sentinel names, followed through its failovers.
//!
//! keyward asks every sentinel which node is the primary (`SENTINEL MASTER`), believes the
//! one that knows it under the greatest configuration epoch (a sentinel may lag a failover,
//! and the old primary may still say it is one until the sentinels demote it), and checks the
//! answer with `ROLE` on that node. It never goes back to an older epoch's primary while the
//! one in use still says it is the primary (sentinels monitoring anew start from epoch 0). It
//! listens for `+switch-master` on every sentinel it can reach, which makes it ask at once,
//! and asks again every [`CHECK_EVERY`], and whenever a connection finds its node no longer
//! the primary (`-READONLY`) or unreachable.
//!
//! Connections to the primary are opened with [`Sentinel::primary_link`]: the primary's
//! address, and a token cancelled when the primary changes. The connection then ends, failing
//! what is in flight on it (never leaving it unanswered), and a pooled connection opens again
//! to the new primary; a session's own connection ends, and the session closes its client, as
//! Redis closes clients when it is demoted.

mod ask;

use ask::Named;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::credentials::Credentials;
use super::handshake;
use super::subscribed::Subscribed;
use super::{next_backoff, UpstreamSettings};
use crate::config::HostPort;
use crate::metrics;
use crate::resp::Protocol;

/// How often keyward asks the sentinels again when nothing asked it to sooner.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Asked-for checks come at most this often.
const CHECK_GAP: Duration = Duration::from_millis(100);
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
    /// The configuration epoch `primary` was named under.
    epoch: AtomicU64,
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
            epoch: AtomicU64::new(0),
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
        let leave = self.leave_token();
        let primary = self.primary().ok_or_else(|| self.unknown_because())?;
        let settings = self.settings.at(&primary);
        Ok((settings, leave))
    }

    /// A token cancelled when the primary changes (a first one is found, or another replaces
    /// it).
    pub fn leave_token(&self) -> CancellationToken {
        self.leave.lock().clone()
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
                Ok(named) => {
                    if self.replaces_primary(&named).await {
                        self.adopt(named);
                    }
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

    /// The primary the sentinels that answer name under the greatest epoch, once it says it
    /// is one.
    async fn find_primary(&self) -> Result<Named, String> {
        let mut asking = JoinSet::new();
        for sentinel in &self.sentinels {
            let (sentinel, name) = (sentinel.clone(), self.master_name.clone());
            asking.spawn(async move {
                let named = ask::primary_named(&sentinel, &name).await;
                named.map_err(|error| format!("sentinel {}: {error}", sentinel.address))
            });
        }
        let mut answers: Vec<Named> = Vec::new();
        let mut errors = Vec::new();
        while let Some(answer) = asking.join_next().await {
            match answer
                .map_err(|error| error.to_string())
                .and_then(|named| named)
            {
                Ok(named) => answers.push(named),
                Err(error) => errors.push(error),
            }
        }
        let latest = latest_primary(answers);
        let Some(named) = latest else {
            if errors.is_empty() {
                return Err("the sentinels are running a failover".into());
            }
            return Err(errors.join("; "));
        };
        match ask::is_primary(&self.settings.at(&named.primary)).await {
            Ok(()) => Ok(named),
            Err(error) => Err(format!("the sentinels name {}, but {error}", named.primary)),
        }
    }

    /// Whether `named` takes the place of the primary in use: there is none yet, or `named` is
    /// another under a later epoch, or under no later one while the one in use no longer says
    /// it is a primary (sentinels told to monitor a primary anew, with `SENTINEL REMOVE`, then
    /// `MONITOR`, after a switch made by hand, start again from epoch 0).
    async fn replaces_primary(&self, named: &Named) -> bool {
        let Some(current) = self.primary() else {
            return true;
        };
        if *current == named.primary {
            return false;
        }
        if named.epoch > self.epoch.load(Ordering::Acquire) {
            return true;
        }
        ask::is_primary(&self.settings.at(&current)).await.is_err()
    }

    /// Makes `named` the primary connections go to; connections to the one before end now.
    fn adopt(&self, named: Named) {
        let Named { primary, epoch, .. } = named;
        let previous = self.primary();
        self.epoch.store(epoch, Ordering::Release);
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

    /// Subscribes to `+switch-master` on sentinel `index`, asking the sentinels again at each
    /// announcement about the primary; returns why the connection ended.
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
        let mut subscribed = Subscribed::new(stream, BytesMut::new());
        loop {
            let frame = match subscribed.next().await {
                Ok(frame) => frame,
                Err(error) => return error,
            };
            self.listening[index].store(true, Ordering::Relaxed);
            if ask::announces_switch(&frame, &self.master_name) {
                self.check_soon();
            }
        }
    }
}

/// The primary most sentinels name under the greatest epoch, leaving out those running a
/// failover (they name the old primary under the new epoch until it is over).
fn latest_primary(answers: Vec<Named>) -> Option<Named> {
    let settled: Vec<Named> = answers
        .into_iter()
        .filter(|named| !named.failing_over)
        .collect();
    let epoch = settled.iter().map(|named| named.epoch).max()?;
    let latest = settled.iter().filter(|named| named.epoch == epoch);
    latest
        .clone()
        .max_by_key(|named| {
            latest
                .clone()
                .filter(|other| other.primary == named.primary)
                .count()
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(port: u16, epoch: u64, failing_over: bool) -> Named {
        Named {
            primary: HostPort::new("127.0.0.1", port),
            epoch,
            failing_over,
        }
    }

    #[test]
    fn the_latest_settled_epoch_names_the_primary() {
        // The failover's leader names the old primary under the new epoch until it is over.
        let answers = vec![
            named(6380, 1, true),
            named(6381, 1, false),
            named(6381, 1, false),
        ];
        assert_eq!(
            latest_primary(answers).map(|named| named.primary.port()),
            Some(6381)
        );
        let lagging = vec![
            named(6380, 0, false),
            named(6382, 2, false),
            named(6381, 1, false),
        ];
        assert_eq!(
            latest_primary(lagging).map(|named| named.primary.port()),
            Some(6382)
        );
        assert!(latest_primary(vec![named(6380, 3, true)]).is_none());
    }
}
