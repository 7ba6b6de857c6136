//! TLS for clients and for Redis, each optional (rustls with the ring provider).
//!
//! The handshake runs with tokio-rustls. After it, the rest of keyward gets the plaintext as
//! the local end of a socket pair, which a task bridges to the TLS stream: sessions and
//! upstream connections keep their readiness-driven reads and batched writes, one way of
//! doing I/O for both kinds of connection, at the price of one local copy each way for TLS.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ListenTls, UpstreamTls};
use crate::metrics;
use crate::net::Stream;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TLS from clients with the configured certificate.
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl ServerTls {
    /// `section` names where the settings are written (`listen`, `http_api`), for errors.
    pub fn from_config(config: &ListenTls, section: &str) -> Result<ServerTls, String> {
        let context = |error: String| format!("[{section}] tls: {error}");
        let certificates = certificates(&config.cert).map_err(context)?;
        let key = private_key(&config.key).map_err(context)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| context(error.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .map_err(|error| context(error.to_string()))?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the handshake with a client; the caller bounds how long it may take.
    pub async fn accept(&self, tcp: TcpStream, tasks: &TaskTracker) -> io::Result<Stream> {
        bridge(self.acceptor.accept(tcp).await?, Some(tasks))
    }
}

/// A client's connection as keyward reads it: TLS is set up first when the listener has it
/// (`None` when the handshake failed or took too long). The handshake runs in the client's
/// own task, not in an accept loop, so a slow client holds only its own connection.
pub async fn accept_client(
    stream: TcpStream,
    tls: Option<&ServerTls>,
    peer: SocketAddr,
    relays: &TaskTracker,
) -> Option<Stream> {
    let Some(tls) = tls else {
        return Some(Stream::Tcp(stream));
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream, relays)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            metrics::tls_handshake_failed();
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
            metrics::tls_handshake_failed();
            None
        }
    }
}

/// Connects to Redis over TLS, checking its certificate against the configured CA (or the
/// Mozilla roots) and name.
pub struct ClientTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// `host`: the upstream address's host, the name expected when none is configured.
    pub fn from_config(settings: &UpstreamTls, host: &str) -> Result<ClientTls, String> {
        ClientTls::build(settings, host).map_err(|error| format!("[upstream] tls: {error}"))
    }

    fn build(settings: &UpstreamTls, host: &str) -> Result<ClientTls, String> {
        let mut roots = RootCertStore::empty();
        match &settings.ca {
            Some(path) => {
                for certificate in certificates(path)? {
                    roots
                        .add(certificate)
                        .map_err(|error| format!("{}: {error}", path.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots);
        let config = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|error| error.to_string())?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("give both cert and key, or neither".into()),
        };
        let name = settings
            .server_name
            .clone()
            .unwrap_or_else(|| host.to_string());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| format!("{name:?} is not a valid server name"))?;
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Connects. The relay lives as long as the connection: sessions that wait for replies
    /// on it are what a shutdown waits for.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Stream> {
        let server_name = self.server_name.clone();
        bridge(self.connector.connect(server_name, tcp).await?, None)
    }
}

/// How long the bridge may take, once keyward has dropped its end, to pass on what is left
/// and say goodbye to a peer (which may read nothing at all).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Hands the plaintext side of `tls` to keyward as a local socket, relayed by a task (on
/// `tasks` when given, so that a graceful shutdown waits for what is still on its way).
fn bridge<S>(tls: S, tasks: Option<&TaskTracker>) -> io::Result<Stream>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (near, far) = UnixStream::pair()?;
    let closed = CancellationToken::new();
    let dropped = closed.clone();
    let bridged = async move {
        tokio::select! {
            () = relay(tls, far) => {}
            () = async {
                dropped.cancelled().await;
                tokio::time::sleep(CLOSE_TIMEOUT).await;
            } => {}
        }
    };
    match tasks {
        Some(tasks) => drop(tasks.spawn(bridged)),
        None => drop(tokio::spawn(bridged)),
    }
    Ok(Stream::Local {
        socket: near,
        _closed: closed.drop_guard(),
    })
}

/// Copies each way on its own, as a TCP connection carries each way: the end of one direction
/// (an end of stream, a peer that closed without a TLS close_notify, a failed write) is passed
/// on as an end of stream, and the other direction goes on until it ends too.
async fn relay<S>(tls: S, local: UnixStream)
where
    S: AsyncRead + AsyncWrite,
{
    let (mut from_peer, mut to_peer) = tokio::io::split(tls);
    let (mut from_keyward, mut to_keyward) = local.into_split();
    let inbound = async {
        let _ = tokio::io::copy(&mut from_peer, &mut to_keyward).await;
        let _ = to_keyward.shutdown().await;
    };
    let outbound = async {
        let _ = tokio::io::copy(&mut from_keyward, &mut to_peer).await;
        let _ = to_peer.shutdown().await;
    };
    tokio::join!(inbound, outbound);
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|all| all.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| format!("{}: {error}", path.display()))
}
