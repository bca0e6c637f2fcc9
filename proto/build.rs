fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/meta.proto");
    println!("cargo:rerun-if-changed=proto/chunks.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/meta.proto", "proto/chunks.proto"], &["proto"])?;
    Ok(())
}
