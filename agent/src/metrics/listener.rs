//! The HTTP listener, on localhost unless told otherwise: Prometheus's `GET /metrics`, and the
//! introspection views (`GET /v1/enis`, `/v1/pods`, `/v1/subnets`, `/v1/config`, `/v1/status`).

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use prometheus::TEXT_FORMAT;

use crate::{cni::branch::BranchPods, datapath::Pins, introspection, ipam::Ipam};

/// The listener's address unless told otherwise: localhost, VPC CNI's metrics port.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:61678";

/// What a scrape or a view reads.
pub struct Sources {
    /// None when the agent runs without a pool (--ipam=false).
    pub ipam: Option<Arc<Ipam>>,
    pub branch_pods: Option<Arc<BranchPods>>,
    pub pins: Pins,
    /// The agent's settings in effect.
    pub settings: serde_json::Value,
}

impl Sources {
    fn node(&self) -> introspection::Node<'_> {
        introspection::Node {
            ipam: self.ipam.as_deref(),
            branch_pods: self.branch_pods.as_deref(),
            pins: &self.pins,
            settings: &self.settings,
        }
    }
}

/// The paths served, and what each answers.
const PATHS: &str = "/metrics, /v1/enis, /v1/pods, /v1/subnets, /v1/config, /v1/status";

/// The body of `path`: (status, content type, text). Reads the pinned maps: a few syscalls per
/// entry, so it runs off the runtime's threads.
fn render(sources: &Sources, path: &str) -> (StatusCode, &'static str, String) {
    let node = sources.node();
    let json = |view: Result<serde_json::Value, String>| match view {
        Ok(v) => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            serde_json::json!({ "error": e }).to_string() + "\n",
        ),
    };
    let pool = |view: fn(&Ipam) -> serde_json::Value| {
        node.ipam
            .map(view)
            .ok_or_else(|| "the agent keeps no pool here (--ipam=false)".to_owned())
    };
    match path {
        "/metrics" => (
            StatusCode::OK,
            TEXT_FORMAT,
            crate::metrics::get().render(node.ipam, node.pins),
        ),
        "/v1/enis" => json(pool(introspection::enis)),
        "/v1/subnets" => json(pool(introspection::subnets)),
        "/v1/pods" => json(introspection::pods(&node).map_err(|e| e.to_string())),
        "/v1/config" => json(Ok(introspection::config(&node))),
        "/v1/status" => json(introspection::status(&node).map_err(|e| e.to_string())),
        other => (
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("{other}: not served here ({PATHS})\n"),
        ),
    }
}

/// Listens on `address` and serves every connection in a task of its own; returns the address
/// bound (a port of 0 picks one).
pub async fn serve(address: SocketAddr, sources: Sources) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let sources = Arc::new(sources);
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("metrics listener: accept: {e}");
                    continue;
                }
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let service = service_fn(move |r| answer(sources.clone(), r));
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("metrics listener: connection: {e}");
                }
            });
        }
    });
    Ok(bound)
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

async fn answer(
    sources: Arc<Sources>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            format!(
                "{} {}: only GET is served\n",
                request.method(),
                request.uri().path()
            ),
        ));
    }
    let path = request.uri().path().to_owned();
    let rendered = tokio::task::spawn_blocking(move || render(&sources, &path)).await;
    Ok(match rendered {
        Ok((status, content_type, body)) => respond(status, content_type, body),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{}: rendering failed: {e}\n", request.uri().path()),
        ),
    })
}
