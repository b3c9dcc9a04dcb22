use super::registry::{Operation, Registry, Scope};
use super::*;

#[test]
fn every_rpc_is_registered_with_its_operation() {
    let reg = registry();
    let pool = descriptor_pool();
    let rpcs: usize = pool
        .services()
        .filter(|s| s.package_name() == "gitcluster.v1")
        .map(|s| s.methods().count())
        .sum();
    assert!(
        rpcs >= 20,
        "expected the full storage-node surface, found {rpcs} RPCs"
    );
    assert_eq!(reg.len(), rpcs);

    let create = reg
        .get("/gitcluster.v1.RepositoryService/CreateRepository")
        .expect("registered");
    assert_eq!(create.operation, Operation::Mutator);
    assert_eq!(create.target_repository, Some(vec![1]));

    let list = reg
        .get("/gitcluster.v1.RepositoryService/ListRepositories")
        .expect("registered");
    assert_eq!(list.scope, Scope::Storage);
    assert_eq!(list.storage, Some(vec![1]));

    let optimize = reg
        .get("/gitcluster.v1.RepositoryService/OptimizeRepository")
        .expect("registered");
    assert_eq!(optimize.operation, Operation::Maintenance);

    let replicate = reg
        .get("/gitcluster.v1.RepositoryService/ReplicateRepository")
        .expect("registered");
    assert_eq!(replicate.additional_repository, Some(vec![2]));

    let receive = reg
        .get("/gitcluster.v1.SmartHTTPService/PostReceivePack")
        .expect("registered");
    assert!(receive.client_streaming && receive.server_streaming);
}

#[test]
fn target_repository_is_read_from_a_dynamic_request() {
    use prost::Message;
    let info = registry()
        .get("/gitcluster.v1.RefService/ListRefs")
        .expect("registered");
    let req = v1::ListRefsRequest {
        repository: Some(v1::Repository {
            storage_name: "default".into(),
            relative_path: "a/b.git".into(),
        }),
        ..Default::default()
    };
    let msg =
        prost_reflect::DynamicMessage::decode(info.input.clone(), req.encode_to_vec().as_slice())
            .expect("decodes");
    assert_eq!(
        info.target_repository_of(&msg),
        Some(("default".into(), "a/b.git".into()))
    );

    let empty =
        prost_reflect::DynamicMessage::decode(info.input.clone(), &[][..]).expect("decodes");
    assert_eq!(info.target_repository_of(&empty), None);
}

/// Compiles a proto snippet next to the real `lint.proto` and runs the lint on it.
fn lint(snippet: &str) -> Result<Registry, Vec<String>> {
    let dir = tempdir();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = dir.join("gitcluster/v1/bad.proto");
    std::fs::create_dir_all(file.parent().expect("has parent")).expect("mkdir");
    let body = format!(
        "syntax = \"proto3\";\npackage gitcluster.v1;\nimport \"gitcluster/v1/lint.proto\";\nimport \"gitcluster/v1/shared.proto\";\n{snippet}"
    );
    std::fs::write(&file, body).expect("write proto");
    let mut compiler = protox::Compiler::new([dir.as_path(), root.as_path()]).expect("compiler");
    compiler
        .open_files(["gitcluster/v1/bad.proto"])
        .expect("compiles");
    let result = Registry::from_pool(&compiler.descriptor_pool())
        .map_err(|p| p.into_iter().map(|p| p.to_string()).collect());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gitcluster-lint-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn lint_rejects_rpc_without_operation() {
    let problems = lint(
        "message R { Repository repository = 1 [(target_repository) = true]; }\n\
         service S { rpc M(R) returns (R); }",
    )
    .expect_err("must fail");
    assert_eq!(
        problems,
        vec!["/gitcluster.v1.S/M: missing (op_type) option".to_string()]
    );
}

#[test]
fn lint_rejects_repository_scoped_request_without_target_repository() {
    let problems = lint(
        "message R { Repository repository = 1; }\n\
         service S { rpc M(R) returns (R) { option (op_type) = { op: MUTATOR }; } }",
    )
    .expect_err("must fail");
    assert!(
        problems[0].contains("has no field marked (target_repository)"),
        "{problems:?}"
    );
}

#[test]
fn lint_rejects_unknown_operation_and_storage_scope_without_storage_field() {
    let problems = lint(
        "message R { string name = 1; }\n\
         service S {\n\
           rpc A(R) returns (R) { option (op_type) = { op: UNKNOWN }; }\n\
           rpc B(R) returns (R) { option (op_type) = { op: ACCESSOR, scope_level: STORAGE }; }\n\
         }",
    )
    .expect_err("must fail");
    assert!(
        problems
            .iter()
            .any(|p| p == "/gitcluster.v1.S/A: (op_type).op is UNKNOWN"),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("has no field marked (storage)")),
        "{problems:?}"
    );
}

#[test]
fn lint_rejects_target_repository_of_wrong_type_and_accepts_nested() {
    let problems = lint(
        "message R { string repository = 1 [(target_repository) = true]; }\n\
         service S { rpc M(R) returns (R) { option (op_type) = { op: ACCESSOR }; } }",
    )
    .expect_err("must fail");
    assert!(problems[0].contains("is not a Repository"), "{problems:?}");

    let reg = lint(
        "message Inner { Repository repository = 1 [(target_repository) = true]; }\n\
         message R { Inner header = 3; }\n\
         service S { rpc M(R) returns (R) { option (op_type) = { op: ACCESSOR }; } }",
    )
    .expect("nested target is fine");
    assert_eq!(
        reg.get("/gitcluster.v1.S/M")
            .and_then(|m| m.target_repository.clone()),
        Some(vec![3, 1])
    );
}
