//! Who may do what over HTTP. Reading keyward's state is open to whoever reaches the admin
//! port; changing keyward, or reading the applications' secrets (lock holder tokens), needs
//! the admin token, or the machine itself when no token is configured.

use std::net::SocketAddr;

use hyper::StatusCode;

use crate::secret;

/// Who sent a request, and the admin token: what changes keyward from other hosts, or reads
/// the applications' secrets, needs it.
pub struct Caller<'a> {
    pub peer: SocketAddr,
    pub token: Option<&'a str>,
}

impl Caller<'_> {
    /// Whether a request that changes keyward is let through: from the machine itself always;
    /// from elsewhere only with the configured token.
    pub fn may_change(
        &self,
        authorization: Option<&[u8]>,
    ) -> Result<(), (StatusCode, &'static str)> {
        if self.peer.ip().to_canonical().is_loopback() {
            return Ok(());
        }
        let Some(token) = self.token else {
            return Err((
                StatusCode::FORBIDDEN,
                "accepted from localhost only, unless [admin] token_env is set\n",
            ));
        };
        if carries(authorization, token) {
            Ok(())
        } else {
            Err((
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <the token in [admin] token_env>\n",
            ))
        }
    }

    /// Whether a request may read the applications' secrets (lock holder tokens): with a
    /// configured token, only when it carries it, wherever it comes from; without one, from
    /// the machine itself only, as with `POST /reload`.
    pub fn may_read_secrets(&self, authorization: Option<&[u8]>) -> bool {
        match self.token {
            Some(token) => carries(authorization, token),
            None => self.peer.ip().to_canonical().is_loopback(),
        }
    }
}

/// Whether an `Authorization` header is `Bearer <token>`, compared in constant time.
fn carries(authorization: Option<&[u8]>, token: &str) -> bool {
    let given = authorization
        .and_then(|value| value.strip_prefix(b"Bearer "))
        .unwrap_or_default();
    secret::same(given, token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(ip: [u8; 4], token: Option<&str>) -> Caller<'_> {
        Caller {
            peer: SocketAddr::from((ip, 40000)),
            token,
        }
    }

    #[test]
    fn changes_need_localhost_or_the_token() {
        let status = |result: Result<(), (StatusCode, &str)>| result.err().map(|(code, _)| code);
        assert_eq!(status(caller([127, 0, 0, 1], None).may_change(None)), None);
        let remote = [10, 1, 2, 3];
        assert_eq!(
            status(caller(remote, None).may_change(Some(b"Bearer anything"))),
            Some(StatusCode::FORBIDDEN)
        );
        let with_token = caller(remote, Some("s3cret"));
        assert_eq!(status(with_token.may_change(Some(b"Bearer s3cret"))), None);
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret!",
            b"s3cret",
            b"Basic s3cret",
        ] {
            assert_eq!(
                status(with_token.may_change(Some(wrong))),
                Some(StatusCode::UNAUTHORIZED)
            );
        }
        assert_eq!(
            status(with_token.may_change(None)),
            Some(StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn secrets_need_the_token_once_there_is_one() {
        assert!(caller([127, 0, 0, 1], None).may_read_secrets(None));
        assert!(!caller([10, 1, 2, 3], None).may_read_secrets(Some(b"Bearer anything")));
        for ip in [[127, 0, 0, 1], [10, 1, 2, 3]] {
            let with_token = caller(ip, Some("s3cret"));
            assert!(with_token.may_read_secrets(Some(b"Bearer s3cret")));
            assert!(!with_token.may_read_secrets(Some(b"Bearer s3cre")));
            assert!(!with_token.may_read_secrets(None));
        }
    }
}
