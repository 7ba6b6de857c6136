//! `keyward top`: a live terminal view of the hottest keys, read from a running keyward's
//! admin endpoint (`GET /hotkeys`), like `top` for processes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::policy::hotkeys::big_keys::BigKeysReport;
use crate::policy::hotkeys::{By, Report};

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
    loop {
        let mut path = format!("/hotkeys?by={}&limit={}", options.by.name(), options.count);
        if let Some(window) = &options.window {
            path.push_str(&format!("&window={window}"));
        }
        let report: Report = fetch(&options.admin, &path)?;
        let big_keys: BigKeysReport = fetch(&options.admin, "/bigkeys?limit=5")?;
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
        std::thread::sleep(options.interval);
    }
}

fn fetch<T: serde::de::DeserializeOwned>(admin: &str, path: &str) -> Result<T, String> {
    let (status, body) = http_get(admin, path)?;
    if status != 200 {
        return Err(format!("{admin} answered {status}: {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("unexpected answer from {admin}: {e}"))
}

/// A minimal HTTP/1.1 GET, enough for the admin endpoint.
fn http_get(address: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect(address).map_err(|e| format!("cannot reach {address}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
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
