//! The reference state of a repository, read straight from the files backend: every
//! reference with its value (an object id, or `ref: <target>` for a symbolic one)
//! and HEAD's content.
//!
//! Mutators take a [`RefState`] before and after their write and report whether the
//! digests differ ([`gitcluster_proto::REFS_CHANGED_TRAILER`]); a conditional
//! removal asks [`RefState::is_pristine`]. Reading the files costs microseconds for a
//! typical repository where `git for-each-ref` costs a process (~2 ms) per read.
//!
//! Loose references override packed ones, as in git. Loose references are read
//! before `packed-refs`: `git pack-refs` writes `packed-refs` first and then deletes
//! the loose files, so in this order a concurrent pack is never seen as a missing
//! reference. Only the reftable backend is not understood; reading such a repository
//! fails, and callers then assume a change (never the reverse).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;

use sha1::{Digest as _, Sha1};
use tonic::Status;

/// A digest of every reference and HEAD, plus whether any reference exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefState {
    digest: [u8; 20],
    refs: usize,
    head: String,
}

impl RefState {
    /// Reads the state of the bare repository at `repo` (blocking file I/O).
    pub fn read(repo: &Path) -> std::io::Result<RefState> {
        if uses_reftable(repo)? {
            return Err(std::io::Error::other(
                "reftable repositories are not supported",
            ));
        }
        let head = std::fs::read_to_string(repo.join("HEAD"))?
            .trim()
            .to_owned();
        let mut digest = entry_digest("HEAD", &head);
        let mut loose = HashMap::new();
        read_loose(repo, "refs", &mut loose)?;
        let mut refs = loose.len();
        for (name, value) in &loose {
            xor(&mut digest, &entry_digest(name, value));
        }
        match std::fs::File::open(repo.join("packed-refs")) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line?;
                    // `# pack-refs with: ...` header and `^<oid>` peeled values of the
                    // tag above carry nothing the reference itself does not.
                    if line.starts_with('#') || line.starts_with('^') {
                        continue;
                    }
                    let Some((oid, name)) = line.split_once(' ') else {
                        continue;
                    };
                    if loose.contains_key(name) {
                        continue;
                    }
                    refs += 1;
                    xor(&mut digest, &entry_digest(name, oid));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(RefState { digest, refs, head })
    }

    /// [`RefState::read`] on a blocking thread; failures are `Internal`.
    pub async fn load(repo: &Path) -> Result<RefState, Status> {
        let repo = repo.to_path_buf();
        tokio::task::spawn_blocking(move || RefState::read(&repo))
            .await
            .map_err(|e| Status::internal(format!("read references task: {e}")))?
            .map_err(|e| Status::internal(format!("read references: {e}")))
    }

    /// A digest of every reference (name and value) and of HEAD: equal digests mean
    /// equal references (to the strength of SHA-1 XOR, as for the checksum).
    pub fn digest(&self) -> [u8; 20] {
        self.digest
    }

    /// True while the repository is as `git init` left it: no reference at all and
    /// HEAD symbolic (so necessarily unborn).
    pub fn is_pristine(&self) -> bool {
        self.refs == 0 && self.head.starts_with("ref: ")
    }

    /// Why the repository is not pristine, in one line; `None` when it is.
    pub fn why_not_pristine(&self) -> Option<String> {
        if self.refs > 0 {
            Some(format!("repository has {} reference(s)", self.refs))
        } else if !self.head.starts_with("ref: ") {
            Some("HEAD is detached".to_owned())
        } else {
            None
        }
    }
}

/// `"1"` when `before` and `after` differ or either could not be read, `"0"` when
/// both were read and are equal: the value of [`gitcluster_proto::REFS_CHANGED_TRAILER`].
pub fn changed_value(
    before: &Result<RefState, Status>,
    after: &Result<RefState, Status>,
) -> &'static str {
    match (before, after) {
        (Ok(b), Ok(a)) if b.digest == a.digest => "0",
        _ => "1",
    }
}

fn uses_reftable(repo: &Path) -> std::io::Result<bool> {
    // `[extensions] refStorage = reftable`; any mention is enough to refuse, since a
    // wrong "unchanged" is the one answer that must never be given.
    let config = match std::fs::read_to_string(repo.join("config")) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(config.to_ascii_lowercase().contains("reftable"))
}

fn read_loose(repo: &Path, dir: &str, out: &mut HashMap<String, String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(repo.join(dir)) {
        Ok(e) => e,
        // Removed by a concurrent ref deletion pruning empty directories.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Lock files of writes in progress are not references (no ref name may end
        // in `.lock`).
        if name.ends_with(".lock") {
            continue;
        }
        let full = format!("{dir}/{name}");
        let ty = entry.file_type()?;
        if ty.is_dir() {
            read_loose(repo, &full, out)?;
        } else if ty.is_file() {
            match std::fs::read_to_string(entry.path()) {
                Ok(value) => {
                    out.insert(full, value.trim().to_owned());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn entry_digest(name: &str, value: &str) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    h.finalize().into()
}

fn xor(acc: &mut [u8; 20], other: &[u8; 20]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, content: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn packed_and_loose_forms_of_one_state_have_one_digest() {
        let loose = tempfile::tempdir().expect("tempdir");
        write(loose.path(), "HEAD", "ref: refs/heads/main\n");
        write(loose.path(), "refs/heads/main", &format!("{A}\n"));
        write(loose.path(), "refs/tags/v1", &format!("{B}\n"));
        write(loose.path(), "refs/heads/main.lock", &format!("{B}\n"));

        let packed = tempfile::tempdir().expect("tempdir");
        write(packed.path(), "HEAD", "ref: refs/heads/main\n");
        write(
            packed.path(),
            "packed-refs",
            &format!(
                "# pack-refs with: peeled fully-peeled sorted \n{A} refs/heads/main\n{B} refs/tags/v1\n^{A}\n"
            ),
        );
        // A stale packed value overridden by a loose one.
        write(packed.path(), "refs/heads/main", &format!("{A}\n"));

        let l = RefState::read(loose.path()).expect("read loose");
        let p = RefState::read(packed.path()).expect("read packed");
        assert_eq!(l.digest(), p.digest());
        assert!(!l.is_pristine());

        write(packed.path(), "refs/heads/main", &format!("{B}\n"));
        assert_ne!(
            RefState::read(packed.path()).expect("read").digest(),
            l.digest()
        );
    }

    #[test]
    fn head_counts_and_a_fresh_repository_is_pristine() {
        let d = tempfile::tempdir().expect("tempdir");
        write(d.path(), "HEAD", "ref: refs/heads/main\n");
        std::fs::create_dir_all(d.path().join("refs/heads")).expect("mkdir");
        let fresh = RefState::read(d.path()).expect("read");
        assert!(fresh.is_pristine());
        assert_eq!(fresh.why_not_pristine(), None);
        write(d.path(), "HEAD", "ref: refs/heads/other\n");
        let moved = RefState::read(d.path()).expect("read");
        assert_ne!(fresh.digest(), moved.digest());
        write(d.path(), "HEAD", &format!("{A}\n"));
        let detached = RefState::read(d.path()).expect("read");
        assert!(!detached.is_pristine());
        assert_eq!(
            detached.why_not_pristine().as_deref(),
            Some("HEAD is detached")
        );
    }

    #[test]
    fn an_unreadable_side_counts_as_changed() {
        let d = tempfile::tempdir().expect("tempdir");
        write(d.path(), "HEAD", "ref: refs/heads/main\n");
        let s = RefState::read(d.path()).expect("read");
        assert_eq!(changed_value(&Ok(s.clone()), &Ok(s.clone())), "0");
        assert_eq!(changed_value(&Err(Status::internal("x")), &Ok(s)), "1");
    }
}
