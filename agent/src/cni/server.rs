//! The agent's gRPC service on its unix socket: each CNI command from the shim, checked, handed
//! to the pod lifecycle, and answered with the exact JSON the shim prints.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use eniflow_api::{
    cni_errors, compatible,
    v1::{
        cni_server::{Cni, CniServer},
        CniReply, CniRequest,
    },
    PROTOCOL,
};
use serde_json::Value;
use tonic::{Request as GrpcRequest, Response, Status};

use super::{
    error::CniError,
    lifecycle::Lifecycle,
    request, result,
    seams::{HostWiring, Sources},
};
use crate::datapath::Plane;

/// The pod lifecycle of this node.
pub type NodeLifecycle = Lifecycle<Sources, HostWiring, Plane>;

/// The CNI service.
pub struct Service {
    pods: NodeLifecycle,
}

impl Service {
    pub fn new(pods: NodeLifecycle) -> Service {
        Service { pods }
    }
}

#[derive(Clone, Copy, Debug)]
enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
}

fn reply(output: Option<Value>, failed: bool) -> Response<CniReply> {
    Response::new(CniReply {
        protocol: PROTOCOL,
        output: output
            .map(|v| v.to_string().into_bytes())
            .unwrap_or_default(),
        failed,
    })
}

impl Service {
    async fn answer(&self, request: CniRequest, command: Command) -> Response<CniReply> {
        let version = serde_json::from_slice::<Value>(&request.config)
            .ok()
            .and_then(|c| c.get("cniVersion")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "1.0.0".into());
        if !compatible(request.protocol) {
            let e = CniError::new(
                cni_errors::PROTOCOL_MISMATCH,
                format!(
                    "eniflow-cni speaks protocol {}, this agent {} (it serves {}..={}): upgrade the older one",
                    request.protocol,
                    PROTOCOL,
                    eniflow_api::OLDEST_PROTOCOL,
                    PROTOCOL + 1
                ),
            );
            return reply(Some(result::error(&version, &e)), true);
        }
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let outcome = match request::parse(&request, needs_container) {
            Ok(r) => match command {
                Command::Add => self.pods.add(&r).await.map(Some),
                Command::Del => self.pods.del(&r).await.map(|()| None),
                Command::Check => self.pods.check(&r).await.map(|()| None),
                Command::Status => self.pods.status().map(|()| None),
                Command::Gc => self.pods.gc(&r).await.map(|()| None),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(output) => reply(output, false),
            Err(e) => {
                log::warn!("{command:?} {}: {}", request.container_id, e.msg);
                reply(Some(result::error(&version, &e)), true)
            }
        }
    }
}

#[tonic::async_trait]
impl Cni for Service {
    async fn add(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.answer(r.into_inner(), Command::Add).await)
    }

    async fn del(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.answer(r.into_inner(), Command::Del).await)
    }

    async fn check(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.answer(r.into_inner(), Command::Check).await)
    }

    async fn status(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.answer(r.into_inner(), Command::Status).await)
    }

    async fn gc(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.answer(r.into_inner(), Command::Gc).await)
    }
}

/// Serves `service` (and gRPC health) on the unix socket at `socket`, root only; returns once
/// the socket accepts connections.
pub async fn serve(socket: &Path, service: Service) -> std::io::Result<PathBuf> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<CniServer<Service>>().await;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(CniServer::new(service))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            log::error!("the CNI service stopped: {e}");
        }
    });
    Ok(socket.to_owned())
}
