//! Generates the gRPC contracts from proto/ (eniflow's own, and the network policy agent's that
//! eniflow calls) with a vendored protoc (no system protobuf compiler needed).

fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("a vendored protoc for this host");
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let protos = ["proto/eniflow.proto", "proto/network_policy.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .compile_protos(&protos, &["proto"])
        .expect("compile proto/");
}
