//! Reading and rewriting the repository fields of a request message, by the paths
//! the operation registry gives.

use bytes::Bytes;
use gitcluster_proto::registry::MethodInfo;
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage as _, Value};
use tonic::Status;

/// `message` with its target repository pointed at `replica_path` on `storage`, and
/// its additional repository (if any) at `additional`, encoded.
pub(super) fn rewrite(
    message: &DynamicMessage,
    info: &MethodInfo,
    storage: &str,
    replica_path: &str,
    additional: Option<&str>,
) -> Result<Bytes, Status> {
    let mut message = message.clone();
    if let Some(path) = &info.target_repository {
        set_repository(&mut message, path, storage, replica_path)?;
    }
    if let (Some(path), Some(replica)) = (&info.additional_repository, additional) {
        set_repository(&mut message, path, storage, replica)?;
    }
    Ok(Bytes::from(message.encode_to_vec()))
}

/// Reads the `Repository` at `path`, if set: `(storage_name, relative_path)`.
pub(super) fn repository_at(message: &DynamicMessage, path: &[u32]) -> Option<(String, String)> {
    let (first, rest) = path.split_first()?;
    if !message.has_field_by_number(*first) {
        return None;
    }
    let value = message.get_field_by_number(*first)?;
    let inner = value.as_message()?;
    if rest.is_empty() {
        let storage = inner
            .get_field_by_name("storage_name")?
            .as_str()?
            .to_owned();
        let relative = inner
            .get_field_by_name("relative_path")?
            .as_str()?
            .to_owned();
        Some((storage, relative))
    } else {
        repository_at(inner, rest)
    }
}

/// Reads the string at `path`.
pub(super) fn string_at(message: &DynamicMessage, path: &[u32]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let value = message.get_field_by_number(*first)?;
    if rest.is_empty() {
        value.as_str().map(str::to_owned)
    } else {
        string_at(value.as_message()?, rest)
    }
}

pub(super) fn set_repository(
    message: &mut DynamicMessage,
    path: &[u32],
    storage: &str,
    relative_path: &str,
) -> Result<(), Status> {
    let mut current = message;
    for number in path {
        let field = current
            .descriptor()
            .get_field(*number)
            .ok_or_else(|| Status::internal("registry field path does not match the message"))?;
        current = match current.get_field_mut(&field) {
            Value::Message(inner) => inner,
            _ => return Err(Status::internal("repository field is not a message")),
        };
    }
    current.set_field_by_name("storage_name", Value::String(storage.to_owned()));
    current.set_field_by_name("relative_path", Value::String(relative_path.to_owned()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use gitcluster_proto::v1::{ListRefsRequest, Repository};

    use gitcluster_proto::registry;
    use prost::Message as _;
    use prost_reflect::DynamicMessage;

    use super::*;

    #[test]
    fn target_repository_is_rewritten_and_other_fields_survive() {
        let info = registry()
            .get("/gitcluster.v1.RefService/ListRefs")
            .expect("registered");
        let original = ListRefsRequest {
            repository: Some(Repository {
                storage_name: "default".into(),
                relative_path: "group/p.git".into(),
            }),
            patterns: vec!["refs/heads/".into()],
            head: true,
        };
        let message =
            DynamicMessage::decode(info.input.clone(), original.encode_to_vec().as_slice())
                .expect("decode");
        let path = info.target_repository.as_ref().expect("annotated");
        assert_eq!(
            repository_at(&message, path),
            Some(("default".into(), "group/p.git".into()))
        );
        let mut rewritten = message.clone();
        set_repository(
            &mut rewritten,
            path,
            "gitaly-2",
            "@cluster/repositories/6b/86/1",
        )
        .expect("rewrite");
        let decoded =
            ListRefsRequest::decode(rewritten.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(
            decoded.repository,
            Some(Repository {
                storage_name: "gitaly-2".into(),
                relative_path: "@cluster/repositories/6b/86/1".into(),
            })
        );
        assert_eq!(decoded.patterns, original.patterns);
        assert!(decoded.head);
    }

    #[test]
    fn a_request_without_repository_has_no_target() {
        let info = registry()
            .get("/gitcluster.v1.RefService/ListRefs")
            .expect("registered");
        let message = DynamicMessage::decode(info.input.clone(), &[][..]).expect("decode");
        let path = info.target_repository.as_ref().expect("annotated");
        assert_eq!(repository_at(&message, path), None);
    }
}
