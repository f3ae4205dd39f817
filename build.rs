//! Compiles proto/kafkafs.proto with a pure-Rust protobuf compiler (protox),
//! so building kafkafs needs no system-installed protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kafkafs.proto");
    let descriptors = protox::compile(["proto/kafkafs.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
