//! `[http_api]`: Upstash's REST API, for applications that reach Redis over HTTP only
//! (serverless and edge functions using `@upstash/redis`), and the checks its values need.

use std::collections::HashMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::diagnostic::{line_of, Diagnostic};
use super::{find_table_key, ListenTls};
use crate::resp;

/// Off unless the section is in the file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpApiConfig {
    pub address: SocketAddr,
    /// Who may call the endpoint: each request carries one of these tokens.
    pub tokens: Vec<HttpApiToken>,
    /// Serve HTTPS with this certificate, as `[listen] tls` does for RESP.
    pub tls: Option<ListenTls>,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        HttpApiConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 8079)),
            tokens: Vec::new(),
            tls: None,
        }
    }
}

/// `[[http_api.tokens]]`: one caller of the REST API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpApiToken {
    /// Labels the token's metrics, and is its sessions' client name (`CLIENT SETNAME`), which
    /// `bucket = "client"` rate limits and `clients` patterns of deny rules match.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The name of the environment variable holding the token, so the file holds no secret.
    pub token_env: String,
    /// Only commands Redis flags read-only (`KEYS` and `SCAN` excepted), `PING` and `ECHO`.
    #[serde(default)]
    pub read_only: bool,
}

/// What is wrong with the tokens: none at all, names that cannot be client names, names
/// given twice.
pub(super) fn check(config: &HttpApiConfig, text: &str, diagnostics: &mut Vec<Diagnostic>) {
    if config.tokens.is_empty() {
        diagnostics.push(Diagnostic::error(
            find_table_key(text, "http_api", "tokens")
                .or_else(|| table_header(text, "[http_api]"))
                .unwrap_or(0..0),
            "[http_api] needs at least one [[http_api.tokens]]: without one, no request is let in"
                .into(),
        ));
    }
    let mut names: HashMap<&str, &Spanned<String>> = HashMap::new();
    for token in &config.tokens {
        let name = &token.name;
        if name.get_ref().is_empty() || !resp::is_printable_name(name.get_ref().as_bytes()) {
            diagnostics.push(Diagnostic::error(
                name.span(),
                format!(
                    "token name {:?} must be a client name: not empty, no spaces, printable ASCII",
                    name.get_ref()
                ),
            ));
        }
        match names.get(name.get_ref().as_str()) {
            Some(first) => diagnostics.push(Diagnostic::error(
                name.span(),
                format!(
                    "duplicate token name {:?} (first defined at line {})",
                    name.get_ref(),
                    line_of(text, first.span().start)
                ),
            )),
            None => {
                names.insert(name.get_ref(), name);
            }
        }
    }
}

/// Where a line starts with `header`.
fn table_header(text: &str, header: &str) -> Option<std::ops::Range<usize>> {
    text.match_indices(header)
        .map(|(at, _)| at)
        .find(|&at| at == 0 || text[..at].ends_with('\n'))
        .map(|at| at..at + header.len())
}
