//! The rules a client-chosen relative path must follow, shared by every service that
//! accepts one, so the router can never create or rename to a path a storage node
//! would refuse.
//!
//! [`check_storage_path`] holds the string rules a storage node applies to any path
//! it is given (the node adds its own check that symlinks do not lead out of the
//! storage). [`check_client_path`] adds what only a cluster-facing service can know:
//! replica paths (`@cluster/…`) and the nodes' internal directory (`+gitcluster…`)
//! are ours, and a path has a length cap, so an oversized path is refused before any
//! replica or metadata row is made for it.

/// Name of the internal directory at the root of every storage.
pub const INTERNAL_DIR: &str = "+gitcluster";

/// Prefix of the replica paths the router assigns (`@cluster/repositories/…`).
pub const REPLICA_PREFIX: &str = "@cluster/";

/// Longest relative path a client may choose, in bytes (Linux's PATH_MAX is 4096,
/// and the storage root comes in front of it).
pub const MAX_CLIENT_PATH_BYTES: usize = 1024;

/// Why a relative path was refused; every variant becomes `InvalidArgument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathRuleError {
    /// The path is empty.
    #[error("relative path is empty")]
    Empty,
    /// The path starts with `/`.
    #[error("relative path must not be absolute")]
    Absolute,
    /// A `.` or `..` component.
    #[error("relative path must not contain '.' or '..' components")]
    DotComponent,
    /// `a//b` or a trailing `/`.
    #[error("relative path must not contain empty components")]
    EmptyComponent,
    /// NUL, a newline or another control character.
    #[error("relative path must not contain control characters")]
    ControlChar,
    /// A backslash.
    #[error("relative path must not contain backslashes")]
    Backslash,
    /// The path addresses a storage's internal directory.
    #[error("relative path must not start with +gitcluster")]
    Internal,
    /// The path looks like a replica path the router assigns.
    #[error("relative path must not start with @cluster/ (reserved for replica paths)")]
    Reserved,
    /// Longer than [`MAX_CLIENT_PATH_BYTES`].
    #[error("relative path is longer than {MAX_CLIENT_PATH_BYTES} bytes")]
    TooLong,
}

/// The string rules of a storage node: non-empty, relative, no control characters,
/// no backslashes, no empty, `.` or `..` components, not under [`INTERNAL_DIR`].
pub fn check_storage_path(rel: &str) -> Result<(), PathRuleError> {
    if rel.is_empty() {
        return Err(PathRuleError::Empty);
    }
    if rel.starts_with('/') {
        return Err(PathRuleError::Absolute);
    }
    if rel.chars().any(char::is_control) {
        return Err(PathRuleError::ControlChar);
    }
    if rel.contains('\\') {
        return Err(PathRuleError::Backslash);
    }
    for (i, component) in rel.split('/').enumerate() {
        match component {
            "" => return Err(PathRuleError::EmptyComponent),
            "." | ".." => return Err(PathRuleError::DotComponent),
            c if i == 0 && c.starts_with(INTERNAL_DIR) => return Err(PathRuleError::Internal),
            _ => {}
        }
    }
    Ok(())
}

/// The rules for a path a client names through the cluster: the length cap first
/// (so a huge path costs nothing more), then [`check_storage_path`], then the
/// reserved replica prefix.
pub fn check_client_path(rel: &str) -> Result<(), PathRuleError> {
    if rel.len() > MAX_CLIENT_PATH_BYTES {
        return Err(PathRuleError::TooLong);
    }
    check_storage_path(rel)?;
    if rel.starts_with(REPLICA_PREFIX) {
        return Err(PathRuleError::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_a_node_would_refuse_or_that_are_ours_are_refused() {
        let long = "a".repeat(MAX_CLIENT_PATH_BYTES + 1);
        let cases: [(&str, PathRuleError); 13] = [
            ("", PathRuleError::Empty),
            ("../../../etc/cron.d/x", PathRuleError::DotComponent),
            ("a/./b.git", PathRuleError::DotComponent),
            ("/abs.git", PathRuleError::Absolute),
            ("a//b.git", PathRuleError::EmptyComponent),
            ("x.git/", PathRuleError::EmptyComponent),
            ("a\\b.git", PathRuleError::Backslash),
            ("new\nline.git", PathRuleError::ControlChar),
            ("nul\0.git", PathRuleError::ControlChar),
            ("+gitcluster/tmp/x", PathRuleError::Internal),
            ("+gitclusterx", PathRuleError::Internal),
            ("@cluster/repositories/6b/86/1", PathRuleError::Reserved),
            (long.as_str(), PathRuleError::TooLong),
        ];
        for (path, want) in cases {
            assert_eq!(check_client_path(path), Err(want), "{path:?}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "group/project.git",
            "a/+gitcluster/b.git",
            "cluster/x.git",
            "@clusterish.git",
            "ünïcode/名前.git",
        ] {
            assert_eq!(check_client_path(path), Ok(()), "{path:?}");
        }
        assert_eq!(check_storage_path("@cluster/repositories/1"), Ok(()));
    }
}
