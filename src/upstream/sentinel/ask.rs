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

/// A primary as one sentinel names it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Named {
    pub(super) primary: HostPort,
    /// The configuration epoch the sentinel knows it under: the sentinel that names a primary
    /// under the greatest epoch knows of the latest failover.
    pub(super) epoch: u64,
    /// The sentinel is running a failover of it (`failover_in_progress`): until it ends, it
    /// names the old primary under the new epoch.
    pub(super) failing_over: bool,
}

/// The primary a sentinel names for `master_name` (`SENTINEL MASTER`).
pub(super) async fn primary_named(
    sentinel: &UpstreamSettings,
    master_name: &str,
) -> Result<Named, String> {
    let question: [&[u8]; 3] = [b"SENTINEL", b"MASTER", master_name.as_bytes()];
    match ask(sentinel, &question).await? {
        OwnedFrame::Error(message) => Err(message),
        reply => read_master(&reply).ok_or_else(|| format!("unexpected reply {reply:?}")),
    }
}

/// Reads `SENTINEL MASTER`'s fields: `ip`, `port` and `config-epoch`, among others.
fn read_master(reply: &OwnedFrame) -> Option<Named> {
    let OwnedFrame::Array(parts) = reply else {
        return None;
    };
    let field = |wanted: &str| {
        parts.chunks(2).find_map(|pair| match pair {
            [OwnedFrame::BulkString(name), OwnedFrame::BulkString(value)]
                if name == wanted.as_bytes() =>
            {
                std::str::from_utf8(value).ok()
            }
            _ => None,
        })
    };
    Some(Named {
        primary: HostPort::new(field("ip")?, field("port")?.parse().ok()?),
        epoch: field("config-epoch")?.parse().ok()?,
        failing_over: field("flags")?
            .split(',')
            .any(|flag| flag == "failover_in_progress"),
    })
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

/// Whether `frame` is a `+switch-master` message (`<name> <old host> <old port> <new host>
/// <new port>`) about `master_name`.
pub(super) fn announces_switch(frame: &OwnedFrame, master_name: &str) -> bool {
    let OwnedFrame::Array(parts) = frame else {
        return false;
    };
    let [OwnedFrame::BulkString(kind), OwnedFrame::BulkString(channel), OwnedFrame::BulkString(payload)] =
        &parts[..]
    else {
        return false;
    };
    kind == b"message"
        && channel == b"+switch-master"
        && payload.split(|&byte| byte == b' ').next() == Some(master_name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> OwnedFrame {
        OwnedFrame::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn a_sentinel_names_the_primary_and_its_epoch() {
        let reply = OwnedFrame::Array(
            [
                "name",
                "mymaster",
                "ip",
                "127.0.0.1",
                "port",
                "6381",
                "flags",
                "master",
            ]
            .into_iter()
            .chain(["config-epoch", "3", "num-slaves", "2"])
            .map(bulk)
            .collect(),
        );
        assert_eq!(
            read_master(&reply),
            Some(Named {
                primary: HostPort::new("127.0.0.1", 6381),
                epoch: 3,
                failing_over: false,
            })
        );
        let failing_over = OwnedFrame::Array(
            ["ip", "127.0.0.1", "port", "6380", "config-epoch", "4"]
                .into_iter()
                .chain(["flags", "master,failover_in_progress,force_failover"])
                .map(bulk)
                .collect(),
        );
        assert!(read_master(&failing_over).is_some_and(|named| named.failing_over));
        assert_eq!(read_master(&OwnedFrame::Array(vec![bulk("name")])), None);
    }

    #[test]
    fn switch_master_names_its_primary() {
        let message = OwnedFrame::Array(vec![
            bulk("message"),
            bulk("+switch-master"),
            bulk("mymaster 127.0.0.1 6380 127.0.0.1 6381"),
        ]);
        assert!(announces_switch(&message, "mymaster"));
        assert!(!announces_switch(&message, "other"));
        let subscribed = OwnedFrame::Array(vec![
            bulk("subscribe"),
            bulk("+switch-master"),
            OwnedFrame::Integer(1),
        ]);
        assert!(!announces_switch(&subscribed, "mymaster"));
    }
}
