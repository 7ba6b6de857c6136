//! `keyward top`: a live terminal view of the hottest keys, read from a running keyward's
//! admin endpoint (`GET /hotkeys`), like `top` for processes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::hotkeys::Report;

pub struct TopOptions {
    /// The admin endpoint, `host:port`.
    pub admin: String,
    pub window: Option<String>,
    pub count: usize,
    pub interval: Duration,
    /// Print one frame and exit (for scripts), instead of refreshing until interrupted.
    pub once: bool,
}

pub fn run(options: &TopOptions) -> Result<(), String> {
    loop {
        let report = fetch(options)?;
        let mut frame = String::new();
        if !options.once {
            // Clear the screen and go home, as top does.
            frame.push_str("\x1b[2J\x1b[H");
        }
        frame.push_str(&render(&options.admin, &report));
        std::io::stdout()
            .write_all(frame.as_bytes())
            .map_err(|e| e.to_string())?;
        if options.once {
            return Ok(());
        }
        std::thread::sleep(options.interval);
    }
}

fn fetch(options: &TopOptions) -> Result<Report, String> {
    let mut path = format!("/hotkeys?by=requests&limit={}", options.count);
    if let Some(window) = &options.window {
        path.push_str(&format!("&window={window}"));
    }
    let (status, body) = http_get(&options.admin, &path)?;
    if status != 200 {
        return Err(format!(
            "{} answered {status}: {}",
            options.admin,
            body.trim()
        ));
    }
    serde_json::from_str(&body)
        .map_err(|e| format!("unexpected answer from {}: {e}", options.admin))
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

fn render(admin: &str, report: &Report) -> String {
    let mut out = format!(
        "keyward top - {admin} - last {} - {} requests (counts may exceed the truth by at most {})\n\n",
        report.window, report.requests, report.error_bound
    );
    for (title, entries) in [("KEY", &report.keys), ("PATTERN", &report.patterns)] {
        out.push_str(&format!(
            "{:>10} {:>8} {:>10} {:>10}  {title}\n",
            "REQUESTS", "±ERROR", "READS", "WRITES"
        ));
        for entry in entries {
            out.push_str(&format!(
                "{:>10} {:>8} {:>10} {:>10}  {}\n",
                entry.requests, entry.error, entry.reads, entry.writes, entry.key
            ));
        }
        out.push('\n');
    }
    out
}
