//! The Kubernetes API, for what the agent reads, watches and writes in a cluster: its Node
//! (labels and annotations choose the ENIConfig; the effective max pods is published on it),
//! ENIConfigs, pods' `vpc.amazonaws.com/pod-eni` annotations, its CNINode and Events. JSON
//! requests and watches over HTTPS with the service account's token: no informers or typed
//! client (`watched` keeps collections up to date on these watches).

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde_json::Value;

/// One request's bound: the API server answers in milliseconds or is in trouble.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed request (or client set-up), named by method and path; the HTTP status when the API
/// answered one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct KubeError {
    pub status: Option<StatusCode>,
    pub message: String,
}

impl KubeError {
    pub(crate) fn new(message: impl Into<String>) -> KubeError {
        KubeError {
            status: None,
            message: message.into(),
        }
    }
}

pub struct Kube {
    server: String,
    /// Re-read for every request: projected service-account tokens are rotated by kubelet.
    token_file: PathBuf,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kubernetes API {}", self.server)
    }
}

impl Kube {
    /// A client of `server` (https://host:port) trusting the CAs in `ca_file`.
    pub fn new(
        server: &str,
        token_file: PathBuf,
        ca_file: &std::path::Path,
    ) -> Result<Arc<Kube>, KubeError> {
        if !server.starts_with("https://") {
            return Err(KubeError::new(format!(
                "Kubernetes API server {server:?}: an https:// URL is required"
            )));
        }
        let ca_error =
            |e: &dyn std::fmt::Display| KubeError::new(format!("{}: {e}", ca_file.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| ca_error(&e))? {
            roots
                .add(cert.map_err(|e| ca_error(&e))?)
                .map_err(|e| ca_error(&e))?;
        }
        if roots.is_empty() {
            return Err(ca_error(&"no PEM certificate in it"));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KubeError::new(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Arc::new(Kube {
            server: server.trim_end_matches('/').to_owned(),
            token_file,
            client: Client::builder(TokioExecutor::new()).build(https),
        }))
    }

    /// The object at `path`; `None` when it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, KubeError> {
        match self.request(Method::GET, path, None).await {
            Ok(object) => Ok(Some(object)),
            Err(e) if e.status == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates `object` in the collection at `path`.
    pub async fn post(&self, path: &str, object: &Value) -> Result<Value, KubeError> {
        self.request(Method::POST, path, Some(object)).await
    }

    /// Applies a JSON merge patch to the object at `path`.
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, KubeError> {
        self.request(Method::PATCH, path, Some(patch)).await
    }

    /// Reads the object at `path` (named `what` in errors), asks `change` for a merge patch of
    /// it (None: nothing to change) and applies it guarded by the resourceVersion it was read
    /// at; a conflict reads it again, so another writer's change is never lost. Returns whether
    /// it patched.
    pub async fn update(
        &self,
        path: &str,
        what: &str,
        change: impl Fn(&Value) -> Option<Value>,
    ) -> Result<bool, KubeError> {
        loop {
            let object = self
                .get(path)
                .await?
                .ok_or_else(|| KubeError::new(format!("{what} does not exist (yet)")))?;
            let Some(mut patch) = change(&object) else {
                return Ok(false);
            };
            patch["metadata"]["resourceVersion"] = object["metadata"]["resourceVersion"].clone();
            match self.merge_patch(path, &patch).await {
                Ok(_) => return Ok(true),
                Err(e) if e.status == Some(StatusCode::CONFLICT) => {
                    tracing::debug!("{what} changed under the patch; reading it again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Watches the collection at `path` (a fieldSelector allowed) from `resource_version`,
    /// handing every event to `each` until it returns false or the API ends the watch (after
    /// about WATCH_SECONDS). A version too old to watch from is an error with status 410 Gone
    /// (list again), whether the API answers it or sends it as an ERROR event.
    pub async fn watch(
        &self,
        path: &str,
        resource_version: &str,
        mut each: impl FnMut(WatchEvent) -> bool,
    ) -> Result<(), KubeError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let path = format!(
            "{path}{separator}watch=1&allowWatchBookmarks=true&resourceVersion={resource_version}&timeoutSeconds={}",
            WATCH_SECONDS.as_secs()
        );
        let (what, response) = self.send(Method::GET, &path, None).await?;
        let status = response.status();
        let fail = |status, e: &dyn std::fmt::Display| KubeError {
            status,
            message: format!("{what}: {e}"),
        };
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(status_error(&what, status, &bytes));
        }
        let mut buffer = Vec::new();
        // The API sends a bookmark about every minute: a silent watch is a dead connection.
        let idle = WATCH_SECONDS + REQUEST_TIMEOUT;
        while let Some(frame) = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| fail(None, &format!("nothing for {idle:?}")))?
        {
            let frame = frame.map_err(|e| fail(Some(status), &e))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buffer.extend_from_slice(data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let mut event: Value = serde_json::from_slice(&line)
                    .map_err(|e| fail(Some(status), &format!("not a watch event: {e}")))?;
                let kind = event["type"].as_str().unwrap_or_default().to_owned();
                let object = event["object"].take();
                if kind == "ERROR" {
                    let code = object["code"].as_u64().unwrap_or(0) as u16;
                    let message = object["message"].as_str().unwrap_or_default();
                    return Err(fail(StatusCode::from_u16(code).ok(), &message));
                }
                if !each(WatchEvent { kind, object }) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, KubeError> {
        let exchange = async {
            let (what, response) = self.send(method, path, body).await?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| KubeError {
                    status: Some(status),
                    message: format!("{what}: {e}"),
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(status_error(&what, status, &bytes));
            }
            Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                KubeError::new(format!(
                    "Kubernetes API {path}: no answer within {REQUEST_TIMEOUT:?}"
                ))
            })?
    }

    /// Sends one request and returns its response (its headers: the body is the caller's to
    /// read), named "Kubernetes API <method> <path>" for errors.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(String, hyper::Response<hyper::body::Incoming>), KubeError> {
        let what = format!("Kubernetes API {method} {path}");
        let fail = |e: &dyn std::fmt::Display| KubeError::new(format!("{what}: {e}"));
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| fail(&format!("token {}: {e}", self.token_file.display())))?;
        let content_type = if method == Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server))
            .header("authorization", format!("Bearer {}", token.trim()))
            .header("accept", "application/json")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| fail(&e))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| fail(&format!("no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| {
                // The connector's error hides the cause (refused, TLS) one level down.
                let cause = std::error::Error::source(&e)
                    .map(|s| format!("{e}: {s}"))
                    .unwrap_or_else(|| e.to_string());
                fail(&cause)
            })?;
        Ok((what, response))
    }
}

/// The error for a non-success answer: a Status object says why (401/403: the service account
/// or its RBAC is wrong).
fn status_error(what: &str, status: StatusCode, body: &[u8]) -> KubeError {
    let object: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = object["message"].as_str().unwrap_or("");
    KubeError {
        status: Some(status),
        message: format!("{what}: {status} {message}"),
    }
}

/// One event of a watch: ADDED, MODIFIED, DELETED or BOOKMARK (whose object carries only the
/// resourceVersion to go on from), and the object.
#[derive(Debug)]
pub struct WatchEvent {
    pub kind: String,
    pub object: Value,
}

/// How long one watch request asks to last; the watch is then made again from where it was.
const WATCH_SECONDS: Duration = Duration::from_secs(290);

/// A string map (labels, annotations) of an object's metadata.
pub fn metadata_map(object: &Value, field: &str) -> BTreeMap<String, String> {
    object["metadata"][field]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Where the API server is: `explicit`, else the service Kubernetes puts in every pod's
/// environment (KUBERNETES_SERVICE_HOST/PORT). `None`: not in a cluster.
pub fn server_url(explicit: Option<&str>) -> Option<String> {
    if let Some(url) = explicit.filter(|u| !u.is_empty()) {
        return Some(url.to_owned());
    }
    let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    // An IPv6 service address needs brackets in a URL.
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Some(format!("https://{host}:{port}"))
}

/// How the agent finds its cluster (all unset off a cluster).
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterArgs {
    /// The Kubernetes API server (https://host:port). Unset: KUBERNETES_SERVICE_HOST/PORT when the
    /// agent runs in a pod; else there is no cluster, and node labels, ENIConfigs and pod
    /// annotations come from the flags, --eni-configs and the CNI runtimeConfig.
    #[arg(long, env = "ENIFLOW_KUBE_API_SERVER")]
    pub kube_api_server: Option<String>,
    /// The API server's bearer token (the pod's service account token).
    #[arg(
        long,
        env = "ENIFLOW_KUBE_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub kube_token_file: PathBuf,
    /// The CAs that sign the API server's certificate.
    #[arg(
        long,
        env = "ENIFLOW_KUBE_CA_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub kube_ca_file: PathBuf,
    /// This node's name in the cluster (VPC CNI's MY_NODE_NAME, set from the downward API).
    #[arg(long, env = "MY_NODE_NAME")]
    pub node_name: Option<String>,
}

/// The cluster the agent runs in: the API and this node's name there.
pub struct Cluster {
    pub kube: Arc<Kube>,
    pub node: String,
}

/// The annotation on the Node carrying its effective max pods.
const MAX_PODS_ANNOTATION: &str = "eniflow.io/max-pods";

impl Cluster {
    /// The cluster `args` name, or the one the agent's pod is in; None off a cluster.
    pub fn connect(args: &ClusterArgs) -> Result<Option<Cluster>, KubeError> {
        let Some(server) = server_url(args.kube_api_server.as_deref()) else {
            return Ok(None);
        };
        let node = args
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                KubeError::new(
                    "in a cluster the agent needs its node's name: MY_NODE_NAME (--node-name)",
                )
            })?;
        let kube = Kube::new(&server, args.kube_token_file.clone(), &args.kube_ca_file)?;
        tracing::info!("node {node} of the cluster at {server}");
        Ok(Some(Cluster { kube, node }))
    }

    fn node_path(&self) -> String {
        format!("/api/v1/nodes/{}", self.node)
    }

    /// The node's labels and annotations.
    pub async fn node_metadata(
        &self,
    ) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>), KubeError> {
        let node = self.kube.get(&self.node_path()).await?.ok_or_else(|| {
            KubeError::new(format!(
                "node {:?} does not exist in the cluster",
                self.node
            ))
        })?;
        Ok((
            metadata_map(&node, "labels"),
            metadata_map(&node, "annotations"),
        ))
    }

    /// Puts the node's effective max pods on its Node, for whatever configures kubelet from it;
    /// in the background, retried until the API takes it (at start the API may not be reachable
    /// yet: kube-proxy may still be writing the rules for its Service address).
    pub fn publish_max_pods(&self, max_pods: u32) {
        let (kube, node, path) = (self.kube.clone(), self.node.clone(), self.node_path());
        let patch = serde_json::json!({
            "metadata": { "annotations": { MAX_PODS_ANNOTATION: max_pods.to_string() } }
        });
        tokio::spawn(async move {
            let what = format!("annotate node {node} with max pods");
            retry(&what, || kube.merge_patch(&path, &patch)).await;
            tracing::info!("max pods {max_pods} annotated on node {node}");
        });
    }
}

/// Runs `attempt` until it succeeds, backing off from 0.5 s to 30 s between tries and logging
/// each failure as "cannot <what> yet"; returns what it succeeded with.
pub async fn retry<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, KubeError>>,
{
    let mut wait = Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(e) => tracing::warn!("cannot {what} yet (again in {wait:?}): {e}"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_maps_skip_what_is_not_a_string() {
        let node = serde_json::json!({"metadata": {"labels": {"a": "1", "b": 2}}});
        let labels = metadata_map(&node, "labels");
        assert_eq!(labels.len(), 1);
        assert_eq!(labels["a"], "1");
        assert!(metadata_map(&node, "annotations").is_empty());
    }

    #[test]
    fn plain_http_and_a_missing_ca_are_refused_by_name() {
        let token = PathBuf::from("/nonexistent/token");
        let ca = std::path::Path::new("/nonexistent/ca.crt");
        let http = Kube::new("http://10.0.0.1", token.clone(), ca)
            .unwrap_err()
            .to_string();
        assert!(http.contains("https://"), "{http}");
        let missing = Kube::new("https://10.0.0.1", token, ca)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/ca.crt"), "{missing}");
    }
}
