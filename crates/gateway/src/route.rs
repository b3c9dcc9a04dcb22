//! The gateway's URL scheme.
//!
//! `/<storage>/<relative_path>/info/refs?service=git-upload-pack|git-receive-pack` (GET)
//! and `/<storage>/<relative_path>/git-upload-pack|git-receive-pack` (POST). The first
//! segment names the (virtual) storage; everything up to the endpoint suffix is the
//! repository path relative to it. Paths are percent-decoded exactly once, then checked
//! for the obviously bad (traversal, empty segments, control characters); the storage
//! node validates again, so this is a first line of defence, not the only one.

use http::Method;

/// What a URL asks for, once the repository prefix is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET .../info/refs?service=...`: the reference advertisement.
    InfoRefs,
    /// `POST .../git-upload-pack`: a fetch negotiation.
    UploadPack,
    /// `POST .../git-receive-pack`: a push.
    ReceivePack,
}

impl Endpoint {
    /// The only method the endpoint accepts.
    pub fn method(self) -> Method {
        match self {
            Endpoint::InfoRefs => Method::GET,
            Endpoint::UploadPack | Endpoint::ReceivePack => Method::POST,
        }
    }

    /// [`Endpoint::method`] as a static string, for the `Allow` header of a 405.
    pub fn allow(self) -> &'static str {
        match self {
            Endpoint::InfoRefs => "GET",
            Endpoint::UploadPack | Endpoint::ReceivePack => "POST",
        }
    }
}

/// The two git services of smart HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitService {
    /// `git-upload-pack`: clone and fetch.
    UploadPack,
    /// `git-receive-pack`: push.
    ReceivePack,
}

impl GitService {
    /// The service's name on the wire, e.g. `git-upload-pack`.
    pub fn name(self) -> &'static str {
        match self {
            GitService::UploadPack => "git-upload-pack",
            GitService::ReceivePack => "git-receive-pack",
        }
    }
}

/// A repository as addressed by a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoPath {
    /// Storage name (a virtual storage behind the router).
    pub storage: String,
    /// Path relative to the storage, e.g. `group/project.git`.
    pub relative_path: String,
}

impl RepoPath {
    /// The repository message of the gRPC contracts.
    pub fn to_proto(&self) -> gitcluster_proto::v1::Repository {
        gitcluster_proto::v1::Repository {
            storage_name: self.storage.clone(),
            relative_path: self.relative_path.clone(),
        }
    }
}

/// Splits a raw (still percent-encoded) URL path into its repository prefix and
/// endpoint; `None` when the path names no smart-HTTP endpoint (404).
pub fn split_endpoint(path: &str) -> Option<(&str, Endpoint)> {
    let path = path.strip_prefix('/')?;
    [
        ("/info/refs", Endpoint::InfoRefs),
        ("/git-upload-pack", Endpoint::UploadPack),
        ("/git-receive-pack", Endpoint::ReceivePack),
    ]
    .into_iter()
    .find_map(|(suffix, endpoint)| path.strip_suffix(suffix).map(|prefix| (prefix, endpoint)))
}

/// Parses the repository prefix returned by [`split_endpoint`]; the error is a one-line
/// reason for a 400 response.
pub fn parse_repo(prefix: &str) -> Result<RepoPath, &'static str> {
    let decoded = percent_decode(prefix).ok_or("invalid percent-encoding in path")?;
    let decoded = String::from_utf8(decoded).map_err(|_| "path is not valid UTF-8")?;
    if decoded.chars().any(char::is_control) {
        return Err("path contains control characters");
    }
    let mut segments = decoded.split('/');
    let storage = segments.next().unwrap_or_default();
    if storage.is_empty() {
        return Err("empty storage name");
    }
    let rest: Vec<&str> = segments.collect();
    if rest.is_empty() {
        return Err("empty repository path");
    }
    for segment in std::iter::once(storage).chain(rest.iter().copied()) {
        match segment {
            "" => return Err("empty path segment"),
            "." | ".." => return Err("path traversal ('.' or '..' segment)"),
            _ => {}
        }
    }
    Ok(RepoPath {
        storage: storage.to_owned(),
        relative_path: rest.join("/"),
    })
}

/// Reads `service=` from the query string of an `info/refs` request.
pub fn parse_service(query: Option<&str>) -> Result<GitService, &'static str> {
    let value = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("service="))
        .ok_or("missing service parameter (only smart HTTP is supported)")?;
    match percent_decode(value).as_deref() {
        Some(b"git-upload-pack") => Ok(GitService::UploadPack),
        Some(b"git-receive-pack") => Ok(GitService::ReceivePack),
        _ => Err("unsupported service"),
    }
}

/// Decodes `%XX` escapes; `None` on a malformed escape. `+` stays `+` (paths, not forms).
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// `storage/relative_path`, how logs name a repository.
pub(crate) fn display(repo: &RepoPath) -> String {
    format!("{}/{}", repo.storage, repo.relative_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(storage: &str, path: &str) -> RepoPath {
        RepoPath {
            storage: storage.into(),
            relative_path: path.into(),
        }
    }

    #[test]
    fn endpoints_are_recognised_by_suffix() {
        assert_eq!(
            split_endpoint("/default/group/p.git/info/refs"),
            Some(("default/group/p.git", Endpoint::InfoRefs))
        );
        assert_eq!(
            split_endpoint("/default/p.git/git-upload-pack"),
            Some(("default/p.git", Endpoint::UploadPack))
        );
        assert_eq!(
            split_endpoint("/default/p.git/git-receive-pack"),
            Some(("default/p.git", Endpoint::ReceivePack))
        );
        assert_eq!(split_endpoint("/default/p.git/HEAD"), None);
        assert_eq!(split_endpoint("/default/p.git/git-upload-archive"), None);
        assert_eq!(split_endpoint("/"), None);
        assert_eq!(split_endpoint(""), None);
    }

    #[test]
    fn repository_paths_keep_slashes_after_the_storage() {
        assert_eq!(parse_repo("default/p.git"), Ok(repo("default", "p.git")));
        assert_eq!(
            parse_repo("default/a/b/c.git"),
            Ok(repo("default", "a/b/c.git"))
        );
        assert_eq!(
            parse_repo("default/with%20space.git"),
            Ok(repo("default", "with space.git"))
        );
        assert_eq!(
            parse_repo("default/a%2Fb.git"),
            Ok(repo("default", "a/b.git"))
        );
        assert_eq!(
            parse_repo("default/caf%C3%A9.git"),
            Ok(repo("default", "café.git"))
        );
    }

    #[test]
    fn obviously_bad_paths_are_rejected() {
        for (prefix, reason) in [
            ("", "empty storage name"),
            ("default", "empty repository path"),
            ("default/", "empty path segment"),
            ("default//p.git", "empty path segment"),
            ("/p.git", "empty storage name"),
            ("default/../p.git", "path traversal ('.' or '..' segment)"),
            ("default/a/..", "path traversal ('.' or '..' segment)"),
            ("default/./p.git", "path traversal ('.' or '..' segment)"),
            ("..", "empty repository path"),
            ("../x", "path traversal ('.' or '..' segment)"),
            ("default/a%2F..%2Fb", "path traversal ('.' or '..' segment)"),
            (
                "default/%2e%2e/p.git",
                "path traversal ('.' or '..' segment)",
            ),
            ("default/p%00.git", "path contains control characters"),
            ("default/p%0a.git", "path contains control characters"),
            ("default/p%7f.git", "path contains control characters"),
            ("default/p%zz.git", "invalid percent-encoding in path"),
            ("default/p%4", "invalid percent-encoding in path"),
            ("default/p%ff.git", "path is not valid UTF-8"),
        ] {
            assert_eq!(parse_repo(prefix), Err(reason), "{prefix:?}");
        }
    }

    #[test]
    fn service_parameter_selects_the_git_service() {
        assert_eq!(
            parse_service(Some("service=git-upload-pack")),
            Ok(GitService::UploadPack)
        );
        assert_eq!(
            parse_service(Some("x=1&service=git-receive-pack")),
            Ok(GitService::ReceivePack)
        );
        assert_eq!(
            parse_service(Some("service=git-upload-archive")),
            Err("unsupported service")
        );
        assert_eq!(parse_service(Some("service=")), Err("unsupported service"));
        assert!(parse_service(None).is_err());
        assert!(parse_service(Some("foo=bar")).is_err());
    }
}
