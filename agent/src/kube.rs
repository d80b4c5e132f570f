//! The Kubernetes API, for what the agent reads and writes in a cluster: its Node (labels and
//! annotations choose the ENIConfig; the effective max pods is published on it), ENIConfigs, and
//! pods' `vpc.amazonaws.com/pod-eni` annotations. A few JSON requests over HTTPS with the
//! service account's token: the agent needs no informers or typed client for that.

use std::{path::PathBuf, sync::Arc, time::Duration};

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
    ) -> Result<Arc<Kube>, String> {
        if !server.starts_with("https://") {
            return Err(format!(
                "Kubernetes API server {server:?}: an https:// URL is required"
            ));
        }
        let ca_error = |e: &dyn std::fmt::Display| format!("{}: {e}", ca_file.display());
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
            .map_err(|e| e.to_string())?
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
    pub async fn get(&self, path: &str) -> Result<Option<Value>, String> {
        match self.request(Method::GET, path, None).await {
            Ok(object) => Ok(Some(object)),
            Err((Some(StatusCode::NOT_FOUND), _)) => Ok(None),
            Err((_, e)) => Err(e),
        }
    }

    /// Applies a JSON merge patch to the object at `path`.
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, String> {
        self.request(Method::PATCH, path, Some(patch))
            .await
            .map_err(|(_, e)| e)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, (Option<StatusCode>, String)> {
        let what = format!("Kubernetes API {method} {path}");
        let fail = |status, e: &dyn std::fmt::Display| (status, format!("{what}: {e}"));
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| fail(None, &format!("token {}: {e}", self.token_file.display())))?;
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server))
            .header("authorization", format!("Bearer {}", token.trim()))
            .header("accept", "application/json")
            .header("content-type", "application/merge-patch+json")
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| fail(None, &e))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                // The connector's error hides the cause (refused, TLS) one level down.
                let cause = std::error::Error::source(&e)
                    .map(|s| format!("{e}: {s}"))
                    .unwrap_or_else(|| e.to_string());
                fail(None, &cause)
            })?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| fail(Some(status), &e))?
                .to_bytes();
            Ok((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| fail(None, &format!("no answer within {REQUEST_TIMEOUT:?}")))??;
        let object: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            // A Status object says why; 401/403 mean the service account or its RBAC is wrong.
            let message = object["message"].as_str().unwrap_or("");
            return Err(fail(Some(status), &format!("{status} {message}")));
        }
        Ok(object)
    }
}

/// A string map (labels, annotations) of an object's metadata.
pub fn metadata_map(object: &Value, field: &str) -> std::collections::BTreeMap<String, String> {
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
        let http = Kube::new("http://10.0.0.1", token.clone(), ca).unwrap_err();
        assert!(http.contains("https://"), "{http}");
        let missing = Kube::new("https://10.0.0.1", token, ca).unwrap_err();
        assert!(missing.contains("/nonexistent/ca.crt"), "{missing}");
    }
}
