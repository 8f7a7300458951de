//! Compiles every .proto under `xray/` (upstream's API) and `shardray/` (our additions) with protox (pure Rust, so no system
//! protoc is needed), generates prost messages plus tonic clients and servers,
//! and writes the serialized FileDescriptorSet for gRPC reflection.

use std::path::{Path, PathBuf};

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    for root in ["xray", "shardray"] {
        println!("cargo:rerun-if-changed={root}");
        collect_protos(Path::new(root), &mut files)?;
    }
    // A stable order keeps the generated descriptor set reproducible.
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let descriptors = protox::compile(&files, ["."])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("file_descriptor_set.bin"), prost::Message::encode_to_vec(&descriptors))?;

    tonic_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
