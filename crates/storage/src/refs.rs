//! RefService: listing and updating references with git's own tools, so reference
//! transactions (and their hooks) behave exactly as in git.

use std::sync::Arc;

use gitcluster_proto::REFS_CHANGED_TRAILER;
use gitcluster_proto::v1::ref_service_server::RefService;
use gitcluster_proto::v1::{
    FindDefaultBranchRequest, FindDefaultBranchResponse, ListRefsRequest, ListRefsResponse,
    SetDefaultBranchRequest, SetDefaultBranchResponse, UpdateReferencesRequest,
    UpdateReferencesResponse, list_refs_response,
};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::Node;
use crate::git::last_line;
use crate::refstate::{RefState, changed_value};
use crate::stream::{ResponseStream, channel};

/// References per ListRefs message.
const REFS_BATCH: usize = 100;

/// RefService handlers.
#[derive(Debug, Clone)]
pub struct Refs {
    node: Arc<Node>,
}

impl Refs {
    /// Handlers over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Refs { node }
    }
}

/// Whether `oid` is a full object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn is_full_oid(oid: &str) -> bool {
    (oid.len() == 40 || oid.len() == 64)
        && oid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// InvalidArgument unless `name` is a valid reference name per `git check-ref-format`.
pub async fn check_ref_name(node: &Node, name: &str) -> Result<(), Status> {
    if name.starts_with('-') || !name.starts_with("refs/") {
        return Err(Status::invalid_argument(format!(
            "invalid reference name {name:?}"
        )));
    }
    let out = node
        .git
        .command(None)
        .args(["check-ref-format", name])
        .output(&[])
        .await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid reference name {name:?}"
        )))
    }
}

/// Maps a failed `update-ref --stdin` to a status: a lock or old-value conflict is
/// FailedPrecondition naming the reference, a bad input InvalidArgument.
fn update_ref_error(stderr: &[u8]) -> Status {
    let line = last_line(stderr);
    let quoted = line.split('\'').nth(1).unwrap_or("").to_owned();
    if line.contains("cannot lock ref")
        || line.contains("reference already exists")
        || line.contains("is at")
    {
        Status::failed_precondition(format!("reference {quoted} changed concurrently: {line}"))
    } else if line.contains("nonexistent object")
        || line.contains("multiple updates")
        || line.contains("invalid")
    {
        Status::invalid_argument(line)
    } else {
        Status::internal(format!("git update-ref failed: {line}"))
    }
}

/// `response` with [`REFS_CHANGED_TRAILER`] set to `changed` in its headers (a unary
/// call's answer carries it there; see [`crate::refstate`]).
pub fn with_refs_changed<T>(mut response: Response<T>, changed: &'static str) -> Response<T> {
    response
        .metadata_mut()
        .insert(REFS_CHANGED_TRAILER, MetadataValue::from_static(changed));
    response
}

#[tonic::async_trait]
impl RefService for Refs {
    type ListRefsStream = ResponseStream<ListRefsResponse>;

    async fn list_refs(
        &self,
        request: Request<ListRefsRequest>,
    ) -> Result<Response<Self::ListRefsStream>, Status> {
        let req = request.into_inner();
        let repo = self.node.storages.locate(req.repository.as_ref())?;
        repo.require_exists()?;
        if let Some(p) = req
            .patterns
            .iter()
            .find(|p| p.starts_with('-') || p.is_empty())
        {
            return Err(Status::invalid_argument(format!("invalid pattern {p:?}")));
        }
        let mut refs = Vec::new();
        if req.head {
            let out = self
                .node
                .git
                .command(Some(&repo.path))
                .args(["rev-parse", "--verify", "--quiet", "HEAD"])
                .output(&[])
                .await?;
            if out.status.success() {
                refs.push(list_refs_response::Reference {
                    name: "HEAD".into(),
                    target: out.stdout_str(),
                });
            }
        }
        // Streamed line by line: a repository may have millions of references.
        let mut child = self
            .node
            .git
            .command(Some(&repo.path))
            .args([
                "for-each-ref",
                "--format=%(objectname) %(refname)",
                "--end-of-options",
            ])
            .args(&req.patterns)
            .spawn()
            .await?;
        let stdout = child
            .child
            .stdout
            .take()
            .ok_or_else(|| Status::internal("git stdout missing"))?;
        let (tx, stream) = channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut batch = refs;
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some((oid, name)) = line.split_once(' ') {
                            batch.push(list_refs_response::Reference {
                                name: name.to_owned(),
                                target: oid.to_owned(),
                            });
                        }
                        if batch.len() >= REFS_BATCH {
                            let references = std::mem::take(&mut batch);
                            if tx.send(Ok(ListRefsResponse { references })).await.is_err() {
                                child.kill().await;
                                return;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("read refs: {e}"))))
                            .await;
                        child.kill().await;
                        return;
                    }
                }
            }
            if let Err(status) = child.wait_success().await {
                let _ = tx.send(Err(status)).await;
                return;
            }
            if !batch.is_empty() {
                let _ = tx.send(Ok(ListRefsResponse { references: batch })).await;
            }
        });
        Ok(Response::new(stream))
    }

    async fn update_references(
        &self,
        request: Request<UpdateReferencesRequest>,
    ) -> Result<Response<UpdateReferencesResponse>, Status> {
        let req = request.into_inner();
        let repo = self.node.storages.locate(req.repository.as_ref())?;
        // Held before the existence check: a conditional removal either finished
        // before (NotFound here) or waits for this write.
        let _writing = self.node.writes.share(&repo.path).await;
        repo.require_exists()?;
        if req.updates.is_empty() {
            return Err(Status::invalid_argument("no updates"));
        }
        let mut script = b"start\0".to_vec();
        for u in &req.updates {
            check_ref_name(&self.node, &u.reference).await?;
            if !is_full_oid(&u.new_oid) {
                return Err(Status::invalid_argument(format!(
                    "invalid new oid {:?}",
                    u.new_oid
                )));
            }
            if !u.old_oid.is_empty() && !is_full_oid(&u.old_oid) {
                return Err(Status::invalid_argument(format!(
                    "invalid old oid {:?}",
                    u.old_oid
                )));
            }
            // `update <ref> NUL <new> NUL <old> NUL`: an empty old value means no check,
            // a zero old value means "must not exist", a zero new value deletes.
            script.extend_from_slice(b"update ");
            script.extend_from_slice(u.reference.as_bytes());
            script.push(0);
            script.extend_from_slice(u.new_oid.as_bytes());
            script.push(0);
            script.extend_from_slice(u.old_oid.as_bytes());
            script.push(0);
        }
        script.extend_from_slice(b"prepare\0commit\0");
        let before = RefState::load(&repo.path).await;
        let out = self
            .node
            .git
            .command(Some(&repo.path))
            .args(["update-ref", "--stdin", "-z"])
            .output(&script)
            .await?;
        if !out.status.success() {
            return Err(update_ref_error(&out.stderr));
        }
        let after = RefState::load(&repo.path).await;
        Ok(with_refs_changed(
            Response::new(UpdateReferencesResponse {}),
            changed_value(&before, &after),
        ))
    }

    async fn find_default_branch(
        &self,
        request: Request<FindDefaultBranchRequest>,
    ) -> Result<Response<FindDefaultBranchResponse>, Status> {
        let repo = self
            .node
            .storages
            .locate(request.get_ref().repository.as_ref())?;
        repo.require_exists()?;
        let out = self
            .node
            .git
            .command(Some(&repo.path))
            .args(["symbolic-ref", "HEAD"])
            .run()
            .await?;
        Ok(Response::new(FindDefaultBranchResponse {
            name: out.stdout_str(),
        }))
    }

    async fn set_default_branch(
        &self,
        request: Request<SetDefaultBranchRequest>,
    ) -> Result<Response<SetDefaultBranchResponse>, Status> {
        let req = request.into_inner();
        let repo = self.node.storages.locate(req.repository.as_ref())?;
        let _writing = self.node.writes.share(&repo.path).await;
        repo.require_exists()?;
        if !req.name.starts_with("refs/heads/") {
            return Err(Status::invalid_argument(
                "default branch must be under refs/heads/",
            ));
        }
        check_ref_name(&self.node, &req.name).await?;
        let before = RefState::load(&repo.path).await;
        self.node
            .git
            .command(Some(&repo.path))
            .args(["symbolic-ref", "HEAD", &req.name])
            .run()
            .await?;
        let after = RefState::load(&repo.path).await;
        Ok(with_refs_changed(
            Response::new(SetDefaultBranchResponse {}),
            changed_value(&before, &after),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_oids_are_40_or_64_lowercase_hex() {
        assert!(is_full_oid(&"a".repeat(40)));
        assert!(is_full_oid(&"0".repeat(64)));
        assert!(!is_full_oid(&"A".repeat(40)));
        assert!(!is_full_oid("abc"));
        assert!(!is_full_oid(&"g".repeat(40)));
    }

    #[test]
    fn lock_conflicts_become_failed_precondition() {
        let s = update_ref_error(
            b"fatal: cannot lock ref 'refs/heads/main': is at 1111 but expected 2222\n",
        );
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(s.message().contains("refs/heads/main"), "{}", s.message());
    }
}
