//! ReplicateRepository: make a repository on this node an exact mirror of one on
//! another node, pulling over gRPC (never a shared filesystem).
//!
//! 1. Ask the source for HEAD, config, attributes and custom hooks
//!    (`InternalService.GetRepositoryFiles`); a missing source is FailedPrecondition.
//! 2. When the target does not exist, build it in the temp dir (`git init --bare`
//!    with the source's object format); it is moved into place at the end with the
//!    same mkdir + rename step as CreateRepository, so a half-replicated repository
//!    is never visible.
//! 3. `git fetch --prune --atomic '+refs/*:refs/*'` from `ssh://gitcluster/source`,
//!    where the "ssh" command is this binary's `ssh-upload-pack` helper, which
//!    tunnels the session through `InternalService.SSHUploadPack` on the source.
//! 4. Write config (whole file, atomically), HEAD (`git symbolic-ref`),
//!    `info/attributes` (written or removed) and `custom_hooks/` (swapped whole).
//!    The config is not the source's file: it is the target's own layout keys
//!    (`core.repositoryformatversion`, `core.bare`, `core.filemode`, `extensions.*`)
//!    plus the source's keys on an allow-list ([`COPIED_KEYS`], [`COPIED_SECTIONS`]),
//!    read by git itself (`git config --file - --no-includes`) and written back in
//!    git's own syntax. A source can therefore never hand the target a program to
//!    run (`core.hooksPath`, `core.fsmonitor`, `core.sshCommand`, `include.path`,
//!    `uploadpack.packObjectsHook` and whatever git adds next).
//!
//! Everything built in the temp dir is held by a [`TempEntry`], so a replication
//! that fails, panics or is cancelled (its caller's deadline, a lost connection)
//! leaves no copy behind.
//!
//! Replications onto one target run one at a time (`crate::fence`), each from
//! step 1, so the last to finish carries the newest state it saw.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path};

use gitcluster_proto::v1::{
    GetRepositoryFilesRequest, GetRepositoryFilesResponse, ReplicateRepositoryRequest, Repository,
};
use tonic::Status;

use crate::fsops::{init_bare, io_status, move_into_place, sync_dir, temp_path};
use crate::internal::CUSTOM_HOOKS_DIR;
use crate::paths::{RepoPath, TempEntry};
use crate::peer::internal_client;
use crate::ssh::{ENV_ADDRESS, ENV_RELATIVE_PATH, ENV_STORAGE, ENV_TOKEN, SUBCOMMAND};
use crate::{NODE_ID_METADATA, Node};

/// The object format named in a repository config (`extensions.objectformat`).
pub fn object_format_of(config: &[u8]) -> &'static str {
    let text = String::from_utf8_lossy(config);
    let sha256 = text.lines().any(|l| {
        let compact: String = l
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        compact == "objectformat=sha256"
    });
    if sha256 { "sha256" } else { "sha1" }
}

/// Runs the replication described in the module doc.
pub async fn replicate(node: &Node, req: ReplicateRepositoryRequest) -> Result<(), Status> {
    let target = node.storages.locate(req.repository.as_ref())?;
    let source = req
        .source
        .ok_or_else(|| Status::invalid_argument("source repository is required"))?;
    if source.storage_name.is_empty() || source.relative_path.is_empty() {
        return Err(Status::invalid_argument("source repository is incomplete"));
    }
    if req.source_address.is_empty() {
        return Err(Status::invalid_argument("source address is required"));
    }
    // Everything below — reading the source, deciding fresh or in place, writing —
    // happens with no other replication onto this target in between (see `fence`).
    let _fenced = node.replicating.lock(&target.path).await;
    let mut client = internal_client(&req.source_address, node.token.as_deref()).await?;
    let response = client
        .get_repository_files(GetRepositoryFilesRequest {
            repository: Some(source.clone()),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => Status::failed_precondition("source repository not found"),
            // The source refusing our token is a configuration problem, not ours to retry;
            // passing its code through would read as if the caller's token were wrong.
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                Status::failed_precondition(format!(
                    "source rejected the internal token: {}",
                    s.message()
                ))
            }
            tonic::Code::InvalidArgument => {
                Status::invalid_argument(format!("source repository: {}", s.message()))
            }
            _ => Status::unavailable(format!("get source repository files: {}", s.message())),
        })?;
    let same_node = response
        .metadata()
        .get(NODE_ID_METADATA)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|id| id == node.id);
    if same_node && source.storage_name == target.storage && source.relative_path == target.relative
    {
        return Err(Status::invalid_argument(
            "source and target are the same repository",
        ));
    }
    let files = response.into_inner();

    // Dropping `fresh` (here, or with the whole call when it is cancelled) removes
    // whatever is left of the copy; after a successful move nothing is left.
    let fresh = if target.exists() {
        None
    } else {
        let tmp = TempEntry::new(temp_path(&target, "replicate"));
        init_bare(node, tmp.path(), "main", object_format_of(&files.config)).await?;
        Some(tmp)
    };
    let workdir = fresh
        .as_ref()
        .map_or_else(|| target.path.clone(), |t| t.path().to_path_buf());
    let result = async {
        fetch(node, &workdir, &req.source_address, &source).await?;
        write_files(node, &target, &workdir, &files).await?;
        if let Some(tmp) = &fresh {
            move_into_place(tmp.path(), &target, true).await?;
        }
        Ok(())
    }
    .await;
    let created = fresh.is_some();
    drop(fresh);
    if result.is_ok() {
        tracing::info!(
            storage = %target.storage,
            relative_path = %target.relative,
            source_address = %req.source_address,
            source_storage = %source.storage_name,
            created,
            "repository replicated"
        );
    }
    result
}

/// Quotes `s` for the shell git runs `GIT_SSH_COMMAND` with.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

async fn fetch(node: &Node, dir: &Path, address: &str, source: &Repository) -> Result<(), Status> {
    let helper = node
        .ssh_helper
        .to_str()
        .ok_or_else(|| Status::internal("ssh helper path is not utf-8"))?;
    let out = node
        .git
        .command(Some(dir))
        // Its own pool: a replication never waits behind client traffic (`crate::slots`).
        .slot_class(crate::slots::SlotClass::Replication)
        .args(["-c", "fetch.fsckObjects=false"])
        .args([
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--atomic",
            "--no-write-fetch-head",
        ])
        .args(["ssh://gitcluster/source", "+refs/*:refs/*"])
        .env(
            "GIT_SSH_COMMAND",
            format!("{} {SUBCOMMAND}", shell_quote(helper)),
        )
        .env("GIT_SSH_VARIANT", "ssh")
        .env(ENV_ADDRESS, address)
        .env(ENV_STORAGE, &source.storage_name)
        .env(ENV_RELATIVE_PATH, &source.relative_path)
        .env(ENV_TOKEN, node.token.as_deref().unwrap_or(""))
        .output(&[])
        .await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Status::internal(format!(
            "git fetch from source failed: {}",
            crate::git::last_line(&out.stderr)
        )))
    }
}

/// Writes `content` to `path` atomically: temp file in the same directory, fsync,
/// rename, fsync of the directory.
async fn write_atomic(path: &Path, content: &[u8], mode: Option<u32>) -> Result<(), Status> {
    let dir = path
        .parent()
        .ok_or_else(|| Status::internal("file has no parent"))?
        .to_path_buf();
    let path = path.to_path_buf();
    let content = content.to_vec();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write as _;
        std::fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        tmp.write_all(&content)?;
        tmp.as_file().sync_all()?;
        if let Some(m) = mode {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(m))?;
        } else {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        tmp.persist(&path).map_err(|e| e.error)?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(|e| Status::internal(format!("write task: {e}")))?
    .map_err(|e| io_status("write repository file", e))
}

/// A hook path from the source must be `custom_hooks/<plain components>`.
fn safe_hook_path(p: &str) -> Option<&Path> {
    let path = Path::new(p);
    let mut comps = path.components();
    if comps.next() != Some(Component::Normal(CUSTOM_HOOKS_DIR.as_ref())) {
        return None;
    }
    let rest: Vec<_> = comps.collect();
    if rest.is_empty() || !rest.iter().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(path)
}

/// Config keys (as `git config --list` spells them: section and key lowercase) a
/// replication copies from its source. An allow-list because many keys make git
/// run a program and every git release may add one.
pub const COPIED_KEYS: &[&str] = &["gitlab.fullpath"];

/// Config sections copied whole: names git gives no meaning to, kept for the
/// service's own use.
pub const COPIED_SECTIONS: &[&str] = &["gitcluster"];

/// Keys that describe the target's on-disk layout, set by `git init` on this node:
/// the target keeps its own and no source may change them.
fn is_layout_key(key: &str) -> bool {
    matches!(
        key,
        "core.repositoryformatversion" | "core.bare" | "core.filemode"
    ) || key.starts_with("extensions.")
}

fn is_copied_key(key: &str) -> bool {
    COPIED_KEYS.contains(&key)
        || key
            .split_once('.')
            .is_some_and(|(section, _)| COPIED_SECTIONS.contains(&section))
}

/// One config entry: the full key and its value (`None` for a bare `key`, which
/// git reads as true).
type ConfigEntry = (String, Option<Vec<u8>>);

/// The entries of a config file's `content` as git parses it, includes not followed.
async fn parse_config(node: &Node, content: &[u8]) -> Result<Vec<ConfigEntry>, Status> {
    let out = node
        .git
        .command(None)
        .args(["config", "--no-includes", "--file", "-", "--list", "-z"])
        .output(content)
        .await?
        .check("git config --list")?;
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| match e.iter().position(|b| *b == b'\n') {
            Some(nl) => (
                String::from_utf8_lossy(&e[..nl]).into_owned(),
                Some(e[nl + 1..].to_vec()),
            ),
            None => (String::from_utf8_lossy(e).into_owned(), None),
        })
        .collect())
}

/// Writes `entries` in git's own config syntax (what `git config` writes): one
/// `[section "subsection"]` header per run of entries in the same section, values
/// quoted and escaped as git quotes them.
fn render_config(entries: &[ConfigEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut current: Option<(&str, Option<&str>)> = None;
    for (key, value) in entries {
        let (Some((section, rest)), Some(dot)) = (key.split_once('.'), key.rfind('.')) else {
            continue;
        };
        let name = &key[dot + 1..];
        let subsection = (rest.len() > name.len()).then(|| &rest[..rest.len() - name.len() - 1]);
        if current != Some((section, subsection)) {
            out.push(b'[');
            out.extend_from_slice(section.as_bytes());
            if let Some(sub) = subsection {
                out.extend_from_slice(b" \"");
                for b in sub.bytes() {
                    if b == b'"' || b == b'\\' {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
            out.extend_from_slice(b"]\n");
            current = Some((section, subsection));
        }
        out.push(b'\t');
        out.extend_from_slice(name.as_bytes());
        if let Some(v) = value {
            out.extend_from_slice(b" = ");
            let quote = v.first() == Some(&b' ')
                || v.last() == Some(&b' ')
                || v.iter().any(|b| *b == b';' || *b == b'#');
            if quote {
                out.push(b'"');
            }
            for b in v {
                match b {
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b => out.push(*b),
                }
            }
            if quote {
                out.push(b'"');
            }
        }
        out.push(b'\n');
    }
    out
}

/// The config the target gets: its own layout keys, then the source's copied keys
/// (see the module doc).
async fn merged_config(node: &Node, dir: &Path, source: &[u8]) -> Result<Vec<u8>, Status> {
    let own = tokio::fs::read(dir.join("config"))
        .await
        .map_err(|e| io_status("read target config", e))?;
    let mut entries: Vec<ConfigEntry> = parse_config(node, &own)
        .await?
        .into_iter()
        .filter(|(k, _)| is_layout_key(k))
        .collect();
    let copied = parse_config(node, source)
        .await
        .map_err(|s| Status::internal(format!("source config: {}", s.message())))?;
    entries.extend(copied.into_iter().filter(|(k, _)| is_copied_key(k)));
    Ok(render_config(&entries))
}

async fn write_files(
    node: &Node,
    target: &RepoPath,
    dir: &Path,
    files: &GetRepositoryFilesResponse,
) -> Result<(), Status> {
    let config = merged_config(node, dir, &files.config).await?;
    write_atomic(&dir.join("config"), &config, None).await?;
    if !files.head.is_empty() {
        if !files.head.starts_with("refs/") {
            return Err(Status::internal(format!(
                "source HEAD {:?} is not a reference",
                files.head
            )));
        }
        node.git
            .command(Some(dir))
            .args(["symbolic-ref", "HEAD", &files.head])
            .run()
            .await?;
    }
    let attributes = dir.join("info").join("attributes");
    match &files.attributes {
        Some(content) => write_atomic(&attributes, content, None).await?,
        None => match tokio::fs::remove_file(&attributes).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_status("remove info/attributes", e)),
        },
    }

    // custom_hooks/ is built beside the repository and swapped in whole.
    let current = dir.join(CUSTOM_HOOKS_DIR);
    if files.custom_hooks.is_empty() && tokio::fs::symlink_metadata(&current).await.is_err() {
        return Ok(());
    }
    let staged_entry = TempEntry::new(temp_path(target, "hooks"));
    let staged = staged_entry.path();
    let build = async {
        tokio::fs::create_dir_all(&staged)
            .await
            .map_err(|e| io_status("create hooks dir", e))?;
        for f in &files.custom_hooks {
            let rel = safe_hook_path(&f.path).ok_or_else(|| {
                Status::internal(format!("unsafe hook path {:?} from source", f.path))
            })?;
            let inside = rel
                .strip_prefix(CUSTOM_HOOKS_DIR)
                .map_err(|_| Status::internal("hook path"))?;
            write_atomic(&staged.join(inside), &f.content, Some(f.mode & 0o7777)).await?;
        }
        Ok::<_, Status>(())
    }
    .await;
    // From here on every early return drops `staged_entry` (and `old_entry`),
    // which removes what is left at their paths.
    build?;
    let old_entry = TempEntry::new(temp_path(target, "removed-hooks"));
    let old = old_entry.path();
    let had_old = match tokio::fs::rename(&current, old).await {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_status("move old custom hooks", e)),
    };
    if !files.custom_hooks.is_empty()
        && let Err(e) = tokio::fs::rename(staged, &current).await
    {
        // Put the old hooks back: a failed replication leaves the target as it was,
        // not without hooks (best effort; the error is the install's either way).
        if had_old && let Err(restore) = tokio::fs::rename(old, &current).await {
            tracing::warn!(error = %restore, "cannot restore the old custom hooks");
        }
        return Err(io_status("install custom hooks", e));
    }
    sync_dir(Some(dir)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_format_is_read_from_config() {
        assert_eq!(object_format_of(b"[core]\n\tbare = true\n"), "sha1");
        assert_eq!(
            object_format_of(b"[extensions]\n\tobjectFormat = sha256\n"),
            "sha256"
        );
    }

    #[test]
    fn hook_paths_must_stay_in_custom_hooks() {
        assert!(safe_hook_path("custom_hooks/pre-receive").is_some());
        assert!(safe_hook_path("custom_hooks/pre-receive.d/a").is_some());
        assert!(safe_hook_path("custom_hooks/../config").is_none());
        assert!(safe_hook_path("/etc/passwd").is_none());
        assert!(safe_hook_path("hooks/x").is_none());
        assert!(safe_hook_path("custom_hooks").is_none());
    }

    #[test]
    fn only_allowed_and_layout_keys_pass() {
        assert!(is_copied_key("gitlab.fullpath"));
        assert!(is_copied_key("gitcluster.marker"));
        assert!(is_copied_key("gitcluster.a.b.key"));
        for k in [
            "core.hookspath",
            "core.fsmonitor",
            "core.sshcommand",
            "include.path",
            "includeif.gitdir:/x.path",
            "uploadpack.packobjectshook",
            "gitclusterx.key",
            "remote.origin.uploadpack",
        ] {
            assert!(!is_copied_key(k), "{k}");
            assert!(!is_layout_key(k), "{k}");
        }
        assert!(is_layout_key("extensions.objectformat"));
        assert!(is_layout_key("core.bare"));
    }

    #[test]
    fn rendered_config_reads_back_as_the_same_entries() {
        let entries: Vec<ConfigEntry> = vec![
            ("core.repositoryformatversion".into(), Some(b"0".to_vec())),
            ("core.bare".into(), Some(b"true".to_vec())),
            ("gitcluster.plain".into(), Some(b"a b".to_vec())),
            (
                "gitcluster.tricky".into(),
                Some(b" lead; #hash \"q\" back\\slash\ttab\nline ".to_vec()),
            ),
            ("gitcluster.flag".into(), None),
            ("gitcluster.Sub \"x\\y\".key".into(), Some(b"v".to_vec())),
            ("gitlab.fullpath".into(), Some(b"group/p".to_vec())),
        ];
        let rendered = render_config(&entries);
        let mut child = std::process::Command::new("git")
            .args(["config", "--no-includes", "--file", "-", "--list", "-z"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("git config");
        {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(&rendered)
                .expect("write");
        }
        let out = child.wait_with_output().expect("git config runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered)
        );
        let mut expected = Vec::new();
        for (k, v) in &entries {
            expected.extend_from_slice(k.as_bytes());
            if let Some(v) = v {
                expected.push(b'\n');
                expected.extend_from_slice(v);
            }
            expected.push(0);
        }
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&expected),
            "rendered:\n{}",
            String::from_utf8_lossy(&rendered)
        );
        assert!(
            String::from_utf8_lossy(&rendered).starts_with(
                "[core]\n\trepositoryformatversion = 0\n\tbare = true\n[gitcluster]\n"
            ),
            "git's own layout"
        );
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("/a b/c'd"), "'/a b/c'\\''d'");
    }
}
