//! Why a connection to Redis could not be opened or used, and the Redis-style error each
//! request then gets.

use std::time::Duration;

use bytes::Bytes;

use super::handle::SendError;
use crate::config::HostPort;
use crate::metrics;
use crate::resp::frame::FrameError;
use crate::resp::reply;

#[derive(Debug)]
pub enum UpstreamError {
    Io(std::io::Error),
    Timeout(Duration),
    Handshake(String),
    /// Redis refused the handshake because a script is running (`-BUSY …`).
    Busy(String),
    /// Redis refused keyward's credentials (`-WRONGPASS …`, `-NOAUTH …`).
    Refused(String),
    /// Redis refused a client's own credentials, as it would have answered the client.
    Rejected(String),
    /// In cluster mode, no node serves what the connection is for (or no slot map is known).
    ClusterDown(String),
    /// Sentinel mode: no primary is known.
    NoPrimary(String),
}

impl UpstreamError {
    /// The error a client's request gets when its connection could not be opened: Redis's
    /// own `-BUSY` while a script runs (the request would have got it anyway), else keyward's.
    pub fn reply(&self, address: &HostPort) -> Bytes {
        match self {
            UpstreamError::Busy(message) | UpstreamError::Rejected(message) => {
                reply::error(message)
            }
            UpstreamError::ClusterDown(reason) => reply::error(&format!("CLUSTERDOWN {reason}")),
            _ => reply::error(&format!("ERR upstream {address} unavailable: {self}")),
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Io(error) => write!(f, "{error}"),
            UpstreamError::Timeout(after) => write!(f, "no connection after {after:?}"),
            UpstreamError::Handshake(detail) => write!(f, "handshake failed: {detail}"),
            UpstreamError::Busy(message) => write!(f, "{message}"),
            UpstreamError::Refused(message) => {
                write!(f, "Redis refused keyward's credentials: {message}")
            }
            UpstreamError::Rejected(message) => write!(f, "{message}"),
            UpstreamError::ClusterDown(reason) | UpstreamError::NoPrimary(reason) => {
                write!(f, "{reason}")
            }
        }
    }
}

/// Why a connection to Redis that was serving stopped: everything in flight on it fails.
#[derive(Debug)]
pub enum Breakage {
    ClosedByRedis,
    Io(std::io::Error),
    /// Redis sent something that is not RESP.
    Malformed(FrameError),
    /// A reply on a shared connection that answers nothing keyward sent: keyward and Redis
    /// no longer agree on which reply answers which request.
    UnaskedReply,
    /// No reply within `request_timeout`, and Redis did not say it holds the request on
    /// purpose.
    Stalled(Duration),
    /// Sentinel mode: the sentinels named another primary.
    PrimaryChanged,
    /// Sentinel mode: the node answered `-READONLY`: it is a primary no more.
    NotPrimary,
}

impl Breakage {
    /// The `kind` label of `keyward_upstream_errors_total` it counts under.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            Breakage::Stalled(_) => "timeout",
            _ => "io",
        }
    }
}

impl std::fmt::Display for Breakage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Breakage::ClosedByRedis => f.write_str("connection closed by Redis"),
            Breakage::Io(error) => write!(f, "{error}"),
            Breakage::Malformed(error) => write!(f, "malformed reply: {error}"),
            Breakage::UnaskedReply => f.write_str("Redis sent a reply nobody asked for"),
            Breakage::PrimaryChanged => {
                f.write_str("the primary changed (Sentinel failover): connection closed")
            }
            Breakage::NotPrimary => f.write_str("the node is no longer the primary (READONLY)"),
            Breakage::Stalled(after) => {
                write!(
                    f,
                    "no reply within {after:?} (request_timeout); connection reset"
                )
            }
        }
    }
}

impl SendError {
    /// The error each of `requests` requests that could not be sent gets (and counts it).
    pub fn reply(&self, address: &HostPort, requests: u64) -> Bytes {
        let (kind, message) = match self {
            SendError::Busy => ("busy", "busy: too many requests in flight"),
            SendError::Gone => ("io", "connection closed"),
        };
        metrics::upstream_errors(kind, requests);
        reply::error(&format!("ERR upstream {address} {message}"))
    }
}

/// The error every request in flight gets when a connection to Redis at `address` breaks.
pub(super) fn broken_error(address: &str, reason: &Breakage) -> Bytes {
    reply::error(&format!("ERR upstream {address}: {reason}"))
}
