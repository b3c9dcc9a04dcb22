//! The default branch after a push into a repository whose HEAD is unborn.
//!
//! A repository is created with HEAD pointing at `refs/heads/main`. A first push of
//! only `master` (a `git push --mirror` of an older repository) would leave HEAD
//! pointing at nothing, and `git clone` would warn "remote HEAD refers to nonexistent
//! ref" and check nothing out. As Gitaly and GitLab do, the first push that leaves
//! branches behind an unborn HEAD sets the default branch: HEAD's own branch if it
//! exists, else the only branch, else `main`, else `master`, else the first branch in
//! sort order. The change is a `SetDefaultBranch` through the upstream (the router),
//! so it is a recorded write and every replica follows it.

use gitcluster_proto::v1::{FindDefaultBranchRequest, ListRefsRequest, SetDefaultBranchRequest};
use tracing::{info, warn};

use crate::route::RepoPath;
use crate::upstream::RefClient;

const HEADS: &str = "refs/heads/";

/// The branch HEAD should point at, by the rule in the module doc; `None` when there
/// is no branch.
pub fn choose(head: &str, branches: &[String]) -> Option<String> {
    if branches.iter().any(|b| b == head) {
        return Some(head.to_owned());
    }
    if let [only] = branches {
        return Some(only.clone());
    }
    for preferred in ["refs/heads/main", "refs/heads/master"] {
        if branches.iter().any(|b| b == preferred) {
            return Some(preferred.to_owned());
        }
    }
    branches.iter().min().cloned()
}

/// Points HEAD at a branch when it is unborn and branches exist (see the module doc).
/// Best effort: a failure is logged, the push itself already succeeded.
pub async fn settle(mut refs: RefClient, repo: &RepoPath) {
    let repository = Some(repo.to_proto());
    let result: Result<(), tonic::Status> = async {
        let head = refs
            .find_default_branch(FindDefaultBranchRequest {
                repository: repository.clone(),
            })
            .await?
            .into_inner()
            .name;
        if !head.is_empty() && has_ref(&mut refs, repo, &head).await? {
            return Ok(());
        }
        let branches = list(&mut refs, repo, HEADS).await?;
        let Some(branch) = choose(&head, &branches) else {
            return Ok(());
        };
        refs.set_default_branch(SetDefaultBranchRequest {
            repository,
            name: branch.clone(),
        })
        .await?;
        info!(repo = %repo.relative_path, from = %head, to = %branch,
            "HEAD was unborn after a push; default branch set");
        Ok(())
    }
    .await;
    if let Err(status) = result {
        warn!(repo = %repo.relative_path, code = ?status.code(), message = status.message(),
            "cannot settle the default branch after a push");
    }
}

/// True when the reference `name` exists.
async fn has_ref(refs: &mut RefClient, repo: &RepoPath, name: &str) -> Result<bool, tonic::Status> {
    Ok(list(refs, repo, name).await?.iter().any(|r| r == name))
}

/// The names of the references under `prefix`.
async fn list(
    refs: &mut RefClient,
    repo: &RepoPath,
    prefix: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut stream = refs
        .list_refs(ListRefsRequest {
            repository: Some(repo.to_proto()),
            patterns: vec![prefix.to_owned()],
            head: false,
        })
        .await?
        .into_inner();
    let mut names = Vec::new();
    while let Some(message) = stream.message().await? {
        names.extend(message.references.into_iter().map(|r| r.name));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::choose;

    fn heads(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("refs/heads/{n}")).collect()
    }

    #[test]
    fn the_rule_prefers_head_then_the_only_branch_then_main_then_master_then_the_first() {
        let main = "refs/heads/main";
        assert_eq!(choose(main, &heads(&[])), None);
        assert_eq!(choose(main, &heads(&["b", "main"])).as_deref(), Some(main));
        assert_eq!(
            choose(main, &heads(&["master"])).as_deref(),
            Some("refs/heads/master")
        );
        assert_eq!(
            choose("refs/heads/trunk", &heads(&["x", "main", "master"])).as_deref(),
            Some(main)
        );
        assert_eq!(
            choose(main, &heads(&["x", "master", "a"])).as_deref(),
            Some("refs/heads/master")
        );
        assert_eq!(
            choose(main, &heads(&["zeta", "alpha"])).as_deref(),
            Some("refs/heads/alpha")
        );
    }
}
