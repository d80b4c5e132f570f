//! The agent's gRPC service on its unix socket: each CNI command from the shim, checked, handed
//! to the pod lifecycle, and answered with the exact JSON the shim prints.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
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
use tracing::Instrument;

use super::{
    error::CniError,
    lifecycle::Lifecycle,
    request, result,
    seams::{Addresses, DataPlane, HostWiring, Sources, Wiring},
};
use crate::{datapath::Plane, metrics::Verb};

/// The largest request the agent reads: a network configuration with its prevResult and
/// runtimeConfig is a few KiB; anything near this is not a runtime's.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// The CNI service of this node.
pub type NodeService = Service<Sources, HostWiring, Plane>;

/// The CNI service over a pod lifecycle.
pub struct Service<A, W, D> {
    pods: Arc<Lifecycle<A, W, D>>,
}

impl<A, W, D> Service<A, W, D> {
    pub fn new(pods: Arc<Lifecycle<A, W, D>>) -> Self {
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

impl<A, W, D> Service<A, W, D>
where
    A: Addresses + 'static,
    W: Wiring + 'static,
    D: DataPlane + 'static,
{
    /// Runs the request to completion in a task of its own: a runtime that gives up waiting
    /// (the shim's timeout) drops this future, never a DEL between unwiring and release or an
    /// ADD between attach and answer.
    async fn run(&self, request: CniRequest, command: Command) -> Response<CniReply> {
        let pods = self.pods.clone();
        let version = cni_version(&request);
        // One span per request: its close line carries the command, container, pod and result.
        let span = tracing::info_span!(
            "cni",
            command = ?command,
            container = %request.container_id,
            pod = tracing::field::Empty,
            result = tracing::field::Empty,
        );
        let task =
            tokio::spawn(async move { answer(&pods, request, command).await }.instrument(span));
        task.await.unwrap_or_else(|e| {
            let e = CniError::new(
                cni_errors::IO_FAILURE,
                format!("the agent's {command:?} handler failed: {e}"),
            );
            reply(Some(result::error(&version, &e)), true)
        })
    }
}

/// The request's cniVersion, for the error it may get (1.0.0 when it names none).
fn cni_version(request: &CniRequest) -> String {
    serde_json::from_slice::<Value>(&request.config)
        .ok()
        .and_then(|c| c.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.0.0".into())
}

async fn answer<A: Addresses, W: Wiring, D: DataPlane>(
    pods: &Lifecycle<A, W, D>,
    request: CniRequest,
    command: Command,
) -> Response<CniReply> {
    let version = cni_version(&request);
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
    let started = Instant::now();
    let outcome = match request::parse(&request, needs_container) {
        Ok(r) => {
            if !r.pod_name.is_empty() {
                let pod = format!("{}/{}", r.pod_namespace, r.pod_name);
                tracing::Span::current().record("pod", pod.as_str());
            }
            match command {
                Command::Add => pods.add(&r).await.map(Some),
                Command::Del => pods.del(&r).await.map(|()| None),
                Command::Check => pods.check(&r).await.map(|()| None),
                Command::Status => pods.status().map(|()| None),
                Command::Gc => pods.gc(&r).await.map(|()| None),
            }
        }
        Err(e) => Err(e),
    };
    let result = match &outcome {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("error {}", e.code),
    };
    tracing::Span::current().record("result", result.as_str());
    let timed = match command {
        Command::Add => Some(Verb::Add),
        Command::Del => Some(Verb::Del),
        Command::Check => Some(Verb::Check),
        Command::Status | Command::Gc => None,
    };
    if let Some(verb) = timed {
        let code = outcome.as_ref().err().map(|e| e.code);
        crate::metrics::get().cni_answered(verb, code, started.elapsed());
    }
    match outcome {
        Ok(output) => reply(output, false),
        Err(e) => {
            tracing::warn!("{command:?} {}: {}", request.container_id, e.msg);
            reply(Some(result::error(&version, &e)), true)
        }
    }
}

#[tonic::async_trait]
impl<A, W, D> Cni for Service<A, W, D>
where
    A: Addresses + 'static,
    W: Wiring + 'static,
    D: DataPlane + 'static,
{
    async fn add(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.run(r.into_inner(), Command::Add).await)
    }

    async fn del(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.run(r.into_inner(), Command::Del).await)
    }

    async fn check(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.run(r.into_inner(), Command::Check).await)
    }

    async fn status(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.run(r.into_inner(), Command::Status).await)
    }

    async fn gc(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.run(r.into_inner(), Command::Gc).await)
    }
}

/// Serves `service` (and gRPC health) on the unix socket at `socket`, root only; returns once
/// the socket accepts connections.
pub async fn serve(socket: &Path, service: NodeService) -> std::io::Result<PathBuf> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
        // The socket's directory is root's alone too: no one else may even find the socket.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<CniServer<NodeService>>().await;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(CniServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!("the CNI service stopped: {e}");
        }
    });
    Ok(socket.to_owned())
}
