//! Generates the pachd gRPC client from proto/pfs_v2.proto with a pure-Rust protobuf
//! compiler, so a fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/pfs_v2.proto");
    let descriptors = protox::compile(["proto/pfs_v2.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        // Our own `google.protobuf` types, so that `BytesValue` holds `Bytes` and a
        // payload slice goes into a request without a copy.
        .compile_well_known_types(true)
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
