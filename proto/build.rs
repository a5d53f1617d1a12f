//! Compiles every `.proto` under `proto/` with protox, a pure-Rust protobuf compiler, so a
//! fresh machine needs no `protoc`.
//!
//! The encoded descriptor set is written next to the generated code because reflection
//! and the gateway's policy table both read it. It is encoded by protox itself
//! (`encode_file_descriptor_set`): decoding into `prost_types` first would silently drop
//! the custom `topsmile.auth.v1.policy` method option.

use std::{env, fs, path::PathBuf};

const ROOT: &str = ".";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let files = proto_files(&PathBuf::from("topsmile"))?;
    println!("cargo:rerun-if-changed=topsmile");
    println!("cargo:rerun-if-changed=google");

    let mut compiler = protox::Compiler::new([ROOT])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    let encoded = compiler.encode_file_descriptor_set();
    fs::write(out_dir.join("topsmile_descriptor.bin"), &encoded)?;

    let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(encoded.as_slice())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL (see src/codec.rs).
        .codec_path("crate::codec::ContractCodec")
        .include_file("topsmile.rs")
        // `prost::Name` on every message: the kit's update-mask helper finds a message's
        // descriptor by its full name.
        .compile_fds_with_config(fds, {
            let mut config = tonic_prost_build::Config::new();
            config.enable_type_names();
            config
        })?;
    Ok(())
}

fn proto_files(dir: &PathBuf) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(proto_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
