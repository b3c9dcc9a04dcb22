//! Error answers git can show its user.
//!
//! git prints nothing of an HTTP error body: a push during an outage says only "HTTP
//! 503" and "the remote end hung up". But git reads an `ERR <reason>` pkt-line (and a
//! side-band error message, band 3) in a smart-HTTP answer and prints it as "remote
//! error: <reason>". So, as GitLab does, a request from git (User-Agent `git/…`) that
//! fails before any output is answered 200 with the smart-HTTP content type and the
//! reason in git's own framing; other clients keep the HTTP status and the plain-text
//! line. 401 (git asks for credentials) and 404 (git says "repository not found") stay
//! HTTP statuses for git too: git already handles those well.

use axum::body::Body;
use axum::response::Response;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::route::GitService;

/// Whether the client said it is git (`User-Agent: git/2.43.0`).
pub(crate) fn is_git(headers: &HeaderMap) -> bool {
    headers
        .get(header::USER_AGENT)
        .is_some_and(|ua| ua.as_bytes().starts_with(b"git/"))
}

/// Where in the protocol an error answer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `GET info/refs`: the advertisement.
    Advertisement,
    /// A `POST` whose client asked for side-band output: a band-3 message.
    SidebandResult,
    /// A `POST` without side-band (or not yet known): an `ERR` pkt-line.
    Result,
}

/// The side-band choice of a `POST` error response, when the request body showed it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sideband(pub(crate) bool);

/// Longest reason put in a pkt-line; git's limit is 65516, a terminal line is enough.
const MAX_REASON: usize = 1000;

/// Rewrites `response` for git if it is an error git would not show (see module doc).
pub(crate) async fn for_git(response: Response, service: GitService, answer: Answer) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::NOT_FOUND
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(text) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let reason = String::from_utf8_lossy(&text);
    let mut reason = reason.trim().replace(['\n', '\r'], " ");
    if reason.is_empty() {
        reason = status.to_string();
    }
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let (kind, body) = match answer {
        Answer::Advertisement => (
            "advertisement",
            pkt_line(format!("ERR {reason}\n").as_bytes()),
        ),
        Answer::Result => ("result", pkt_line(format!("ERR {reason}\n").as_bytes())),
        Answer::SidebandResult => {
            let mut message = vec![3u8];
            message.extend_from_slice(format!("{reason}\n").as_bytes());
            let mut body = BytesMut::from(&pkt_line(&message)[..]);
            body.put_slice(b"0000");
            ("result", body.freeze())
        }
    };
    let mut out = Response::new(Body::from(body));
    let content_type = format!("application/x-{}-{kind}", service.name());
    let headers = out.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // A refused body was not read to its end: the connection cannot be reused.
    if let Some(close) = parts.headers.get(header::CONNECTION) {
        headers.insert(header::CONNECTION, close.clone());
    }
    // The real status stays visible to logs and the requests metric's readers.
    if let Ok(v) = HeaderValue::from_str(status.as_str()) {
        headers.insert("x-gitcluster-status", v);
    }
    *out.extensions_mut() = parts.extensions;
    out
}

fn pkt_line(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    out.put_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::plain;

    async fn body(r: Response) -> Vec<u8> {
        axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body")
            .to_vec()
    }

    #[tokio::test]
    async fn errors_become_err_packets_or_band_3_and_401_404_stay() {
        let r = for_git(
            plain(StatusCode::SERVICE_UNAVAILABLE, "primary is down"),
            GitService::ReceivePack,
            Answer::Advertisement,
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/x-git-receive-pack-advertisement"
        );
        assert_eq!(body(r).await, b"0018ERR primary is down\n");

        let r = for_git(
            plain(StatusCode::BAD_REQUEST, "bad"),
            GitService::ReceivePack,
            Answer::SidebandResult,
        )
        .await;
        assert_eq!(body(r).await, b"0009\x03bad\n0000");

        for status in [
            StatusCode::UNAUTHORIZED,
            StatusCode::NOT_FOUND,
            StatusCode::OK,
        ] {
            let r = for_git(plain(status, "x"), GitService::UploadPack, Answer::Result).await;
            assert_eq!(r.status(), status);
        }
    }
}
