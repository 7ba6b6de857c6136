//! `keyward top`: a live terminal view of the hottest keys, read from a running keyward's
//! admin endpoint (`GET /hotkeys`), like `top` for processes.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::policy::hotkeys::big_keys::BigKeysReport;
use crate::policy::hotkeys::{By, Report};

/// The longest one request to the admin endpoint may take, so a stuck keyward shows as an
/// error rather than a frozen screen.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct TopOptions {
    /// The admin endpoint, `host:port`.
    pub admin: String,
    pub window: Option<String>,
    pub by: By,
    pub count: usize,
    pub interval: Duration,
    /// Print one frame and exit (for scripts), instead of refreshing until interrupted.
    pub once: bool,
}

pub fn run(options: &TopOptions) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(refresh(options))
}

/// Draws a frame every `interval` (one, with `once`).
async fn refresh(options: &TopOptions) -> Result<(), String> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("by", options.by.name())
        .append_pair("limit", &options.count.to_string());
    if let Some(window) = &options.window {
        query.append_pair("window", window);
    }
    let hotkeys = format!("/hotkeys?{}", query.finish());
    loop {
        let report: Report = fetch(&options.admin, &hotkeys).await?;
        let big_keys: BigKeysReport = fetch(&options.admin, "/bigkeys?limit=5").await?;
        let mut frame = String::new();
        if !options.once {
            // Clear the screen and go home, as top does.
            frame.push_str("\x1b[2J\x1b[H");
        }
        frame.push_str(&render(&options.admin, &report, &big_keys));
        std::io::stdout()
            .write_all(frame.as_bytes())
            .map_err(|e| e.to_string())?;
        if options.once {
            return Ok(());
        }
        tokio::time::sleep(options.interval).await;
    }
}

async fn fetch<T: serde::de::DeserializeOwned>(admin: &str, path: &str) -> Result<T, String> {
    let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, http_get(admin, path))
        .await
        .map_err(|_| format!("{admin} did not answer within {REQUEST_TIMEOUT:?}"))??;
    if status != 200 {
        return Err(format!("{admin} answered {status}: {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("unexpected answer from {admin}: {e}"))
}

/// One `GET` on a connection of its own: the status and the body.
async fn http_get(address: &str, path: &str) -> Result<(u16, String), String> {
    let unreachable = |e: &dyn std::fmt::Display| format!("cannot reach {address}: {e}");
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    // Drives the connection; it ends when the request's sender is dropped.
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, address)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let failed = |e: hyper::Error| format!("unexpected answer from {address}: {e}");
    let response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(failed)?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

fn render(admin: &str, report: &Report, big_keys: &BigKeysReport) -> String {
    let unit = report.by.name();
    let mut out = format!(
        "keyward top - {admin} - last {} - {} {unit} (counts may exceed the truth by at most {})\n\n",
        report.window, report.total, report.error_bound
    );
    let by_bytes = report.by == By::Bytes;
    for (title, entries) in [("KEY", &report.keys), ("PATTERN", &report.patterns)] {
        out.push_str(&format!(
            "{:>12} {:>10} {:>12} {:>12}",
            unit.to_ascii_uppercase(),
            "±ERROR",
            "READS",
            "WRITES"
        ));
        if by_bytes {
            out.push_str(&format!(" {:>12} {:>12}", "IN", "OUT"));
        }
        out.push_str(&format!("  {title}\n"));
        for entry in entries {
            out.push_str(&format!(
                "{:>12} {:>10} {:>12} {:>12}",
                entry.count, entry.error, entry.reads, entry.writes
            ));
            if let (Some(inbound), Some(outbound)) = (entry.bytes_in, entry.bytes_out) {
                out.push_str(&format!(" {inbound:>12} {outbound:>12}"));
            }
            out.push_str(&format!("  {}\n", entry.key));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "BIG KEYS (replies or written values over {} bytes)\n",
        big_keys.threshold_bytes
    ));
    for big in &big_keys.keys {
        out.push_str(&format!(
            "{:>12} {:>6} {:>10}  {} {}\n",
            big.bytes,
            big.side.name(),
            big.times,
            big.command,
            big.key
        ));
    }
    out
}
