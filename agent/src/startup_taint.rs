//! When a node stops repelling pods: kubelet may register the node with the taint
//! `eniflow.io/agent-not-ready:NoSchedule` (`--register-with-taints`), and the agent removes it
//! once the node can wire a pod: it serves the CNI *and* its pool holds a free address. Either
//! alone is not enough: without the CNI a pod's sandbox fails to start, and without an address
//! its ADD fails; both end in FailedCreatePodSandBox retries, which the taint exists to spare.
//! The agent never adds the taint: a node registered without it behaves as before.

use std::{sync::Arc, time::Duration};

use serde_json::{json, Value};

use crate::{
    ipam::Ipam,
    kube::{retry, Kube},
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
/// pool, then removes the startup taint from the node (retried until the API takes it; the patch
/// guarded by the resourceVersion the taints were read at, so another writer's taint is never
/// lost: `Kube::update`).
pub fn remove_when_ready(kube: Arc<Kube>, node: String, ipam: Arc<Ipam>) {
    tokio::spawn(async move {
        ipam.first_refill().await;
        while ipam.counts().available() == 0 {
            tokio::time::sleep(POOL_POLL).await;
        }
        let path = format!("/api/v1/nodes/{node}");
        let change = |object: &Value| {
            let taints = object["spec"]["taints"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let kept = without_startup_taint(&taints)?;
            Some(json!({ "spec": { "taints": kept } }))
        };
        let what = format!("remove the taint {KEY} from node {node}");
        let node_name = format!("node {node:?}");
        if retry(&what, || kube.update(&path, &node_name, change)).await {
            tracing::info!("node {node}: can wire pods; removed the taint {KEY}");
        }
    });
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
