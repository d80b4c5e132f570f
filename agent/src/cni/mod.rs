//! The CNI path on the agent's side: the gRPC service the shim calls, the checks on what it
//! asks, the pod's wiring, and the JSON the shim prints.

pub mod branch;
pub mod conflist;
pub mod error;
pub mod holds;
pub mod lifecycle;
pub mod network_policy;
pub mod plumbing;
pub mod pod_ips;
pub mod probe;
pub mod request;
pub mod result;
pub mod seams;
pub mod server;
