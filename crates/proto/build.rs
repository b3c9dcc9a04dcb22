//! Compiles `proto/` without protoc and refuses to build when an RPC is not annotated
//! well enough for the router to route it (see `src/registry.rs`).

#[path = "src/registry.rs"]
#[allow(dead_code)]
mod registry;

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> = std::fs::read_dir(root.join("gitcluster/v1"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;

    // The proto lint: every RPC must say what it is and where its repository lives.
    if let Err(problems) = registry::Registry::from_pool(&compiler.descriptor_pool()) {
        for p in &problems {
            println!("cargo::error=proto lint: {p}");
        }
        return Err(format!("{} proto lint problem(s)", problems.len()).into());
    }

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // encode_file_descriptor_set keeps our custom options; prost_types' copy drops them.
    std::fs::write(
        out.join("descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())?;
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed=src/registry.rs");
    Ok(())
}
