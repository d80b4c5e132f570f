//! A stand-in for EKS's network policy agent: serves its node-local gRPC service on a unix
//! socket, records every call and answers as it is told to.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use eniflow_api::network_policy::{
    np_backend_server::{NpBackend, NpBackendServer},
    DeleteNpReply, DeleteNpRequest, EnforceNpReply, EnforceNpRequest,
};
use tonic::{Request, Response, Status};

/// A call the stand-in received: (method, pod namespace, pod name, mode, interface count).
pub type Call = (&'static str, String, String, String, i32);

#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<Call>>>,
    /// What EnforceNpToPod answers in `Success`.
    refuse: Arc<Mutex<bool>>,
}

#[tonic::async_trait]
impl NpBackend for Recorder {
    async fn enforce_np_to_pod(
        &self,
        r: Request<EnforceNpRequest>,
    ) -> Result<Response<EnforceNpReply>, Status> {
        let r = r.into_inner();
        self.calls.lock().unwrap().push((
            "EnforceNpToPod",
            r.k8s_pod_namespace,
            r.k8s_pod_name,
            r.network_policy_mode,
            r.interface_count,
        ));
        let success = !*self.refuse.lock().unwrap();
        Ok(Response::new(EnforceNpReply { success }))
    }

    async fn delete_pod_np(
        &self,
        r: Request<DeleteNpRequest>,
    ) -> Result<Response<DeleteNpReply>, Status> {
        let r = r.into_inner();
        self.calls.lock().unwrap().push((
            "DeletePodNp",
            r.k8s_pod_namespace,
            r.k8s_pod_name,
            String::new(),
            0,
        ));
        Ok(Response::new(DeleteNpReply { success: true }))
    }
}

/// The stand-in, serving on `socket` until dropped (with the runtime it was started on).
pub struct PolicyAgent {
    pub socket: PathBuf,
    recorder: Recorder,
    server: tokio::task::JoinHandle<()>,
}

impl PolicyAgent {
    /// Serves on `socket` (in the current network namespace: unix sockets belong to none).
    pub fn start(socket: &Path) -> PolicyAgent {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket).expect("bind the policy socket");
        let recorder = Recorder::default();
        let service = NpBackendServer::new(recorder.clone());
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        PolicyAgent {
            socket: socket.to_owned(),
            recorder,
            server,
        }
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.recorder.calls.lock().unwrap().clone()
    }

    /// From now on EnforceNpToPod answers `Success: false`.
    pub fn refuse(&self) {
        *self.recorder.refuse.lock().unwrap() = true;
    }
}

impl Drop for PolicyAgent {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}
