//! TLS on both sides: clients connecting to keyward with TLS, and keyward connecting to a
//! redis-server that takes only TLS (and a client certificate), with certificates made for
//! each test run.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::{Keyward, RedisServer};

/// A CA, and a server and a client certificate it signed, as PEM files in a temp dir.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn make() -> Certificates {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: OpenSSL takes a certificate whose subject is its issuer's for a
        // self-signed one.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "keyward test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        for name in ["server", "client"] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("keyward test {name}"));
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            let certificate = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), certificate.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Certificates { dir }
    }

    /// A redis-server that takes only TLS, with the server certificate, and requires a client
    /// certificate when `client_certificates`.
    fn redis_server(&self, client_certificates: bool) -> RedisServer {
        let path = |file: &str| self.path(file).display().to_string();
        let auth_clients = if client_certificates { "yes" } else { "no" };
        RedisServer::start_tls(vec![
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            auth_clients.into(),
        ])
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The path as a TOML string.
    fn toml(&self, file: &str) -> String {
        format!("{:?}", self.path(file).display().to_string())
    }
}

/// A TLS client to `port` that trusts the CA in `ca`.
fn tls_client(port: u16, ca: &Path) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    rustls::StreamOwned::new(connection, socket)
}

/// Sends `request` and reads until the reply ends with `expected`.
fn exchange(stream: &mut impl ReadWrite, request: &[u8], expected: &str) {
    stream.write_all(request).unwrap();
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !reply.ends_with(expected.as_bytes()) {
        let read = stream.read(&mut chunk).unwrap();
        assert!(
            read > 0,
            "closed after {:?}",
            String::from_utf8_lossy(&reply)
        );
        reply.extend_from_slice(&chunk[..read]);
    }
    assert_eq!(String::from_utf8_lossy(&reply), expected);
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn clients_connect_with_tls() {
    let certificates = Certificates::make();
    let redis = RedisServer::start();
    let keyward = Keyward::start(
        redis.port,
        &format!(
            "[listen.tls]\ncert = {}\nkey = {}\n",
            certificates.toml("server.pem"),
            certificates.toml("server.key")
        ),
    );
    let mut client = tls_client(keyward.port, &certificates.path("ca.pem"));
    exchange(&mut client, b"*1\r\n$4\r\nPING\r\n", "+PONG\r\n");
    exchange(
        &mut client,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        "+OK\r\n$5\r\nhello\r\n",
    );
    // A large value crosses the bridge in many TLS records, both ways.
    let value = "v".repeat(1_000_000);
    let set = format!(
        "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n{value}\r\n",
        value.len()
    );
    exchange(&mut client, set.as_bytes(), "+OK\r\n");
    let reply = format!("${}\r\n{value}\r\n", value.len());
    exchange(&mut client, b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n", &reply);
    let stored: String = redis::cmd("GET")
        .arg("k")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(stored, "hello");

    // A client that closes its sending side without a TLS close_notify still gets the replies
    // to what it sent, then the end of the stream, as over plain TCP.
    let mut half = tls_client(keyward.port, &certificates.path("ca.pem"));
    half.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    half.flush().unwrap();
    half.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = half.read_to_end(&mut rest);
    assert_eq!(String::from_utf8_lossy(&rest), "+PONG\r\n");

    // A client speaking plain RESP to the TLS port gets no Redis reply, and is counted.
    let failures = || -> u64 {
        let metrics = keyward.admin_get("/metrics").1;
        support::metric_value(&metrics, "keyward_tls_handshake_failures_total", &[]) as u64
    };
    let before = failures();
    let mut plain = TcpStream::connect(("127.0.0.1", keyward.port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"+PONG"), "{answer:?}");
    support::wait_for(
        Duration::from_secs(5),
        "the handshake failure is counted",
        || failures() == before + 1,
    );
}

#[test]
fn keyward_connects_to_redis_over_tls_with_a_client_certificate() {
    let certificates = Certificates::make();
    let redis = certificates.redis_server(true);
    let upstream_tls = format!(
        "tls = {{ ca = {}, cert = {}, key = {}, server_name = \"localhost\" }}",
        certificates.toml("ca.pem"),
        certificates.toml("client.pem"),
        certificates.toml("client.key"),
    );
    // A cache rule, so that the invalidation connection runs over TLS too.
    let keyward = Keyward::start_with_upstream(
        redis.port,
        &upstream_tls,
        "[[cache]]\nname = \"all\"\nkeys = [\"*\"]\nttl = \"1m\"\nmax_memory = \"1MB\"\n",
    );
    let mut client = keyward.client();
    let mut pipe = redis::pipe();
    for n in 0..1000 {
        pipe.cmd("SET").arg(format!("key:{n}")).arg(n).ignore();
    }
    pipe.cmd("GET").arg("key:999");
    let (last,): (String,) = pipe.query(&mut client).unwrap();
    assert_eq!(last, "999");
    support::wait_for(
        Duration::from_secs(5),
        "the invalidation connection is up over TLS",
        || {
            let stats: String = redis::cmd("KEYWARD")
                .arg(&["CACHE", "STATS"])
                .query(&mut keyward.client())
                .unwrap();
            stats.contains("invalidations:up")
        },
    );
    let first: String = redis::cmd("GET").arg("key:1").query(&mut client).unwrap();
    let () = redis::cmd("SET")
        .arg("key:1")
        .arg("changed")
        .query(&mut client)
        .unwrap();
    let second: String = redis::cmd("GET").arg("key:1").query(&mut client).unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("1", "changed"));
}

#[test]
fn a_redis_certificate_keyward_does_not_trust_gives_errors_not_hangs() {
    let certificates = Certificates::make();
    let redis = certificates.redis_server(false);
    // No `ca`: the Mozilla roots, which never signed the test CA.
    let keyward = Keyward::start_with_upstream(redis.port, "tls = {}", "");
    let error = redis::cmd("PING")
        .query::<String>(&mut keyward.client())
        .unwrap_err();
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
}

#[test]
fn the_rest_api_serves_https() {
    let certificates = Certificates::make();
    let redis = RedisServer::start();
    let mut port = 0;
    let _keyward = Keyward::start_with_ports_of_its_own(
        redis.port,
        "",
        &[("TEST_REST_TOKEN", "s3cret")],
        || {
            port = support::free_port();
            format!(
                "[http_api]\naddress = \"127.0.0.1:{port}\"\n\
                 tls = {{ cert = {}, key = {} }}\n\
                 [[http_api.tokens]]\nname = \"web\"\ntoken_env = \"TEST_REST_TOKEN\"\n",
                certificates.toml("server.pem"),
                certificates.toml("server.key")
            )
        },
    );
    let mut client = tls_client(port, &certificates.path("ca.pem"));
    let body = r#"["ECHO","over https"]"#;
    write!(
        client,
        "POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer s3cret\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = client.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(
        response.ends_with(r#"{"result":"over https"}"#),
        "{response}"
    );
}
