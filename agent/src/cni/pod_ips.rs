//! ANNOTATE_POD_IP, with VPC CNI's meaning: an added pod gets the annotation
//! `vpc.amazonaws.com/pod-ips` with its address, which policy engines read before the pod's
//! status carries it. Best effort, as VPC CNI's: the pod is wired whether or not the API takes
//! it, and the ADD waits for the API a bounded time only.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use serde_json::json;

use crate::kube::Kube;

pub const ANNOTATION: &str = "vpc.amazonaws.com/pod-ips";

/// The longest an ADD waits for the annotation to be written.
const WAIT: Duration = Duration::from_secs(2);

pub struct PodIps {
    kube: Arc<Kube>,
}

impl PodIps {
    pub fn new(kube: Arc<Kube>) -> PodIps {
        PodIps { kube }
    }

    /// Puts `addr` on the pod `namespace/name` (nothing for a request without a pod name).
    pub async fn annotate(&self, namespace: &str, name: &str, addr: Ipv4Addr) {
        if name.is_empty() {
            return;
        }
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        let patch = json!({ "metadata": { "annotations": { ANNOTATION: addr.to_string() } } });
        match tokio::time::timeout(WAIT, self.kube.merge_patch(&path, &patch)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("pod {namespace}/{name}: annotation {ANNOTATION}: {e}"),
            Err(_) => tracing::warn!(
                "pod {namespace}/{name}: annotation {ANNOTATION}: no answer within {WAIT:?}"
            ),
        }
    }
}
