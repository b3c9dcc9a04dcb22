//! The operation registry: for every RPC, what it does (`Operation`), what it addresses
//! (`Scope`) and where in the request the addressed repository or storage lives.
//!
//! It is built from the `op_type` method option and the `target_repository`,
//! `additional_repository` and `storage` field options of `proto/gitcluster/v1`. The
//! same code runs in `build.rs`, where any problem fails the build (our proto lint),
//! and at start-up of the router, which routes on it and never hard-codes methods.
//!
//! This file is compiled twice (by `build.rs` and by the library), so it depends on
//! nothing but `std` and `prost_reflect`.

use std::collections::HashMap;
use std::fmt;

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};

const PACKAGE: &str = "gitcluster.v1";
const REPOSITORY_MESSAGE: &str = "gitcluster.v1.Repository";

/// What an RPC does to the repository it addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Changes state: goes to the primary and is then replicated.
    Mutator,
    /// Reads only: any healthy, up-to-date replica can answer.
    Accessor,
    /// Housekeeping without observable change: goes to every replica.
    Maintenance,
}

impl Operation {
    /// Lower-case name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Mutator => "mutator",
            Operation::Accessor => "accessor",
            Operation::Maintenance => "maintenance",
        }
    }
}

/// What an RPC addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One repository, found at `MethodInfo::target_repository`.
    Repository,
    /// A whole storage, named at `MethodInfo::storage`.
    Storage,
}

/// A path of field numbers from the request message down to an annotated field.
pub type FieldPath = Vec<u32>;

/// Everything the router needs to know about one RPC.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// gRPC path, for example `/gitcluster.v1.RefService/ListRefs`.
    pub path: String,
    /// What the RPC does.
    pub operation: Operation,
    /// What it addresses.
    pub scope: Scope,
    /// Field path of the `Repository` the RPC is routed on (REPOSITORY scope).
    pub target_repository: Option<FieldPath>,
    /// Field path of a second `Repository` on the same virtual storage, if any.
    pub additional_repository: Option<FieldPath>,
    /// Field path of the storage name (STORAGE scope).
    pub storage: Option<FieldPath>,
    /// Whether the client sends a stream.
    pub client_streaming: bool,
    /// Whether the server answers with a stream.
    pub server_streaming: bool,
    /// Descriptor of the request message, to decode the first message dynamically.
    pub input: MessageDescriptor,
}

impl MethodInfo {
    /// Reads the target repository `(storage_name, relative_path)` from a decoded request.
    /// `None` when the field is absent (the caller answers InvalidArgument).
    pub fn target_repository_of(&self, request: &DynamicMessage) -> Option<(String, String)> {
        let path = self.target_repository.as_ref()?;
        let repo = message_at(request, path)?;
        let storage = repo.get_field_by_name("storage_name")?.as_str()?.to_owned();
        let relative = repo
            .get_field_by_name("relative_path")?
            .as_str()?
            .to_owned();
        Some((storage, relative))
    }
}

fn message_at(msg: &DynamicMessage, path: &[u32]) -> Option<DynamicMessage> {
    let (first, rest) = path.split_first()?;
    if !msg.has_field_by_number(*first) {
        return None;
    }
    match msg.get_field_by_number(*first)?.as_ref() {
        Value::Message(inner) if rest.is_empty() => Some(inner.clone()),
        Value::Message(inner) => message_at(inner, rest),
        _ => None,
    }
}

/// A reason an RPC cannot be routed; the build fails on any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintProblem {
    /// The gRPC path of the offending method.
    pub method: String,
    /// What is wrong, in one line.
    pub reason: String,
}

impl fmt::Display for LintProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.method, self.reason)
    }
}

/// Method path → `MethodInfo`, for every RPC of package `gitcluster.v1`.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    methods: HashMap<String, MethodInfo>,
}

impl Registry {
    /// Builds the registry from a descriptor pool, or lists every lint problem found.
    pub fn from_pool(pool: &DescriptorPool) -> Result<Registry, Vec<LintProblem>> {
        let mut problems = Vec::new();
        let mut methods = HashMap::new();
        let op_ext = pool.get_extension_by_name(&format!("{PACKAGE}.op_type"));
        for service in pool.services().filter(|s| s.package_name() == PACKAGE) {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let problem = |reason: String| LintProblem {
                    method: path.clone(),
                    reason,
                };
                let Some(op_ext) = op_ext.as_ref() else {
                    problems.push(problem(
                        "extension gitcluster.v1.op_type is not defined".into(),
                    ));
                    continue;
                };
                match method_info(pool, &method, op_ext, &path) {
                    Ok(info) => {
                        methods.insert(path.clone(), info);
                    }
                    Err(reasons) => problems.extend(reasons.into_iter().map(problem)),
                }
            }
        }
        if problems.is_empty() {
            Ok(Registry { methods })
        } else {
            Err(problems)
        }
    }

    /// Looks a method up by gRPC path.
    pub fn get(&self, path: &str) -> Option<&MethodInfo> {
        self.methods.get(path)
    }

    /// Every registered method, in no particular order.
    pub fn methods(&self) -> impl Iterator<Item = &MethodInfo> {
        self.methods.values()
    }

    /// Number of registered methods.
    pub fn len(&self) -> usize {
        self.methods.len()
    }

    /// True when no method is registered.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}

fn method_info(
    pool: &DescriptorPool,
    method: &MethodDescriptor,
    op_ext: &prost_reflect::ExtensionDescriptor,
    path: &str,
) -> Result<MethodInfo, Vec<String>> {
    let options = method.options();
    if !options.has_extension(op_ext) {
        return Err(vec!["missing (op_type) option".into()]);
    }
    let op_msg = options.get_extension(op_ext);
    let Some(op_msg) = op_msg.as_message() else {
        return Err(vec!["(op_type) is not a message".into()]);
    };
    let enum_field = |name: &str| {
        op_msg
            .get_field_by_name(name)
            .and_then(|v| v.as_enum_number())
            .unwrap_or(0)
    };
    let operation = match enum_field("op") {
        1 => Operation::Mutator,
        2 => Operation::Accessor,
        3 => Operation::Maintenance,
        _ => return Err(vec!["(op_type).op is UNKNOWN".into()]),
    };
    let scope = match enum_field("scope_level") {
        0 => Scope::Repository,
        1 => Scope::Storage,
        n => return Err(vec![format!("(op_type).scope_level {n} is not supported")]),
    };

    let input = method.input();
    let mut errors = Vec::new();
    let target = annotated(pool, &input, "target_repository", &mut errors);
    let additional = annotated(pool, &input, "additional_repository", &mut errors);
    let storage = annotated(pool, &input, "storage", &mut errors);

    for (name, found) in [
        ("target_repository", &target),
        ("additional_repository", &additional),
    ] {
        for (_, field) in found {
            if !matches!(field.kind(), Kind::Message(m) if m.full_name() == REPOSITORY_MESSAGE) {
                errors.push(format!(
                    "field {} marked ({name}) is not a Repository",
                    field.full_name()
                ));
            }
        }
    }
    for (_, field) in &storage {
        if field.kind() != Kind::String {
            errors.push(format!(
                "field {} marked (storage) is not a string",
                field.full_name()
            ));
        }
    }
    let single =
        |found: Vec<(FieldPath, FieldDescriptor)>, name: &str, errors: &mut Vec<String>| {
            if found.len() > 1 {
                errors.push(format!(
                    "request {} has {} fields marked ({name})",
                    input.full_name(),
                    found.len()
                ));
            }
            found.into_iter().next().map(|(p, _)| p)
        };
    let target = single(target, "target_repository", &mut errors);
    let additional = single(additional, "additional_repository", &mut errors);
    let storage = single(storage, "storage", &mut errors);

    match scope {
        Scope::Repository if target.is_none() => errors.push(format!(
            "repository-scoped request {} has no field marked (target_repository)",
            input.full_name()
        )),
        Scope::Storage if storage.is_none() => errors.push(format!(
            "storage-scoped request {} has no field marked (storage)",
            input.full_name()
        )),
        _ => {}
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(MethodInfo {
        path: path.to_owned(),
        operation,
        scope,
        target_repository: target,
        additional_repository: additional,
        storage,
        client_streaming: method.is_client_streaming(),
        server_streaming: method.is_server_streaming(),
        input,
    })
}

/// Finds the fields carrying the boolean field option `name`, searching nested
/// messages of the package (not recursing into a message already on the path).
fn annotated(
    pool: &DescriptorPool,
    msg: &MessageDescriptor,
    name: &str,
    errors: &mut Vec<String>,
) -> Vec<(FieldPath, FieldDescriptor)> {
    let Some(ext) = pool.get_extension_by_name(&format!("{PACKAGE}.{name}")) else {
        errors.push(format!("extension {PACKAGE}.{name} is not defined"));
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut stack = vec![(
        msg.clone(),
        Vec::<u32>::new(),
        vec![msg.full_name().to_owned()],
    )];
    while let Some((m, prefix, seen)) = stack.pop() {
        for field in m.fields() {
            let mut path = prefix.clone();
            path.push(field.number());
            let opts = field.options();
            if opts.has_extension(&ext) && opts.get_extension(&ext).as_bool() == Some(true) {
                found.push((path.clone(), field.clone()));
                continue;
            }
            if let Kind::Message(inner) = field.kind() {
                let nested = inner.package_name() == PACKAGE
                    && inner.full_name() != REPOSITORY_MESSAGE
                    && !seen.iter().any(|s| s == inner.full_name())
                    && !field.is_list()
                    && !field.is_map();
                if nested {
                    let mut seen = seen.clone();
                    seen.push(inner.full_name().to_owned());
                    stack.push((inner, path, seen));
                }
            }
        }
    }
    found
}
