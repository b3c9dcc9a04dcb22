//! ObjectService: reading blobs (streamed, never buffered whole) and commits.

use std::sync::Arc;

use gitcluster_proto::STREAM_CHUNK_BYTES;
use gitcluster_proto::v1::object_service_server::ObjectService;
use gitcluster_proto::v1::{
    CommitAuthor, FindCommitRequest, FindCommitResponse, GetBlobRequest, GetBlobResponse,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::{Request, Response, Status};

use crate::Node;
use crate::refs::is_full_oid;
use crate::stream::{ResponseStream, channel};

/// ObjectService handlers.
#[derive(Debug, Clone)]
pub struct Objects {
    node: Arc<Node>,
}

impl Objects {
    /// Handlers over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Objects { node }
    }
}

/// Parses `Name <email> 1700000000 +0100` from a commit header.
fn parse_signature(raw: &str) -> CommitAuthor {
    let (name, rest) = match raw.split_once('<') {
        Some((n, r)) => (n.trim(), r),
        None => (raw.trim(), ""),
    };
    let (email, rest) = match rest.split_once('>') {
        Some((e, r)) => (e, r.trim()),
        None => (rest, ""),
    };
    let mut parts = rest.split_whitespace();
    let timestamp = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
    let timezone = parts.next().unwrap_or("").to_owned();
    CommitAuthor {
        name: name.to_owned(),
        email: email.to_owned(),
        timestamp,
        timezone,
    }
}

/// Parses the raw body of a commit object (`git cat-file commit`).
pub fn parse_commit(id: &str, raw: &[u8]) -> FindCommitResponse {
    let split = raw.windows(2).position(|w| w == b"\n\n");
    let (headers, body) = match split {
        Some(i) => (&raw[..i], &raw[i + 2..]),
        None => (raw, &b""[..]),
    };
    let mut commit = FindCommitResponse {
        id: id.to_owned(),
        ..Default::default()
    };
    for line in String::from_utf8_lossy(headers).lines() {
        // Continuation lines (gpgsig, mergetag) start with a space.
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        match key {
            "tree" => commit.tree_id = value.to_owned(),
            "parent" => commit.parent_ids.push(value.to_owned()),
            "author" => commit.author = Some(parse_signature(value)),
            "committer" => commit.committer = Some(parse_signature(value)),
            _ => {}
        }
    }
    let subject_end = body.iter().position(|b| *b == b'\n').unwrap_or(body.len());
    commit.subject = String::from_utf8_lossy(&body[..subject_end])
        .trim_end()
        .to_owned();
    commit.body = body.to_vec();
    commit
}

#[tonic::async_trait]
impl ObjectService for Objects {
    type GetBlobStream = ResponseStream<GetBlobResponse>;

    async fn get_blob(
        &self,
        request: Request<GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let req = request.into_inner();
        let repo = self.node.storages.locate(req.repository.as_ref())?;
        repo.require_exists()?;
        if !is_full_oid(&req.oid) {
            return Err(Status::invalid_argument(format!(
                "invalid oid {:?}",
                req.oid
            )));
        }
        let mut child = self
            .node
            .git
            .command(Some(&repo.path))
            .args(["cat-file", "--batch"])
            .spawn()
            .await?;
        let mut stdin = child
            .child
            .stdin
            .take()
            .ok_or_else(|| Status::internal("git stdin missing"))?;
        let stdout = child
            .child
            .stdout
            .take()
            .ok_or_else(|| Status::internal("git stdout missing"))?;
        stdin
            .write_all(format!("{}\n", req.oid).as_bytes())
            .await
            .map_err(|e| Status::internal(format!("write to git cat-file: {e}")))?;
        drop(stdin);
        let mut reader = BufReader::new(stdout);
        let mut header = String::new();
        reader
            .read_line(&mut header)
            .await
            .map_err(|e| Status::internal(format!("read git cat-file: {e}")))?;
        let fields: Vec<&str> = header.split_whitespace().collect();
        let size: u64 = match fields.as_slice() {
            [_, "missing"] | [] => return Err(Status::not_found("blob not found")),
            [_, "blob", size] => size
                .parse()
                .map_err(|_| Status::internal("bad cat-file header"))?,
            [_, kind, _] => {
                return Err(Status::invalid_argument(format!(
                    "object is a {kind}, not a blob"
                )));
            }
            _ => {
                return Err(Status::internal(format!(
                    "unexpected cat-file output {header:?}"
                )));
            }
        };
        let wanted = if req.limit > 0 {
            size.min(req.limit.unsigned_abs())
        } else {
            size
        };
        let oid = req.oid;
        let (tx, stream) = channel();
        tokio::spawn(async move {
            let mut remaining = wanted;
            let mut first = true;
            let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
            loop {
                let want = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let n = if want == 0 {
                    0
                } else {
                    match reader.read(&mut buf[..want]).await {
                        Ok(0) => {
                            let _ = tx
                                .send(Err(Status::internal("git cat-file ended early")))
                                .await;
                            return;
                        }
                        Ok(n) => n,
                        Err(e) => {
                            let _ = tx
                                .send(Err(Status::internal(format!("read blob: {e}"))))
                                .await;
                            return;
                        }
                    }
                };
                remaining -= n as u64;
                let msg = GetBlobResponse {
                    size: if first { size } else { 0 },
                    oid: if first { oid.clone() } else { String::new() },
                    data: buf[..n].to_vec(),
                };
                first = false;
                if tx.send(Ok(msg)).await.is_err() || remaining == 0 {
                    break;
                }
            }
            // We read what we wanted; git is killed (the rest of its output is not needed).
            child.kill().await;
        });
        Ok(Response::new(stream))
    }

    async fn find_commit(
        &self,
        request: Request<FindCommitRequest>,
    ) -> Result<Response<FindCommitResponse>, Status> {
        let req = request.into_inner();
        let repo = self.node.storages.locate(req.repository.as_ref())?;
        repo.require_exists()?;
        if req.revision.is_empty() || req.revision.starts_with('-') || req.revision.contains('\0') {
            return Err(Status::invalid_argument(format!(
                "invalid revision {:?}",
                req.revision
            )));
        }
        let out = self
            .node
            .git
            .command(Some(&repo.path))
            .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .args([format!("{}^{{commit}}", req.revision)])
            .output(&[])
            .await?;
        if !out.status.success() {
            return Err(Status::not_found("commit not found"));
        }
        let oid = out.stdout_str();
        let raw = self
            .node
            .git
            .command(Some(&repo.path))
            .args(["cat-file", "commit", &oid])
            .run()
            .await?;
        Ok(Response::new(parse_commit(&oid, &raw.stdout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_objects_are_parsed() {
        let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
parent 1111111111111111111111111111111111111111\n\
parent 2222222222222222222222222222222222222222\n\
author A U Thor <author@example.com> 1700000000 +0100\n\
committer C O Mitter <c@example.com> 1700000001 -0200\n\
\n\
subject line\n\nbody text\n";
        let c = parse_commit("abc", raw);
        assert_eq!(c.tree_id, "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
        assert_eq!(c.parent_ids.len(), 2);
        let author = c.author.expect("author");
        assert_eq!(author.name, "A U Thor");
        assert_eq!(author.email, "author@example.com");
        assert_eq!(author.timestamp, 1_700_000_000);
        assert_eq!(author.timezone, "+0100");
        assert_eq!(c.committer.expect("committer").timezone, "-0200");
        assert_eq!(c.subject, "subject line");
        assert_eq!(c.body, b"subject line\n\nbody text\n");
    }
}
