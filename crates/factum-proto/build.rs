//! Compiles `proto/*.proto` with protox (pure Rust, so no system `protoc`
//! is needed) and generates prost messages plus tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/shared.proto",
        "proto/status.proto",
        "proto/streams.proto",
        "proto/serverfeatures.proto",
        "proto/gossip.proto",
        "proto/persistent.proto",
        "proto/rich_status.proto",
        "proto/v2_streams.proto",
        "proto/v2_streams_errors.proto",
        "proto/users.proto",
        "proto/subjects.proto",
        "proto/projections.proto",
        "proto/operations.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
