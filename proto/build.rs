fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/meta.proto");
    tonic_prost_build::configure().compile_protos(&["proto/meta.proto"], &["proto"])?;
    Ok(())
}
