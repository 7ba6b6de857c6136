//! Reading the slot map from a node: `CLUSTER SHARDS`, or `CLUSTER SLOTS` from a Redis too old
//! for it.

use bytes::BytesMut;
use redis_protocol::resp3::decode::complete::decode;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::io::AsyncWriteExt;

use super::super::handshake::{connect, error_text, read_frame};
use super::super::{ServerFacts, UpstreamSettings};
use super::SlotMap;
use crate::config::HostPort;
use crate::net::Stream;
use crate::resp::request::encode_command;
use crate::resp::Protocol;

/// The map as the first of `candidates` that answers describes it, and what that node says of
/// itself; the error names what each one said.
pub(super) async fn read_map(
    candidates: Vec<HostPort>,
    settings_for: impl Fn(&HostPort) -> UpstreamSettings,
) -> Result<(SlotMap, Option<ServerFacts>), String> {
    let mut failures = Vec::new();
    for address in candidates {
        let settings = settings_for(&address);
        let limit = settings.connect_timeout;
        match tokio::time::timeout(limit, ask(&settings)).await {
            Ok(Ok(map)) => return Ok(map),
            Ok(Err(error)) => failures.push(format!("{address}: {error}")),
            Err(_) => failures.push(format!("{address}: no answer within {limit:?}")),
        }
    }
    Err(failures.join("; "))
}

async fn ask(settings: &UpstreamSettings) -> Result<(SlotMap, Option<ServerFacts>), String> {
    let connected = connect(settings, Protocol::Resp2, 0, &[], true)
        .await
        .map_err(|error| error.to_string())?;
    let mut stream = connected.stream;
    let mut input = BytesMut::new();
    let shards = exchange(&mut stream, &mut input, &[b"CLUSTER", b"SHARDS"]).await?;
    let map = match error_text(&shards) {
        None => SlotMap::from_shards(&shards, settings.tls.is_some()),
        // Redis before 7.0.
        Some(error) if error.contains("nknown subcommand") => {
            let slots = exchange(&mut stream, &mut input, &[b"CLUSTER", b"SLOTS"]).await?;
            match error_text(&slots) {
                None => SlotMap::from_slots(&slots),
                Some(error) => Err(error),
            }
        }
        Some(error) => Err(error),
    }?;
    Ok((map, connected.facts))
}

async fn exchange(
    stream: &mut Stream,
    input: &mut BytesMut,
    command: &[&[u8]],
) -> Result<OwnedFrame, String> {
    let mut out = BytesMut::new();
    encode_command(command, &mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|error| error.to_string())?;
    read_frame(stream, input, decode).await
}
