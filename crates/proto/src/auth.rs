//! Shared-secret token auth between gitcluster components.
//!
//! Clients send `authorization: Bearer <token>`. A server with a token configured
//! rejects a missing token with Unauthenticated and a wrong one with PermissionDenied.
//! In *transitioning* mode (seed 002, used to rotate tokens without downtime) every
//! request is accepted, and the outcome it would have had is counted in
//! `gitcluster_authentications_total{enforced="false",status=...}` so an operator can
//! see when every client has the new token before enforcing it again.

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Metric counting authentication outcomes, labelled `enforced` and `status`.
pub const AUTH_METRIC: &str = "gitcluster_authentications_total";

/// Server-side token check, usable as a tonic interceptor.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    token: Option<Arc<str>>,
    transitioning: bool,
}

impl TokenAuth {
    /// A check for `token`; `None` (or an empty token) disables auth entirely.
    pub fn new(token: Option<String>, transitioning: bool) -> Self {
        TokenAuth {
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
            transitioning,
        }
    }

    /// Checks request metadata: Ok when the request may proceed.
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        self.check_headers(metadata.as_ref())
    }

    /// [`TokenAuth::check`] on raw HTTP/2 headers (for handlers below tonic's codec).
    pub fn check_headers(&self, headers: &http::HeaderMap) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let (status, error) = match presented {
            None => (
                "unauthenticated",
                Status::unauthenticated("authentication required: missing bearer token"),
            ),
            Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => {
                ("ok", Status::ok(""))
            }
            Some(_) => (
                "denied",
                Status::permission_denied("authentication failed: wrong token"),
            ),
        };
        let enforced = !self.transitioning;
        let label = match (enforced, status) {
            (false, "ok") => "would be ok",
            (_, s) => s,
        };
        let enforced_label = if enforced { "true" } else { "false" };
        metrics::counter!(AUTH_METRIC, "enforced" => enforced_label, "status" => label)
            .increment(1);
        if status == "ok" || !enforced {
            Ok(())
        } else {
            Err(error)
        }
    }
}

impl Interceptor for TokenAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

/// Client-side interceptor that adds the bearer token to every call.
#[derive(Clone, Debug)]
pub struct BearerToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl BearerToken {
    /// Adds `token` to each request; `None` sends none. Fails on a token that is not
    /// valid in an HTTP header.
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let header = match token.filter(|t| !t.is_empty()) {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                anyhow::anyhow!("token contains characters not allowed in a header")
            })?),
            None => None,
        };
        Ok(BearerToken { header })
    }

    /// The `authorization` header value this adds (`Bearer <token>`), for callers
    /// that build HTTP/2 requests below tonic; `None` when no token is sent.
    pub fn header_value(&self) -> Option<http::HeaderValue> {
        self.header
            .as_ref()
            .and_then(|h| http::HeaderValue::from_bytes(h.as_encoded_bytes()).ok())
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

/// Checks that `token` can be a shared secret on the wire: non-empty and only visible
/// ASCII (`!` to `~`), so it survives an HTTP header, a `Bearer` prefix and Basic auth
/// unchanged. Whitespace is refused too: a secret with a stray space or newline from a
/// file or an environment variable would silently never match.
pub fn validate_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("token is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("token must be visible ASCII without whitespace or control characters");
    }
    Ok(())
}

/// Compares secrets without leaking the position of the first difference through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(token: Option<&str>) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        if let Some(t) = token {
            m.insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        m
    }

    #[test]
    fn bearer_header_value_is_what_the_interceptor_sends() {
        let token = BearerToken::new(Some("s3cret")).expect("token");
        assert_eq!(
            token.header_value().expect("header").to_str().ok(),
            Some("Bearer s3cret")
        );
        assert!(
            BearerToken::new(None)
                .expect("none")
                .header_value()
                .is_none()
        );
        assert!(
            BearerToken::new(Some(""))
                .expect("empty")
                .header_value()
                .is_none()
        );
    }

    #[test]
    fn enforced_token_distinguishes_missing_and_wrong() {
        let auth = TokenAuth::new(Some("s3cret".into()), false);
        assert!(auth.check(&md(Some("s3cret"))).is_ok());
        assert_eq!(
            auth.check(&md(None)).expect_err("missing").code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.check(&md(Some("nope"))).expect_err("wrong").code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn transitioning_accepts_everything_and_no_token_disables_auth() {
        let auth = TokenAuth::new(Some("s3cret".into()), true);
        assert!(auth.check(&md(None)).is_ok());
        assert!(auth.check(&md(Some("nope"))).is_ok());
        let open = TokenAuth::new(Some(String::new()), false);
        assert!(open.check(&md(None)).is_ok());
    }
}
