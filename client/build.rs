use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: [&str; 4] = [
    "reqlog/v1/types.proto",
    "reqlog/v1/ingest_service.proto",
    "reqlog/v1/log_service.proto",
    "reqlog/v1/admin_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../proto")
        .canonicalize()?;
    // tonic-prost-build does not forward its own rerun flag.
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS.iter().map(|p| root.join(p)), [&root])?;
    // `file_descriptor_set_path` is only written when protoc runs: write it ourselves.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("reqlog_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .server_mod_attribute(".", r#"#[cfg(feature = "server")]"#)
        .compile_fds(fds)?;
    Ok(())
}
