//! The admin page at `/`: an HTML document, its script and its style sheet, built into the
//! binary so the page works offline and behind any firewall; nothing is fetched from
//! elsewhere, which the Content-Security-Policy header enforces in the browser.
//!
//! The page polls `/overview` and the list endpoints once a second while it is visible, and
//! turns successive totals into rates, latency percentiles and small charts in the browser:
//! keyward keeps no history and does no work for the page while nobody looks at it. It only
//! reads: nothing on it changes keyward.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

/// A file of the page.
pub struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const ASSETS: [(&str, Asset); 3] = [
    (
        "/",
        Asset {
            body: include_str!("page/index.html"),
            content_type: "text/html; charset=utf-8",
        },
    ),
    (
        "/page.js",
        Asset {
            body: include_str!("page/page.js"),
            content_type: "text/javascript; charset=utf-8",
        },
    ),
    (
        "/page.css",
        Asset {
            body: include_str!("page/page.css"),
            content_type: "text/css; charset=utf-8",
        },
    ),
];

/// Scripts, styles and data from keyward's own origin only; no frames around the page.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The page's file at `path`, if there is one.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS
        .iter()
        .find(|(at, _)| *at == path)
        .map(|(_, asset)| asset)
}

pub fn serve(asset: &Asset) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(asset.body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // A new keyward may serve a new page: the browser asks again rather than mix versions.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}
