//! The `ssh-upload-pack` helper: what `git fetch` runs as its "ssh" during
//! replication (the role gitaly-ssh plays for Gitaly).
//!
//! git invokes it as `<exe> ssh-upload-pack [ssh options] <host> "git-upload-pack '<path>'"`.
//! The arguments are ignored: the source address, storage, relative path and token
//! come from `GITCLUSTER_SSH_*` variables set by the replicator. The helper opens an
//! `InternalService.SSHUploadPack` stream to the source, copies its stdin into the
//! stream and the stream's stdout/stderr to its own, and exits with the remote
//! upload-pack's exit status. It writes nothing else to stdout.

use gitcluster_proto::v1::{Repository, SshUploadPackRequest};
use std::io::{Read as _, Write as _};

use tokio_stream::wrappers::ReceiverStream;

use crate::peer::internal_client;

/// The hidden subcommand name.
pub const SUBCOMMAND: &str = "ssh-upload-pack";
/// gRPC address of the source node.
pub const ENV_ADDRESS: &str = "GITCLUSTER_SSH_ADDRESS";
/// Storage of the source repository.
pub const ENV_STORAGE: &str = "GITCLUSTER_SSH_STORAGE";
/// Relative path of the source repository.
pub const ENV_RELATIVE_PATH: &str = "GITCLUSTER_SSH_RELATIVE_PATH";
/// Token for the source node (may be empty).
pub const ENV_TOKEN: &str = "GITCLUSTER_SSH_TOKEN";

/// Runs the helper and returns the process exit code (255 on a transport failure, as
/// ssh does). Callers exit with the code right away so the thread blocked reading
/// stdin does not hold the process.
pub fn main() -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gitcluster ssh-upload-pack: cannot start runtime: {e}");
            return 255;
        }
    };
    match runtime.block_on(run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gitcluster ssh-upload-pack: {e:#}");
            255
        }
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is not set"))
}

async fn run() -> anyhow::Result<i32> {
    let address = env(ENV_ADDRESS)?;
    let repository = Repository {
        storage_name: env(ENV_STORAGE)?,
        relative_path: env(ENV_RELATIVE_PATH)?,
    };
    let token = std::env::var(ENV_TOKEN).ok();
    let git_protocol = std::env::var("GIT_PROTOCOL").unwrap_or_default();
    let mut client = internal_client(&address, token.as_deref()).await?;

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(SshUploadPackRequest {
        repository: Some(repository),
        stdin: Vec::new(),
        git_protocol,
    })
    .await
    .map_err(|_| anyhow::anyhow!("request channel closed"))?;
    // A plain thread: a blocking stdin read must not hold up the runtime, and the
    // process exits without joining it.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; gitcluster_proto::STREAM_CHUNK_BYTES];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let msg = SshUploadPackRequest {
                        stdin: buf[..n].to_vec(),
                        ..Default::default()
                    };
                    if tx.blocking_send(msg).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut responses = client
        .ssh_upload_pack(ReceiverStream::new(rx))
        .await?
        .into_inner();
    // Blocking writes are fine here: this process does nothing else, and a slow
    // reader (git) should hold back the stream anyway.
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    while let Some(msg) = responses.message().await? {
        if !msg.stdout.is_empty() {
            stdout.write_all(&msg.stdout)?;
            stdout.flush()?;
        }
        if !msg.stderr.is_empty() {
            stderr.write_all(&msg.stderr)?;
            stderr.flush()?;
        }
        if let Some(code) = msg.exit_status {
            return Ok(code);
        }
    }
    anyhow::bail!("source ended the stream without an exit status")
}
