fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/meta.proto");
    println!("cargo:rerun-if-changed=proto/chunks.proto");
    tonic_prost_build::configure()
        // A block read's bytes stay in the buffer tonic decoded them into (no copy into
        // a Vec): the mount's sequential reads spent a tenth of their copying there.
        .bytes(".mobilus.data.v1.ReadBlocksReply.data")
        .compile_protos(&["proto/meta.proto", "proto/chunks.proto"], &["proto"])?;
    Ok(())
}
