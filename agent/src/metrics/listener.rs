//! The HTTP listener for Prometheus (`GET /metrics`), on localhost unless told otherwise.

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

use crate::{datapath::Pins, ipam::Ipam};

/// What a scrape reads.
pub struct Sources {
    /// None when the agent runs without a pool (--ipam=false).
    pub ipam: Option<Arc<Ipam>>,
    pub pins: Pins,
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
                    log::warn!("metrics listener: accept: {e}");
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
                    log::debug!("metrics listener: connection: {e}");
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
    match request.uri().path() {
        "/metrics" => {
            // Reading the pinned maps is a few syscalls per entry: off the runtime's threads.
            let rendered = tokio::task::spawn_blocking(move || {
                crate::metrics::get().render(sources.ipam.as_deref(), &sources.pins)
            })
            .await;
            Ok(match rendered {
                Ok(text) => respond(StatusCode::OK, TEXT_FORMAT, text),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("rendering the metrics failed: {e}\n"),
                ),
            })
        }
        path => Ok(respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("{path}: not served here (try /metrics)\n"),
        )),
    }
}
