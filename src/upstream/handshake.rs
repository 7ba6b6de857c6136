//! Opening a connection to Redis: connect, authenticate, choose the protocol and database, and
//! learn the facts about the server that sessions answer from (`HELLO`, `SELECT` bounds).

use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp3::decode::complete::decode;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::Stream;

use super::{credentials, UpstreamError, UpstreamSettings};
use crate::resp::request::encode_command;
use crate::resp::Protocol;

/// Reads the next frame, as `decode` reads it, from a connection keyward talks on itself (a
/// handshake, the invalidation connection); cancel-safe: what was read stays in `buf`.
pub async fn read_frame<F, E: std::fmt::Display>(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    decode: impl Fn(&[u8]) -> Result<Option<(F, usize)>, E>,
) -> Result<F, String> {
    loop {
        if let Some((frame, used)) = decode(buf).map_err(|error| error.to_string())? {
            let _ = buf.split_to(used);
            return Ok(frame);
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err("connection closed by Redis".into()),
            Ok(_) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// What Redis told us about itself; sessions answer `HELLO` and check `SELECT` with it.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub version: String,
    pub mode: String,
    pub role: String,
    /// Module names and versions, as `HELLO` lists them.
    pub modules: Vec<(String, i64)>,
    /// `CONFIG GET databases`; unknown when keyward's user may not run `CONFIG`.
    pub databases: Option<u32>,
}

impl Default for ServerFacts {
    fn default() -> Self {
        ServerFacts {
            version: "unknown".into(),
            mode: "standalone".into(),
            role: "master".into(),
            modules: Vec::new(),
            databases: None,
        }
    }
}

/// A connection ready for commands, and the server's facts when they were asked for.
pub struct Handshaken {
    pub stream: Stream,
    /// The connection's id in Redis (`HELLO` tells it), which `CLIENT KILL ID`,
    /// `CLIENT UNBLOCK` and `CLIENT TRACKING … REDIRECT` name it by.
    pub client_id: Option<u64>,
    pub facts: Option<ServerFacts>,
}

/// Connects and prepares a connection for `protocol` and database `db`; `setup` commands
/// (already encoded) run last, e.g. a dedicated connection's `CLIENT SETNAME`.
pub async fn connect(
    settings: &UpstreamSettings,
    protocol: Protocol,
    db: u32,
    setup: &[Vec<Vec<u8>>],
    want_facts: bool,
) -> Result<Handshaken, UpstreamError> {
    let deadline = settings.connect_timeout;
    tokio::time::timeout(
        deadline,
        handshake(settings, protocol, db, setup, want_facts),
    )
    .await
    .map_err(|_| UpstreamError::Timeout(deadline))?
}

async fn handshake(
    settings: &UpstreamSettings,
    protocol: Protocol,
    db: u32,
    setup: &[Vec<Vec<u8>>],
    want_facts: bool,
) -> Result<Handshaken, UpstreamError> {
    let address = &settings.address;
    let tcp = TcpStream::connect((address.host(), address.port()))
        .await
        .map_err(UpstreamError::Io)?;
    tcp.set_nodelay(true).map_err(UpstreamError::Io)?;
    let mut stream = match &settings.tls {
        Some(tls) => tls.connect(tcp).await.map_err(UpstreamError::Io)?,
        None => Stream::Tcp(tcp),
    };

    let commands = handshake_commands(settings, protocol, db, setup, want_facts);

    let mut out = BytesMut::new();
    for command in &commands {
        encode_command(command, &mut out);
    }
    stream.write_all(&out).await.map_err(UpstreamError::Io)?;

    let mut buf = BytesMut::with_capacity(4096);
    let mut replies = Vec::with_capacity(commands.len());
    while replies.len() < commands.len() {
        let reply = read_frame(&mut stream, &mut buf, decode).await;
        replies.push(reply.map_err(UpstreamError::Handshake)?);
    }

    let mut facts = want_facts.then(ServerFacts::default);
    let mut client_id = None;
    for (command, reply) in commands.iter().zip(&replies) {
        let name = String::from_utf8_lossy(&command[0]).to_uppercase();
        if let Some(message) = error_text(reply) {
            // Facts are optional: keyward's user may not run CONFIG, or a script may be busy.
            if name == "CONFIG" {
                continue;
            }
            if message.starts_with("BUSY") {
                return Err(UpstreamError::Busy(message));
            }
            if name == "HELLO" && credentials::is_refusal(&message) {
                settings.credentials.note_refused(&message);
                return Err(UpstreamError::Refused(message));
            }
            if name == "HELLO" && message.starts_with("ERR unknown command") {
                return Err(UpstreamError::Handshake(format!(
                    "HELLO: {message} (keyward needs Redis 6.0 or later)"
                )));
            }
            return Err(UpstreamError::Handshake(format!("{name}: {message}")));
        }
        if name == "HELLO" {
            client_id = field(reply, "id").and_then(|id| text(id)?.parse().ok());
        }
        if let Some(facts) = facts.as_mut() {
            match name.as_str() {
                "HELLO" => read_hello(reply, facts),
                "CONFIG" => {
                    if let Some(databases) =
                        field(reply, "databases").and_then(|value| text(value)?.parse().ok())
                    {
                        facts.databases = Some(databases);
                    }
                }
                _ => {}
            }
        }
    }
    settings.credentials.note_accepted();
    Ok(Handshaken {
        stream,
        client_id,
        facts,
    })
}

/// What a new connection runs before it serves: `HELLO` (with keyward's login), the database,
/// `READONLY` on a cluster replica, the facts asked for, then `setup`.
fn handshake_commands(
    settings: &UpstreamSettings,
    protocol: Protocol,
    db: u32,
    setup: &[Vec<Vec<u8>>],
    want_facts: bool,
) -> Vec<Vec<Vec<u8>>> {
    let mut commands: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut hello = vec![
        b"HELLO".to_vec(),
        protocol.version().to_string().into_bytes(),
    ];
    if let Some((user, password)) = settings.credentials.login() {
        hello.push(b"AUTH".to_vec());
        hello.push(user.to_vec());
        hello.push(password.to_vec());
    }
    commands.push(hello);
    if db != 0 {
        commands.push(vec![b"SELECT".to_vec(), db.to_string().into_bytes()]);
    }
    if settings.reads_replica && settings.cluster.is_some() {
        commands.push(vec![b"READONLY".to_vec()]);
    }
    if want_facts {
        commands.push(vec![
            b"CONFIG".to_vec(),
            b"GET".to_vec(),
            b"databases".to_vec(),
        ]);
    }
    commands.extend(setup.iter().cloned());
    commands
}

fn read_hello(reply: &OwnedFrame, facts: &mut ServerFacts) {
    for (key, value) in pairs(reply) {
        match text(key).as_deref() {
            Some("version") => facts.version = text(value).unwrap_or_default(),
            Some("mode") => facts.mode = text(value).unwrap_or_default(),
            Some("role") => facts.role = text(value).unwrap_or_default(),
            Some("modules") => {
                facts.modules = elements(value)
                    .iter()
                    .map(|module| {
                        let name = field(module, "name").and_then(text).unwrap_or_default();
                        let version = match field(module, "ver") {
                            Some(OwnedFrame::Number { data, .. }) => *data,
                            _ => 0,
                        };
                        (name, version)
                    })
                    .collect()
            }
            _ => {}
        }
    }
}

/// The value under `name` in a map (or the flat array RESP2 sends in its place).
pub(super) fn field<'a>(reply: &'a OwnedFrame, name: &str) -> Option<&'a OwnedFrame> {
    pairs(reply)
        .into_iter()
        .find(|(key, _)| text(key).as_deref() == Some(name))
        .map(|(_, value)| value)
}

pub(super) fn error_text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::SimpleError { data, .. } => Some(data.clone()),
        OwnedFrame::BlobError { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

pub(super) fn text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BlobString { data, .. }
        | OwnedFrame::SimpleString { data, .. }
        | OwnedFrame::VerbatimString { data, .. } => {
            Some(String::from_utf8_lossy(data).into_owned())
        }
        OwnedFrame::Number { data, .. } => Some(data.to_string()),
        _ => None,
    }
}

pub(super) fn elements(frame: &OwnedFrame) -> &[OwnedFrame] {
    match frame {
        OwnedFrame::Array { data, .. } | OwnedFrame::Push { data, .. } => data,
        _ => &[],
    }
}

/// Key/value pairs of a RESP3 map or of the flat array RESP2 sends in its place.
pub(super) fn pairs(frame: &OwnedFrame) -> Vec<(&OwnedFrame, &OwnedFrame)> {
    match frame {
        OwnedFrame::Map { data, .. } => data.iter().collect(),
        other => elements(other)
            .chunks_exact(2)
            .map(|pair| (&pair[0], &pair[1]))
            .collect(),
    }
}

/// How long to wait before the next reconnect attempt: doubling from a short first wait, capped
/// so a Redis that comes back is used again within the cap.
pub fn next_backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(25), Duration::from_millis(500))
}
