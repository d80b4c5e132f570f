//! The contract between `eniflow-cni` and `eniflow-agent`: the gRPC service on the agent's unix
//! socket, the protocol versions each side speaks, the CNI spec versions and error codes; and the
//! network policy agent's service, which the agent calls for each pod.

use std::path::{Path, PathBuf};

pub mod v1 {
    tonic::include_proto!("eniflow.v1");
}

/// EKS's network policy agent's node-local service (`rpc.NPBackend`).
pub mod network_policy {
    tonic::include_proto!("rpc");
}

/// The agent's unix socket (mode 0600, root only).
pub const DEFAULT_SOCKET: &str = "/run/eniflow/agent.sock";

/// This build's protocol version. A shim and an agent work together when each is within the
/// other's supported range, so neighbouring releases interoperate during a rolling upgrade.
pub const PROTOCOL: u32 = 1;
/// The oldest peer protocol this build serves.
pub const OLDEST_PROTOCOL: u32 = 1;

/// CNI spec versions eniflow accepts, oldest first; the last is what it prefers.
pub const SUPPORTED_CNI_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI error codes: the spec's ("Error" section) and eniflow's own, from 100.
pub mod cni_errors {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_READY: u32 = 50;
    /// The agent did not answer (down, or slower than the shim's deadline).
    pub const AGENT_UNREACHABLE: u32 = 100;
    /// The agent speaks a protocol this shim does not (or the other way round).
    pub const PROTOCOL_MISMATCH: u32 = 101;
    /// Wiring the pod's interface failed (the message says which step).
    pub const PLUMBING_FAILED: u32 = 102;
    /// The network policy agent did not take the pod (NETWORK_POLICY_ENFORCING_MODE).
    pub const NETWORK_POLICY_FAILED: u32 = 103;
}

/// Whether a peer speaking `protocol` can be served.
pub fn compatible(protocol: u32) -> bool {
    (OLDEST_PROTOCOL..=PROTOCOL + 1).contains(&protocol)
}

/// A gRPC channel to a unix socket (the agent's, or the network policy agent's).
pub async fn connect(socket: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_owned();
    // The URI is required by the API but unused: the connector dials the socket.
    tonic::transport::Endpoint::from_static("http://eniflow-agent")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
