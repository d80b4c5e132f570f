//! When a node stops repelling pods: kubelet may register the node with the taint
//! `eniflow.io/agent-not-ready:NoSchedule` (`--register-with-taints`), and the agent removes it
//! once the node can wire a pod: it serves the CNI *and* its pool holds a free address. Either
//! alone is not enough: without the CNI a pod's sandbox fails to start, and without an address
//! its ADD fails; both end in FailedCreatePodSandBox retries, which the taint exists to spare.
//! The agent never adds the taint: a node registered without it behaves as before.

use std::{sync::Arc, time::Duration};

use hyper::StatusCode;
use serde_json::{json, Value};

use crate::{
    ipam::Ipam,
    kube::{Kube, KubeError},
};

pub const KEY: &str = "eniflow.io/agent-not-ready";

/// How often the pool is looked at while it has no free address.
const POOL_POLL: Duration = Duration::from_millis(200);

/// `taints` (a Node's `spec.taints`) without the startup taint; None when it is not there.
pub fn without_startup_taint(taints: &[Value]) -> Option<Vec<Value>> {
    let kept: Vec<Value> = taints.iter().filter(|t| t["key"] != KEY).cloned().collect();
    (kept.len() < taints.len()).then_some(kept)
}

/// Called once the agent serves the CNI: in the background, waits for a free address in the
/// pool, then removes the startup taint from the node (retried until the API takes it).
pub fn remove_when_ready(kube: Arc<Kube>, node: String, ipam: Arc<Ipam>) {
    tokio::spawn(async move {
        ipam.first_refill().await;
        while ipam.counts().available() == 0 {
            tokio::time::sleep(POOL_POLL).await;
        }
        let mut wait = Duration::from_millis(500);
        loop {
            match remove(&kube, &node).await {
                Ok(true) => {
                    tracing::info!("node {node}: can wire pods; removed the taint {KEY}");
                    return;
                }
                Ok(false) => return,
                Err(e) => tracing::warn!(
                    "node {node}: cannot remove the taint {KEY} yet (again in {wait:?}): {e}"
                ),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    });
}

/// One attempt: true if the taint was removed, false if the node did not carry it. The patch
/// carries the resourceVersion the taints were read at, so another writer's taint is never
/// lost: a conflict reads them again.
async fn remove(kube: &Kube, node: &str) -> Result<bool, KubeError> {
    let path = format!("/api/v1/nodes/{node}");
    loop {
        let object = kube
            .get(&path)
            .await?
            .ok_or_else(|| KubeError::new(format!("node {node:?} does not exist")))?;
        let taints = object["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(kept) = without_startup_taint(&taints) else {
            return Ok(false);
        };
        let patch = json!({
            "metadata": { "resourceVersion": object["metadata"]["resourceVersion"] },
            "spec": { "taints": kept },
        });
        match kube.merge_patch(&path, &patch).await {
            Ok(_) => return Ok(true),
            Err(e) if e.status == Some(StatusCode::CONFLICT) => {
                tracing::debug!("node {node} changed under the patch; reading it again");
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_startup_taint_goes() {
        let ours = json!({ "key": KEY, "effect": "NoSchedule" });
        let other = json!({ "key": "dedicated", "value": "gpu", "effect": "NoSchedule" });
        assert_eq!(
            without_startup_taint(&[other.clone(), ours]),
            Some(vec![other.clone()])
        );
        assert_eq!(without_startup_taint(&[other]), None);
        assert_eq!(without_startup_taint(&[]), None);
    }
}
