//! Generates the gRPC contract from proto/eniflow.proto with a vendored protoc (no system
//! protobuf compiler needed).

fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("a vendored protoc for this host");
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/eniflow.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/eniflow.proto"], &["proto"])
        .expect("compile proto/eniflow.proto");
}
