//! Security-group pods: the branch ENI a cluster controller made for a pod, named by the pod's
//! `vpc.amazonaws.com/pod-eni` annotation (the runtime passes pod annotations to plugins that
//! declare the `io.kubernetes.cri.pod-annotations` capability). Checked field by field before
//! anything is wired; the pods holding branch ENIs are checkpointed beside the pool's.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{files::now_ms, ipam::Owner};

pub const ANNOTATION: &str = "vpc.amazonaws.com/pod-eni";
pub const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";

/// One branch ENI, as the annotation describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub eni_id: String,
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub vlan: u16,
    pub subnet: (Ipv4Addr, u8),
}

/// Why a pod's branch ENI cannot be wired (yet).
#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    /// The annotation is malformed: the field is named.
    #[error("{0}")]
    Annotation(String),
    /// Whether the pod needs a branch ENI, or which, is not known yet: the ADD is retried.
    #[error("{0}")]
    Pending(String),
    /// The annotation's VLAN is another pod's, or still cooling.
    #[error("{0}")]
    VlanBusy(String),
    #[error("{0}: {1}")]
    Checkpoint(PathBuf, String),
}

impl Branch {
    /// How the data plane reaches the branch's pod through the trunk.
    pub fn link(&self) -> crate::datapath::BranchLink {
        crate::datapath::BranchLink {
            vlan: self.vlan,
            mac: self.mac,
            gateway: crate::addressing::gateway(self.subnet),
        }
    }
}

fn field_error(field: &str, message: impl std::fmt::Display) -> BranchError {
    BranchError::Annotation(format!("annotation {ANNOTATION}: {field} {message}"))
}

fn annotation_error(message: String) -> BranchError {
    BranchError::Annotation(message)
}

/// The pod's branch ENI, if its annotations name one (the first, as VPC CNI takes it for eth0).
pub fn from_config(config: &Value) -> Result<Option<Branch>, BranchError> {
    let Some(text) = config
        .get("runtimeConfig")
        .and_then(|r| r.get(POD_ANNOTATIONS))
        .and_then(|a| a.get(ANNOTATION))
    else {
        return Ok(None);
    };
    let text = text.as_str().ok_or_else(|| {
        annotation_error(format!("annotation {ANNOTATION} is not a string: {text}"))
    })?;
    parse_annotation(text).map(Some)
}

/// The first branch ENI the annotation's text names, checked field by field.
pub fn parse_annotation(text: &str) -> Result<Branch, BranchError> {
    let list: Value = serde_json::from_str(text).map_err(|e| {
        annotation_error(format!(
            "annotation {ANNOTATION} is not JSON ({e}): {text:?}"
        ))
    })?;
    let first = list
        .as_array()
        .ok_or_else(|| {
            annotation_error(format!(
                "annotation {ANNOTATION} is not a JSON array: {text:?}"
            ))
        })?
        .first()
        .ok_or_else(|| annotation_error(format!("annotation {ANNOTATION} names no branch ENI")))?;
    let string = |field: &str| {
        first
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| field_error(field, "is missing or not a string"))
    };
    let eni_id = string("eniId")?;
    if !eni_id.starts_with("eni-") {
        return Err(field_error("eniId", format!("{eni_id:?} is not an ENI id")));
    }
    let mac_text = string("ifAddress")?;
    let mac = crate::addressing::parse_mac(mac_text)
        .ok_or_else(|| field_error("ifAddress", format!("{mac_text:?} is not a MAC address")))?;
    let ip_text = string("privateIp")?;
    let ipv4: Ipv4Addr = ip_text
        .parse()
        .map_err(|_| field_error("privateIp", format!("{ip_text:?} is not an IPv4 address")))?;
    let vlan = first
        .get("vlanId")
        .and_then(Value::as_i64)
        .ok_or_else(|| field_error("vlanId", "is missing or not a number"))?;
    if !(1..=4094).contains(&vlan) {
        return Err(field_error("vlanId", format!("{vlan} is outside 1..4094")));
    }
    let cidr_text = string("subnetCidr")?;
    let subnet = crate::addressing::parse_cidr(cidr_text)
        .ok_or_else(|| field_error("subnetCidr", format!("{cidr_text:?} is not an IPv4 CIDR")))?;
    Ok(Branch {
        eni_id: eni_id.to_owned(),
        mac,
        ipv4,
        vlan: vlan as u16,
        subnet,
    })
}

/// The extended resource the VPC resource controller's webhook adds to the containers of a pod
/// that its SecurityGroupPolicy matches: such a pod needs a branch ENI.
pub const RESOURCE: &str = "vpc.amazonaws.com/pod-eni";

/// Pods' branch ENIs read from the Kubernetes API: the controller annotates a pod shortly after
/// it is scheduled, and the runtime may have read the pod's annotations before that.
pub struct FromApi {
    kube: std::sync::Arc<crate::kube::Kube>,
    /// How long an ADD waits for the annotation of a pod that needs a branch ENI.
    wait: Duration,
    /// An ADD that waited in vain says so on the pod (Normal: the expected race).
    events: crate::events::Recorder,
}

/// How long to wait before reading the pod again when its watch failed.
const RETRY: Duration = Duration::from_millis(250);

impl FromApi {
    pub fn new(
        kube: std::sync::Arc<crate::kube::Kube>,
        wait: Duration,
        events: crate::events::Recorder,
    ) -> FromApi {
        FromApi { kube, wait, events }
    }

    /// The branch ENI of pod `namespace/name`: `None` if it needs none. A pod that requests one
    /// and is not annotated yet is watched until the annotation comes or the wait ends.
    pub async fn branch(&self, namespace: &str, name: &str) -> Result<Option<Branch>, BranchError> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        let watch =
            format!("/api/v1/namespaces/{namespace}/pods?fieldSelector=metadata.name={name}");
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // Unreadable, the pod might need its security groups: wiring it without them would
            // be wrong, so the ADD is retried.
            let pod = self.kube.get(&path).await.map_err(|e| {
                BranchError::Pending(format!(
                    "pod {namespace}/{name}: whether it needs a branch ENI is unknown: {e}"
                ))
            })?;
            let Some(pod) = pod else {
                return Ok(None); // not a pod of this cluster (a bare runtime's sandbox)
            };
            if let Some(decided) = decide(&pod, namespace, name) {
                return decided;
            }
            // Watched from the version just read, so an annotation written since is an event.
            let version = pod["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            let mut decided = None;
            let watching = self.kube.watch(&watch, version, |event| {
                decided = match event.kind.as_str() {
                    "DELETED" => Some(Ok(None)),
                    "ADDED" | "MODIFIED" => decide(&event.object, namespace, name),
                    _ => None,
                };
                decided.is_none()
            });
            match tokio::time::timeout_at(deadline, watching).await {
                Err(_) => {
                    self.events.pod(
                        namespace,
                        name,
                        crate::events::Kind::Normal,
                        "BranchENIPending",
                        format!("waiting for the VPC resource controller to give the pod its branch ENI ({ANNOTATION}); the runtime retries the sandbox"),
                    );
                    return Err(BranchError::Pending(format!(
                        "pod {namespace}/{name} requests {RESOURCE} but has no {ANNOTATION} annotation after {:?}: the VPC resource controller annotates such pods shortly after scheduling, so this is the expected race, not a fault; the runtime retries the ADD",
                        self.wait
                    )));
                }
                Ok(Ok(())) => {} // the API ended the watch: read the pod again
                Ok(Err(e)) => {
                    tracing::debug!("watch of pod {namespace}/{name}: {e}; reading it again");
                    tokio::time::sleep(RETRY).await;
                }
            }
            if let Some(decided) = decided {
                return decided;
            }
        }
    }
}

/// What `pod`'s annotation (or its not requesting a branch ENI) decides; None while it waits
/// for the controller's annotation.
fn decide(pod: &Value, namespace: &str, name: &str) -> Option<Result<Option<Branch>, BranchError>> {
    let annotations = crate::kube::metadata_map(pod, "annotations");
    if let Some(text) = annotations.get(ANNOTATION) {
        return Some(
            parse_annotation(text)
                .map(Some)
                .map_err(|e| annotation_error(format!("pod {namespace}/{name}: {e}"))),
        );
    }
    (!requests_branch(pod)).then_some(Ok(None))
}

/// Whether any container of `pod` requests or is limited to a branch ENI.
fn requests_branch(pod: &Value) -> bool {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .any(|c| {
            ["requests", "limits"]
                .iter()
                .any(|kind| c["resources"][kind].get(RESOURCE).is_some())
        })
}

/// A branch pod taken over from VPC CNI is known by its host veth alone (VPC CNI keeps no
/// record of its container): its owner's container id is this prefix and the veth's name, which
/// no runtime's id looks like. DEL finds it by the veth its request names.
const TAKEN_OVER: &str = "vpc-cni-veth:";

/// The owner under which a branch pod taken over from VPC CNI on `host_veth` is held.
pub fn taken_over_owner(host_veth: &str) -> Owner {
    Owner {
        network: super::conflist::NETWORK.to_owned(),
        container_id: format!("{TAKEN_OVER}{host_veth}"),
        ifname: "eth0".to_owned(),
    }
}

/// The host veth of a branch pod taken over from VPC CNI; None for any other owner.
pub fn taken_over_veth(owner: &Owner) -> Option<&str> {
    owner.container_id.strip_prefix(TAKEN_OVER)
}

/// A pod wired on a branch ENI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchPod {
    pub owner: Owner,
    pub branch: Branch,
    /// The trunk ENI it was wired through.
    pub trunk_eni: String,
    pub pod_namespace: String,
    pub pod_name: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Saved {
    version: u32,
    pods: Vec<BranchPod>,
    /// VLAN id → when its last pod was deleted (unix ms).
    released: BTreeMap<u16, u64>,
}

const VERSION: u32 = 1;

/// The branch pods of this node, persisted (atomically, before an ADD or DEL returns), and the
/// VLANs released recently: a VLAN is wired again only after `cooldown`, so packets still in
/// flight for a deleted pod cannot reach the next pod on that VLAN.
pub struct BranchPods {
    path: PathBuf,
    cooldown: Duration,
    saved: Mutex<Saved>,
}

impl BranchPods {
    pub fn open(path: &Path, cooldown: Duration) -> Result<BranchPods, BranchError> {
        let failed = |e: String| BranchError::Checkpoint(path.to_owned(), e);
        let saved = match std::fs::read(path) {
            Ok(bytes) => {
                let saved: Saved =
                    serde_json::from_slice(&bytes).map_err(|e| failed(e.to_string()))?;
                if saved.version != VERSION {
                    return Err(failed(format!(
                        "version {} (this agent reads {VERSION})",
                        saved.version
                    )));
                }
                saved
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved {
                version: VERSION,
                ..Saved::default()
            },
            Err(e) => return Err(failed(e.to_string())),
        };
        Ok(BranchPods {
            path: path.to_owned(),
            cooldown,
            saved: Mutex::new(saved),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Saved> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, saved: &Saved) -> Result<(), BranchError> {
        let failed = |e: String| BranchError::Checkpoint(self.path.clone(), e);
        let text = serde_json::to_vec_pretty(saved).map_err(|e| failed(e.to_string()))?;
        crate::files::write_atomically(&self.path, &text).map_err(|e| failed(e.to_string()))
    }

    pub fn get(&self, owner: &Owner) -> Option<BranchPod> {
        self.lock().pods.iter().find(|p| p.owner == *owner).cloned()
    }

    pub fn all(&self) -> Vec<BranchPod> {
        self.lock().pods.clone()
    }

    /// Records `pod` unless its VLAN is held by another pod or still cooling.
    pub fn add(&self, pod: BranchPod) -> Result<(), BranchError> {
        let mut saved = self.lock();
        if let Some(other) = saved
            .pods
            .iter()
            .find(|p| p.branch.vlan == pod.branch.vlan && p.owner != pod.owner)
        {
            return Err(BranchError::VlanBusy(format!(
                "annotation {ANNOTATION}: vlanId {} is already the VLAN of container {}",
                pod.branch.vlan, other.owner.container_id
            )));
        }
        if let Some(at) = saved.released.get(&pod.branch.vlan) {
            let until = at + self.cooldown.as_millis() as u64;
            let now = now_ms();
            if now < until {
                return Err(BranchError::VlanBusy(format!(
                    "VLAN {} was released {} ms ago; it is reused after {} s",
                    pod.branch.vlan,
                    now - at,
                    self.cooldown.as_secs()
                )));
            }
        }
        saved.pods.retain(|p| p.owner != pod.owner);
        saved.released.remove(&pod.branch.vlan);
        saved.pods.push(pod);
        self.save(&saved)
    }

    /// Forgets a branch pod whose ADD failed: it never carried traffic, its VLAN does not cool.
    pub fn forget(&self, owner: &Owner) -> Result<(), BranchError> {
        let mut saved = self.lock();
        saved.pods.retain(|p| p.owner != *owner);
        self.save(&saved)
    }

    /// Forgets the owner's branch pod, starting its VLAN's cooldown.
    pub fn remove(&self, owner: &Owner) -> Result<Option<BranchPod>, BranchError> {
        let mut saved = self.lock();
        let Some(index) = saved.pods.iter().position(|p| p.owner == *owner) else {
            return Ok(None);
        };
        let pod = saved.pods.remove(index);
        saved.released.insert(pod.branch.vlan, now_ms());
        let cooled = now_ms().saturating_sub(self.cooldown.as_millis() as u64);
        saved.released.retain(|_, at| *at > cooled);
        self.save(&saved)?;
        Ok(Some(pod))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_needs_a_branch_when_a_container_asks_for_one() {
        let pod = |resources: Value| serde_json::json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "resources": resources}]}});
        assert!(requests_branch(&pod(
            serde_json::json!({"limits": {RESOURCE: "1"}})
        )));
        assert!(requests_branch(&pod(
            serde_json::json!({"requests": {RESOURCE: "1"}})
        )));
        assert!(!requests_branch(&pod(
            serde_json::json!({"limits": {"cpu": "1"}})
        )));
        assert!(!requests_branch(&serde_json::json!({"spec": {}})));
    }
    use serde_json::json;

    fn config(annotation: &str) -> Value {
        json!({"runtimeConfig": {POD_ANNOTATIONS: {ANNOTATION: annotation}}})
    }

    fn entry(vlan: Value, mac: &str) -> String {
        json!([{"eniId": "eni-0abc", "ifAddress": mac, "privateIp": "10.0.1.50",
                "vlanId": vlan, "subnetCidr": "10.0.1.0/24"}])
        .to_string()
    }

    #[test]
    fn a_good_annotation_names_the_branch() {
        let branch = from_config(&config(&entry(json!(7), "0a:1b:2c:3d:4e:5f")))
            .unwrap()
            .unwrap();
        assert_eq!(branch.vlan, 7);
        assert_eq!(branch.mac, [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        assert_eq!(branch.ipv4, Ipv4Addr::new(10, 0, 1, 50));
        assert_eq!(from_config(&json!({})).unwrap(), None);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                entry(json!(0), "0a:1b:2c:3d:4e:5f"),
                "vlanId 0 is outside 1..4094",
            ),
            (entry(json!(4095), "0a:1b:2c:3d:4e:5f"), "vlanId 4095"),
            (entry(json!("7"), "0a:1b:2c:3d:4e:5f"), "vlanId is missing"),
            (entry(json!(7), "0a:1b:2c:3d:4e"), "ifAddress"),
            (entry(json!(7), "zz:1b:2c:3d:4e:5f"), "ifAddress"),
            ("[{".to_owned(), "is not JSON"),
            ("[]".to_owned(), "names no branch ENI"),
        ];
        for (annotation, expected) in cases {
            let err = from_config(&config(&annotation)).unwrap_err().to_string();
            assert!(err.contains(expected), "{annotation}: {err}");
        }
    }
}
