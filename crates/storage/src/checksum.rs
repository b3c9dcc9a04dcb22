//! The Gitaly-compatible repository checksum.
//!
//! Run `git show-ref --head`. Each output line is `<oid> <refname>`. Keep the lines
//! whose refname is `HEAD` or starts with `refs/heads/`, `refs/tags/`,
//! `refs/keep-around/`, `refs/merge-requests/`, `refs/environments/` or
//! `refs/notes/`. XOR together the SHA-1 of each kept line's bytes (without its
//! newline) and hex-encode the 20 bytes. A repository with no such reference has the
//! checksum of forty zeros. Two replicas with equal checksums have the same values
//! for every reference that matters; the order of references does not matter.

use sha1::{Digest, Sha1};

/// Reference prefixes included in the checksum.
pub const CHECKSUM_PREFIXES: &[&str] = &[
    "refs/heads/",
    "refs/tags/",
    "refs/keep-around/",
    "refs/merge-requests/",
    "refs/environments/",
    "refs/notes/",
];

/// The checksum of a repository without references.
pub const ZERO_CHECKSUM: &str = "0000000000000000000000000000000000000000";

/// Computes the checksum from `git show-ref --head` output.
pub fn checksum_of_show_ref(output: &[u8]) -> String {
    let mut acc = [0u8; 20];
    for line in output.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(space) = line.iter().position(|b| *b == b' ') else {
            continue;
        };
        let name = &line[space + 1..];
        let included = name == b"HEAD"
            || CHECKSUM_PREFIXES
                .iter()
                .any(|p| name.starts_with(p.as_bytes()));
        if !included {
            continue;
        }
        let digest = Sha1::digest(line);
        for (a, d) in acc.iter_mut().zip(digest.iter()) {
            *a ^= d;
        }
    }
    hex::encode(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent computation: hex strings XORed digit by digit through u128+u32.
    fn reference(lines: &[&str]) -> String {
        let mut hi: u128 = 0;
        let mut lo: u32 = 0;
        for l in lines {
            let h = hex::encode(Sha1::digest(l.as_bytes()));
            hi ^= u128::from_str_radix(&h[..32], 16).expect("hex");
            lo ^= u32::from_str_radix(&h[32..], 16).expect("hex");
        }
        format!("{hi:032x}{lo:08x}")
    }

    #[test]
    fn checksum_matches_an_independent_computation_and_filters_refs() {
        let a = "1111111111111111111111111111111111111111 HEAD";
        let b = "1111111111111111111111111111111111111111 refs/heads/main";
        let c = "2222222222222222222222222222222222222222 refs/tags/v1";
        let skipped = "3333333333333333333333333333333333333333 refs/remotes/origin/main";
        let out = format!("{a}\n{b}\n{skipped}\n{c}\n");
        assert_eq!(checksum_of_show_ref(out.as_bytes()), reference(&[a, b, c]));
        // Order does not matter.
        let shuffled = format!("{c}\n{a}\n{b}\n");
        assert_eq!(
            checksum_of_show_ref(shuffled.as_bytes()),
            reference(&[a, b, c])
        );
    }

    #[test]
    fn no_refs_is_forty_zeros() {
        assert_eq!(checksum_of_show_ref(b""), ZERO_CHECKSUM);
        assert_eq!(
            checksum_of_show_ref(b"3333333333333333333333333333333333333333 refs/remotes/x\n"),
            ZERO_CHECKSUM
        );
    }
}
