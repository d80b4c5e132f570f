//! The contract between `eniflow-cni` and `eniflow-agent`: where the agent listens and which CNI
//! spec versions the pair speaks. The gRPC service itself joins this crate with the CNI path.

/// The agent's unix socket (mode 0600, root only).
pub const DEFAULT_SOCKET: &str = "/run/eniflow/agent.sock";

/// CNI spec versions eniflow accepts, oldest first; the last is what it prefers.
pub const SUPPORTED_CNI_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI error codes (CNI spec, "Error" section) eniflow returns.
pub mod cni_errors {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const TRY_AGAIN_LATER: u32 = 11;
}
