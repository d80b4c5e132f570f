//! The agent's health as kubelet's probes see it: the CNI service reports SERVING through gRPC
//! health on the agent's own socket (the same socket, and so the same path, the shim uses).

use std::{path::Path, time::Duration};

use eniflow_api::v1::cni_server::CniServer;
use tonic::server::NamedService;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use super::server::NodeService;

/// Why the agent is not healthy, each naming what was tried.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to the agent's socket {socket}: {source}")]
    Connect {
        socket: String,
        source: tonic::transport::Error,
    },
    #[error("no health answer from {socket} within {timeout:?}")]
    Timeout { socket: String, timeout: Duration },
    #[error("health check on {socket} failed: {source}")]
    Check {
        socket: String,
        source: Box<tonic::Status>,
    },
    #[error("the CNI service on {socket} is {status:?}, not SERVING")]
    NotServing {
        socket: String,
        status: ServingStatus,
    },
}

/// Asks the agent on `socket` whether its CNI service is serving, within `timeout`.
pub async fn probe(socket: &Path, timeout: Duration) -> Result<(), ProbeError> {
    let name = socket.display().to_string();
    let asked = async {
        let channel = eniflow_api::connect(socket)
            .await
            .map_err(|source| ProbeError::Connect {
                socket: name.clone(),
                source,
            })?;
        let service = <CniServer<NodeService> as NamedService>::NAME.to_owned();
        HealthClient::new(channel)
            .check(HealthCheckRequest { service })
            .await
            .map_err(|source| ProbeError::Check {
                socket: name.clone(),
                source: Box::new(source),
            })
    };
    let answer =
        tokio::time::timeout(timeout, asked)
            .await
            .map_err(|_| ProbeError::Timeout {
                socket: name.clone(),
                timeout,
            })??;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        status => Err(ProbeError::NotServing {
            socket: name,
            status,
        }),
    }
}
