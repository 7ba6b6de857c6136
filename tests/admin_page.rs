//! The admin page in a real browser: headless Chromium loads it from a keyward under load,
//! runs its script (which polls the admin endpoint), and the rendered page must show the hot
//! key the test drove, the cache rule's hit ratio and the lock it holds contended, with no
//! console message at all. Screenshots (desktop and phone-sized) are left in Cargo's
//! `target/tmp` as artifacts.
//!
//! Chromium must be installed (`apt-get install chromium`; `.ci/run` does it): without it the
//! test fails rather than pass unseen.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::busy::{Busy, CONTENDED_LOCK, HOT_KEY, MARKUP_KEY};
use support::http_get;

/// The page polls once a second; Chromium's virtual time runs these many milliseconds of it
/// (several polls) as fast as the page lets it, then dumps or shoots the page.
const VIRTUAL_TIME_MS: &str = "5000";

/// The longest one Chromium run may take before the test gives up on it.
const BROWSER_LIMIT: Duration = Duration::from_secs(90);

/// What Chromium printed: the page (the DOM, or nothing for a screenshot) and its log.
struct BrowserRun {
    stdout: String,
    console: Vec<String>,
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom`, `--screenshot=…`) in a window
/// of `size`, with a profile of its own, and collects the console messages it logs.
fn browse(url: &str, mode: &str, size: &str) -> BrowserRun {
    let profile = tempfile::tempdir().expect("a temp dir");
    let log = profile.path().join("chromium.log");
    let chromium = support::installed(
        "chromium",
        "this test needs a real browser (apt-get install chromium)",
    );
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            // Chromium refuses its sandbox to root, which CI runs as.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .arg(format!("--window-size={size}"))
        .arg(mode)
        .arg(url)
        .current_dir(profile.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    let stdout = child.stdout.take().expect("chromium's output");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    while child.try_wait().expect("chromium's status").is_none() {
        if started.elapsed() > BROWSER_LIMIT {
            let _ = child.kill();
            panic!("chromium did not finish within {BROWSER_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    BrowserRun {
        stdout: reader.join().expect("chromium's output read"),
        // Chromium logs every console message, and every resource the page failed to load
        // or the Content-Security-Policy refused, on lines of its CONSOLE source.
        console: stderr
            .lines()
            .filter(|line| line.contains(":CONSOLE"))
            .map(str::to_string)
            .collect(),
    }
}

/// The table row named `name` (`data-name`) in the part of the page that starts at `section`.
fn row<'d>(dom: &'d str, section: &str, name: &str) -> &'d str {
    let from = dom
        .find(section)
        .unwrap_or_else(|| panic!("{section} in the page:\n{dom}"));
    let rest = &dom[from..];
    let start = rest
        .find(&format!("data-name=\"{name}\""))
        .unwrap_or_else(|| panic!("a row {name:?} after {section}:\n{rest}"));
    let end = rest[start..].find("</tr>").expect("the row ends");
    &rest[start..start + end]
}

fn cells(row: &str) -> Vec<String> {
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let text = cell.split_once('>').map_or("", |(_, text)| text);
            let mut plain = String::new();
            let mut in_tag = false;
            for c in text.split("</td>").next().unwrap_or_default().chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => plain.push(c),
                    _ => {}
                }
            }
            plain
        })
        .collect()
}

fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[test]
fn the_page_shows_what_keyward_sees() {
    let mut busy = Busy::start();
    let url = format!("http://127.0.0.1:{}/", busy.keyward.admin_port);
    let page = browse(&url, "--dump-dom", "1280,1800");
    let dom = &page.stdout;
    assert!(
        page.console.is_empty(),
        "console messages:\n{}",
        page.console.join("\n")
    );

    assert!(dom.contains("Redis up"), "{dom}");
    let hot = cells(row(dom, "id=\"hot-table\"", HOT_KEY));
    assert_eq!(hot[0], HOT_KEY, "{hot:?}");
    let requests: u64 = hot[1].replace(',', "").parse().expect("a count");
    assert!(requests >= 5, "{hot:?}");

    let cache = cells(row(dom, "id=\"cache-table\"", "pages"));
    assert_eq!(
        cache[1..4],
        ["9", "1", "90%"],
        "hits, misses, ratio: {cache:?}"
    );

    let lock = cells(row(dom, "id=\"lock-table\"", CONTENDED_LOCK));
    assert_eq!(
        lock[..3],
        [CONTENDED_LOCK, "jobs", "1"],
        "key, rule, waiters: {lock:?}"
    );
    assert_eq!(
        lock[4], "holder",
        "the machine itself sees the holder: {lock:?}"
    );

    let shadow = row(dom, "id=\"ratelimit-table\"", "api-preview");
    assert!(
        shadow.contains(">shadow<"),
        "the shadow rule is marked: {shadow}"
    );
    let limited = cells(row(dom, "id=\"ratelimit-table\"", "logins"));
    assert_eq!(limited[2], "5", "allowed: {limited:?}");

    // A key is whatever a client sent: shown as text, never run as markup.
    let escaped = MARKUP_KEY.replace('<', "&lt;").replace('>', "&gt;");
    assert!(dom.contains(&escaped), "the markup key shown as text");
    assert!(!dom.contains("<img src=\"x\""), "no element made of a key");

    let rate = dom
        .split("id=\"rate-now\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the rate");
    assert!(
        rate.replace(',', "").parse::<f64>().is_ok(),
        "a rate, not {rate:?}"
    );

    for (name, size) in [
        ("admin-page.png", "1280,1800"),
        ("admin-page-phone.png", "390,2400"),
    ] {
        let path = artifact(name);
        let shot = browse(&url, &format!("--screenshot={}", path.display()), size);
        assert!(
            shot.console.is_empty(),
            "console messages:\n{}",
            shot.console.join("\n")
        );
        let png = std::fs::read(&path).expect("a screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name} is a picture"
        );
        eprintln!("screenshot: {}", path.display());
    }
    busy.finish();
}

/// The page and its script and style sheet are built into keyward, and name nothing outside
/// it: no CDN, no font service, nothing fetched at run time. The Content-Security-Policy makes
/// the browser refuse anything else.
#[test]
fn the_page_is_built_in_and_fetches_nothing_from_elsewhere() {
    let (_redis, keyward) = support::redis_and_keyward();
    let (status, headers, html) = support::http_get_full(keyward.admin_port, "/");
    assert_eq!(status, 200);
    let headers = headers.to_ascii_lowercase();
    assert!(headers.contains("content-type: text/html"), "{headers}");
    assert!(
        headers.contains("content-security-policy: default-src 'none'"),
        "{headers}"
    );
    for asset in ["/page.js", "/page.css"] {
        assert!(
            html.contains(&format!("\"{}\"", &asset[1..])),
            "{asset} in the page"
        );
        let (status, body) = http_get(keyward.admin_port, asset);
        assert_eq!(status, 200, "{asset}");
        for text in [&html, &body] {
            // The SVG namespace is a name, not an address anything is fetched from.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{asset} names another site"
            );
        }
    }
    assert_eq!(http_get(keyward.admin_port, "/page.jsx").0, 404);
    let (status, body) = http_get(keyward.admin_port, "/overview");
    assert_eq!(status, 200);
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(overview["info"]["upstream"]["up"], true, "{overview}");
    assert_eq!(
        overview["hotkey_windows"],
        serde_json::Value::Null,
        "hot keys are off"
    );
}
