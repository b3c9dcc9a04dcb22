//! Authentication of git clients.
//!
//! With a token configured, a request must carry `Authorization: Bearer <token>` or
//! `Authorization: Basic base64(<any user>:<token>)`. Basic exists because that is what
//! `git` sends for `http://user:token@host/...` URLs and credential helpers: git only
//! sends credentials after a 401 carrying `WWW-Authenticate: Basic`, so both a missing
//! and a wrong token answer 401 (git then retries with, or prompts for, credentials;
//! a 403 would make it give up without asking).

use base64::Engine as _;
use gitcluster_proto::auth::constant_time_eq;

/// The challenge sent with every 401.
pub const CHALLENGE: &str = "Basic realm=\"gitcluster\"";

/// Outcome of checking one request's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Credentials match the configured token.
    Accepted,
    /// No `Authorization` header.
    Missing,
    /// A header that is malformed or carries the wrong token.
    Rejected,
}

/// The token git clients must present.
#[derive(Clone)]
pub struct ClientAuth {
    token: String,
}

impl ClientAuth {
    /// Requires `token` from every client.
    pub fn new(token: String) -> Self {
        ClientAuth { token }
    }

    /// Checks the raw `Authorization` header value, if any.
    pub fn check(&self, header: Option<&[u8]>) -> AuthOutcome {
        let Some(header) = header else {
            return AuthOutcome::Missing;
        };
        match presented_token(header) {
            Some(t) if constant_time_eq(&t, self.token.as_bytes()) => AuthOutcome::Accepted,
            _ => AuthOutcome::Rejected,
        }
    }
}

/// The secret in an `Authorization` header: the Bearer token, or the password of Basic
/// credentials (the user name is ignored). `None` when the header cannot be parsed.
pub fn presented_token(header: &[u8]) -> Option<Vec<u8>> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = header.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.as_bytes().to_vec())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        Some(decoded[colon + 1..].to_vec())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn bearer_and_basic_with_any_user_are_accepted() {
        let auth = ClientAuth::new("s3cret".into());
        for header in [
            "Bearer s3cret".to_owned(),
            "bearer s3cret".to_owned(),
            basic("alice:s3cret"),
            basic(":s3cret"),
            basic("oauth2:s3cret"),
        ] {
            assert_eq!(
                auth.check(Some(header.as_bytes())),
                AuthOutcome::Accepted,
                "{header}"
            );
        }
    }

    #[test]
    fn missing_wrong_and_malformed_credentials_are_refused() {
        let auth = ClientAuth::new("s3cret".into());
        assert_eq!(auth.check(None), AuthOutcome::Missing);
        for header in [
            "Bearer wrong".to_owned(),
            "Bearer s3cret2".to_owned(),
            "Bearer".to_owned(),
            "s3cret".to_owned(),
            basic("s3cret"),
            basic("alice:wrong"),
            "Basic !!!not-base64".to_owned(),
            "Digest s3cret".to_owned(),
        ] {
            assert_eq!(
                auth.check(Some(header.as_bytes())),
                AuthOutcome::Rejected,
                "{header}"
            );
        }
        assert_eq!(auth.check(Some(b"Bearer \xff")), AuthOutcome::Rejected);
    }

    #[test]
    fn basic_password_may_contain_colons() {
        assert_eq!(
            presented_token(basic("u:a:b").as_bytes()),
            Some(b"a:b".to_vec())
        );
    }
}
