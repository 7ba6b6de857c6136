//! What keyward needs to open a connection to Redis: the address, limits, credentials and
//! TLS from the config, or a client's own login in place of keyward's.

use std::sync::Arc;
use std::time::Duration;

use super::credentials::Credentials;
use crate::config::{Config, HostPort, Topology};
use crate::tls::ClientTls;

/// Everything needed to open a connection to Redis.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub address: HostPort,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// Shared connections whose oldest request has no reply after this long are reset.
    pub request_timeout: Duration,
    /// keyward's own; a session authenticated as another user opens its connection with its
    /// own (see [`UpstreamSettings::as_client`]).
    pub credentials: Arc<Credentials>,
    pub tls: Option<Arc<ClientTls>>,
    /// Set when `address` is a seed of a Redis Cluster.
    pub cluster: Option<ClusterSettings>,
    /// Set when Sentinel names the primary (`address` is then not used).
    pub sentinel: Option<SentinelSettings>,
    /// The connection carries reads that routes send to a replica. It asks for no facts (the
    /// primary's are what clients are told), and in a Redis Cluster it says `READONLY` first,
    /// or the replica would redirect every command for a key to its primary.
    pub reads_replica: bool,
}

/// `[upstream] topology = "sentinel"`: whom to ask for the primary, and by what name.
#[derive(Debug, Clone)]
pub struct SentinelSettings {
    pub sentinels: Vec<HostPort>,
    pub master_name: String,
    /// The sentinels' own password (`None`: they have none).
    pub password: Option<String>,
}

/// `[upstream] topology = "cluster"`: where to learn the cluster from, and how often.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub seeds: Vec<HostPort>,
    pub refresh_interval: Duration,
}

impl UpstreamSettings {
    pub fn from_config(config: &Config) -> Result<UpstreamSettings, String> {
        UpstreamSettings::with_tls(config, client_tls(config)?)
    }

    /// The settings, with the TLS setup already made from `config` (see [`client_tls`]).
    pub fn with_tls(
        config: &Config,
        tls: Option<Arc<ClientTls>>,
    ) -> Result<UpstreamSettings, String> {
        Ok(UpstreamSettings {
            address: config.upstream.address.clone(),
            pool_size: config.upstream_pool_size(),
            connect_timeout: config.upstream.connect_timeout.get(),
            request_timeout: config.upstream.request_timeout.get(),
            credentials: Arc::new(match &config.upstream.password_file {
                Some(file) => {
                    Credentials::from_file(config.upstream.username.clone(), file.clone())?
                }
                None => Credentials::fixed(
                    config.upstream.username.clone(),
                    config.upstream_password()?,
                ),
            }),
            tls,
            cluster: (config.upstream.topology == Topology::Cluster).then(|| ClusterSettings {
                seeds: config.upstream.seed_nodes(),
                refresh_interval: config.upstream.refresh_interval.get(),
            }),
            sentinel: match config.upstream.topology {
                Topology::Sentinel => Some(SentinelSettings {
                    sentinels: config.upstream.sentinels.clone(),
                    master_name: config.upstream.master_name.clone().unwrap_or_default(),
                    password: config.sentinel_password()?,
                }),
                _ => None,
            },
            reads_replica: false,
        })
    }
}

impl UpstreamSettings {
    /// These settings for the node at `address`: a cluster's node, the primary Sentinel
    /// names, a replica.
    pub fn at(&self, address: &HostPort) -> UpstreamSettings {
        UpstreamSettings {
            address: address.clone(),
            ..self.clone()
        }
    }

    /// These settings with a client's own user and password in place of keyward's.
    pub fn as_client(&self, login: &Login) -> UpstreamSettings {
        UpstreamSettings {
            credentials: Arc::new(Credentials::client(
                login.user.clone(),
                login.password.clone(),
            )),
            ..self.clone()
        }
    }
}

/// A client's own `AUTH user password`, which only Redis can check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: Vec<u8>,
    pub password: Vec<u8>,
}

/// TLS to Redis as `[upstream] tls` sets it up (reading its certificate files), if it is set.
pub fn client_tls(config: &Config) -> Result<Option<Arc<ClientTls>>, String> {
    let host = config.upstream.address.host();
    config
        .upstream
        .tls
        .as_ref()
        .map(|tls| ClientTls::from_config(tls, host).map(Arc::new))
        .transpose()
}
