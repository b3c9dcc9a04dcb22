//! Physical paths of replicas, derived from the repository id.
//!
//! Every replica of a repository lives at the same path on every storage:
//! `@cluster/repositories/<h0>/<h1>/<id>` where `h = hex(sha256(decimal id))` and
//! `h0`, `h1` are its first two bytes. Object pools (relative paths shaped like Rails'
//! `@pools/xx/yy/<64 hex>.git`) get `@cluster/pools/...` so that housekeeping never
//! prunes them. Ids are never reused, so a path is never reused either: leftovers of
//! a failed creation or deletion cannot collide with live data, and a rename changes
//! metadata only.

use std::fmt;

use sha2::{Digest, Sha256};

/// A replica path such as `@cluster/repositories/6b/86/1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaPath(String);

impl ReplicaPath {
    /// The path of repository `id` whose client-visible path is `relative_path`.
    pub fn derive(id: i64, relative_path: &str) -> ReplicaPath {
        let hash = hex::encode(Sha256::digest(id.to_string().as_bytes()));
        let prefix = if is_pool_path(relative_path) {
            "@cluster/pools"
        } else {
            "@cluster/repositories"
        };
        ReplicaPath(format!("{prefix}/{}/{}/{id}", &hash[0..2], &hash[2..4]))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True for Rails' object pool paths `@pools/xx/yy/<hash>.git`, where `<hash>` is 64
/// lower-case hex digits starting with `xxyy`.
pub fn is_pool_path(relative_path: &str) -> bool {
    let parts: Vec<&str> = relative_path.split('/').collect();
    let [root, h0, h1, name] = parts.as_slice() else {
        return false;
    };
    let Some(hash) = name.strip_suffix(".git") else {
        return false;
    };
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    *root == "@pools"
        && hash.len() == 64
        && lower_hex(hash)
        && *h0 == &hash[0..2]
        && *h1 == &hash[2..4]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_hash_to_the_documented_paths() {
        assert_eq!(
            ReplicaPath::derive(1, "group/a.git").as_str(),
            "@cluster/repositories/6b/86/1"
        );
        assert_eq!(
            ReplicaPath::derive(2, "group/b.git").as_str(),
            "@cluster/repositories/d4/73/2"
        );
    }

    #[test]
    fn pools_get_their_own_prefix() {
        let hash = "d4735e3a265e16eee03f59718b9b5d03019c07d8b6c51f90da3a666eec13ab35";
        let pool = format!("@pools/d4/73/{hash}.git");
        assert!(is_pool_path(&pool));
        assert_eq!(
            ReplicaPath::derive(2, &pool).as_str(),
            "@cluster/pools/d4/73/2"
        );
    }

    #[test]
    fn near_misses_are_not_pools() {
        let hash = "d4735e3a265e16eee03f59718b9b5d03019c07d8b6c51f90da3a666eec13ab35";
        for path in [
            format!("@pools/aa/73/{hash}.git"),
            format!("@pools/d4/73/{hash}"),
            format!("pools/d4/73/{hash}.git"),
            format!("@pools/d4/73/{}.git", hash.to_uppercase()),
            "@pools/d4/73/short.git".to_owned(),
            format!("@pools/d4/73/x/{hash}.git"),
        ] {
            assert!(!is_pool_path(&path), "{path}");
        }
    }
}
