//! What the node asks of EKS's VPC resource controller, through its CNINode
//! (`vpcresources.k8s.aws/v1alpha1`, one per node, created by the controller): the controller
//! attaches a trunk ENI and advertises `vpc.amazonaws.com/pod-eni` only for a node whose CNINode
//! lists `SecurityGroupsForPods`, and builds that trunk in the subnet and security groups of the
//! ENIConfig a `CustomNetworking` feature names. So `CustomNetworking` goes on first: a trunk
//! built without it keeps the node's security groups for good (they cannot be changed later).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::kube::{retry, Kube};

pub const SECURITY_GROUPS_FOR_PODS: &str = "SecurityGroupsForPods";
pub const CUSTOM_NETWORKING: &str = "CustomNetworking";

/// One entry of the CNINode's `spec.features`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    /// The ENIConfig's name for `CustomNetworking`; empty for `SecurityGroupsForPods`.
    pub value: String,
}

impl Feature {
    fn to_json(&self) -> Value {
        // The controller's type omits an empty value.
        if self.value.is_empty() {
            json!({ "name": self.name })
        } else {
            json!({ "name": self.name, "value": self.value })
        }
    }
}

/// The features the node asks for, in the order they must reach the CNINode.
pub fn wanted(custom_network: Option<&str>, pod_eni: bool) -> Vec<Feature> {
    let custom = custom_network.map(|name| Feature {
        name: CUSTOM_NETWORKING,
        value: name.to_owned(),
    });
    let pod_eni = pod_eni.then(|| Feature {
        name: SECURITY_GROUPS_FOR_PODS,
        value: String::new(),
    });
    custom.into_iter().chain(pod_eni).collect()
}

/// `features` (the CNINode's `spec.features`) with `feature` in it, a same-named one with
/// another value replaced; None when it is there already.
pub fn with_feature(features: &[Value], feature: &Feature) -> Option<Vec<Value>> {
    let same_name = |f: &&Value| f["name"] == feature.name;
    let present = features
        .iter()
        .filter(same_name)
        .any(|f| f["value"].as_str().unwrap_or("") == feature.value);
    if present {
        return None;
    }
    let mut updated: Vec<Value> = features.iter().filter(|f| !same_name(f)).cloned().collect();
    updated.push(feature.to_json());
    Some(updated)
}

/// Puts `features` on the node's CNINode, one after another, in the background: retried until
/// the API takes each (the controller may not have created the CNINode yet), each patch guarded
/// by the resourceVersion it was computed from (`Kube::update`).
pub fn advertise(kube: Arc<Kube>, node: String, features: Vec<Feature>) {
    if features.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let path = format!("/apis/vpcresources.k8s.aws/v1alpha1/cninodes/{node}");
        let cninode = format!("CNINode {node} (the VPC resource controller creates it)");
        for feature in &features {
            let change = |object: &Value| {
                let features = object["spec"]["features"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let updated = with_feature(&features, feature)?;
                Some(json!({ "spec": { "features": updated } }))
            };
            let what = format!("add feature {} to CNINode {node}", feature.name);
            let added = retry(&what, || kube.update(&path, &cninode, change)).await;
            let done = if added { "added to" } else { "already on" };
            tracing::info!("CNINode {node}: feature {} {done} it", feature.name);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_networking_comes_before_security_groups_for_pods() {
        let names: Vec<_> = wanted(Some("pods-b"), true)
            .iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, [CUSTOM_NETWORKING, SECURITY_GROUPS_FOR_PODS]);
        assert!(wanted(None, false).is_empty());
    }

    #[test]
    fn a_feature_is_added_once_and_a_changed_value_replaces_the_old() {
        let custom = |value: &str| Feature {
            name: CUSTOM_NETWORKING,
            value: value.into(),
        };
        let sgp = json!({ "name": SECURITY_GROUPS_FOR_PODS });
        let old = json!({ "name": CUSTOM_NETWORKING, "value": "pods-a" });
        let features = vec![sgp.clone(), old];
        assert_eq!(with_feature(&features, &custom("pods-a")), None);
        assert_eq!(
            with_feature(&features, &custom("pods-b")),
            Some(vec![
                sgp.clone(),
                json!({ "name": CUSTOM_NETWORKING, "value": "pods-b" })
            ])
        );
        let sgp_feature = &wanted(None, true)[0];
        assert_eq!(with_feature(std::slice::from_ref(&sgp), sgp_feature), None);
        assert_eq!(with_feature(&[], sgp_feature), Some(vec![sgp]));
    }
}
