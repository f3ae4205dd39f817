//! Compiles proto/kafkafs.proto with a pure-Rust protobuf compiler (protox),
//! so building kafkafs needs no system-installed protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kafkafs.proto");
    let descriptors = protox::compile(["proto/kafkafs.proto"], ["proto"])?;
    prost_build::Config::new()
        // A write's data stays a slice of the fetched message: no copy
        // between the payload and pwrite.
        .bytes([".kafkafs.v1.Write.data"])
        .compile_fds(descriptors)?;
    Ok(())
}
