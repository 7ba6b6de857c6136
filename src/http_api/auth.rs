//! Who is calling: the token a request carries, as `Authorization: Bearer <token>` (what
//! `@upstash/redis` sends) or as `?_token=<token>` (for tools that cannot set headers).

use crate::secret;

/// One configured caller.
pub struct Token {
    /// Labels metrics, and names the caller's sessions (`CLIENT SETNAME`).
    pub name: String,
    secret: String,
    /// Only reads are let through.
    pub read_only: bool,
}

/// Every configured caller, in the file's order.
pub struct Tokens(Vec<Token>);

impl Tokens {
    /// `(name, secret, read_only)` for each token.
    pub fn new(tokens: impl IntoIterator<Item = (String, String, bool)>) -> Tokens {
        Tokens(
            tokens
                .into_iter()
                .map(|(name, secret, read_only)| Token {
                    name,
                    secret,
                    read_only,
                })
                .collect(),
        )
    }

    /// The caller whose token the request carries, in its `Authorization` header or its query
    /// string. Every token is compared, each in constant time, so the time taken tells nothing
    /// about which one came close.
    pub fn caller(&self, authorization: Option<&[u8]>, query: Option<&str>) -> Option<&Token> {
        let from_header = authorization.and_then(|value| value.strip_prefix(b"Bearer "));
        let from_query = query.and_then(|query| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == "_token")
                .map(|(_, value)| value.into_owned())
        });
        let given = from_header
            .or(from_query.as_deref().map(str::as_bytes))
            .unwrap_or_default();
        self.0.iter().fold(None, |found, token| {
            let matches = secret::same(given, token.secret.as_bytes());
            found.or(matches.then_some(token))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new([
            ("web".to_string(), "s3cret".to_string(), false),
            ("reports".to_string(), "r3ad".to_string(), true),
        ])
    }

    fn caller_name(authorization: Option<&[u8]>, query: Option<&str>) -> Option<String> {
        tokens()
            .caller(authorization, query)
            .map(|token| token.name.clone())
    }

    #[test]
    fn finds_the_caller_by_header_or_query() {
        assert_eq!(
            caller_name(Some(b"Bearer s3cret"), None).as_deref(),
            Some("web")
        );
        assert_eq!(
            caller_name(None, Some("_token=r3ad")).as_deref(),
            Some("reports")
        );
        assert_eq!(
            caller_name(None, Some("a=1&_token=s3cre%74")).as_deref(),
            Some("web"),
            "query values are decoded"
        );
    }

    #[test]
    fn refuses_what_is_not_exactly_a_token() {
        for (authorization, query) in [
            (None, None),
            (Some(&b"Bearer s3cre"[..]), None),
            (Some(b"Bearer s3cret "), None),
            (Some(b"s3cret"), None),
            (Some(b"Basic s3cret"), None),
            (Some(b"Bearer "), None),
            (None, Some("_token=")),
            (None, Some("token=s3cret")),
        ] {
            assert_eq!(
                caller_name(authorization, query),
                None,
                "{authorization:?} {query:?}"
            );
        }
    }
}
