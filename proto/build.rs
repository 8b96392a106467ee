//! Generates the agent API with protox, a protobuf compiler written in Rust,
//! so no machine (developer, CI, rig) needs `protoc` installed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto = dir.join("agent.proto");
    println!("cargo:rerun-if-changed={}", proto.display());

    let fds = protox::compile([&proto], [&dir])?;
    tonic_prost_build::configure()
        // The generated client must not pull in tonic's TCP transport: the
        // host dials vsock / unix sockets with its own connector.
        .build_transport(false)
        // A method a server does not implement answers UNIMPLEMENTED: what
        // an agent built before an additive API change must say, and what
        // lets test doubles implement only the calls they fake.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
