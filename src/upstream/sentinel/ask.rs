//! The questions keyward asks: a sentinel, which node is the primary; the node, whether it is.

use bytes::BytesMut;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;

use super::super::handshake::{self, read_frame};
use super::super::UpstreamSettings;
use crate::config::HostPort;
use crate::net::Stream;
use crate::resp::request::encode_command;
use crate::resp::Protocol;

/// Opens a connection as `settings` say and asks one question on it, within the connect
/// timeout.
pub(super) async fn ask(
    settings: &UpstreamSettings,
    question: &[&[u8]],
) -> Result<OwnedFrame, String> {
    let asked = async {
        let connected = handshake::connect(settings, Protocol::Resp2, 0, &[], false)
            .await
            .map_err(|error| error.to_string())?;
        let mut stream = connected.stream;
        send(&mut stream, question).await?;
        read_frame(&mut stream, &mut BytesMut::new(), decode).await
    };
    tokio::time::timeout(settings.connect_timeout, asked)
        .await
        .map_err(|_| format!("no answer within {:?}", settings.connect_timeout))?
}

pub(super) async fn send(stream: &mut Stream, command: &[&[u8]]) -> Result<(), String> {
    let mut out = BytesMut::new();
    encode_command(command, &mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|error| error.to_string())
}

/// The primary a sentinel names for `master_name`.
pub(super) async fn primary_named(
    sentinel: &UpstreamSettings,
    master_name: &str,
) -> Result<HostPort, String> {
    let question: [&[u8]; 3] = [
        b"SENTINEL",
        b"GET-MASTER-ADDR-BY-NAME",
        master_name.as_bytes(),
    ];
    match ask(sentinel, &question).await? {
        OwnedFrame::Array(parts) => match &parts[..] {
            [OwnedFrame::BulkString(host), OwnedFrame::BulkString(port)] => {
                let host = String::from_utf8_lossy(host);
                let port = String::from_utf8_lossy(port)
                    .parse()
                    .map_err(|_| "a port that is no number")?;
                Ok(HostPort::new(&host, port))
            }
            _ => Err("an address that is not host and port".into()),
        },
        OwnedFrame::Null => Err(format!("it watches no primary named {master_name:?}")),
        OwnedFrame::Error(message) => Err(message),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Whether the node `settings` reach says it is a primary (`ROLE`): a sentinel's answer may
/// lag a failover.
pub(super) async fn is_primary(settings: &UpstreamSettings) -> Result<(), String> {
    match ask(settings, &[b"ROLE"]).await? {
        OwnedFrame::Array(parts) => match parts.first() {
            Some(OwnedFrame::BulkString(role)) if role == b"master" => Ok(()),
            Some(OwnedFrame::BulkString(role)) => {
                Err(format!("it says it is a {}", String::from_utf8_lossy(role)))
            }
            _ => Err("ROLE answered without a role".into()),
        },
        OwnedFrame::Error(message) => Err(message),
        other => Err(format!("unexpected reply to ROLE {other:?}")),
    }
}

/// Reads a `+switch-master` message: `<name> <old host> <old port> <new host> <new port>`;
/// the new primary's address if it is about `master_name`.
pub(super) fn switched_to(frame: &OwnedFrame, master_name: &str) -> Option<HostPort> {
    let OwnedFrame::Array(parts) = frame else {
        return None;
    };
    let [OwnedFrame::BulkString(kind), OwnedFrame::BulkString(channel), OwnedFrame::BulkString(payload)] =
        &parts[..]
    else {
        return None;
    };
    if kind != b"message" || channel != b"+switch-master" {
        return None;
    }
    let payload = std::str::from_utf8(payload).ok()?;
    let words: Vec<&str> = payload.split(' ').collect();
    match words[..] {
        [name, _, _, host, port] if name == master_name => {
            Some(HostPort::new(host, port.parse().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> OwnedFrame {
        OwnedFrame::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn switch_master_names_the_new_primary() {
        let message = OwnedFrame::Array(vec![
            bulk("message"),
            bulk("+switch-master"),
            bulk("mymaster 127.0.0.1 6380 127.0.0.1 6381"),
        ]);
        assert_eq!(
            switched_to(&message, "mymaster"),
            Some(HostPort::new("127.0.0.1", 6381))
        );
        assert_eq!(switched_to(&message, "other"), None);
        let subscribed = OwnedFrame::Array(vec![
            bulk("subscribe"),
            bulk("+switch-master"),
            OwnedFrame::Integer(1),
        ]);
        assert_eq!(switched_to(&subscribed, "mymaster"), None);
    }
}
