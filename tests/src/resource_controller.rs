//! The lab's stand-in for EKS's VPC resource controller, as far as eniflow's contract with it
//! goes: it gives each node a CNINode, attaches a trunk ENI (through the emulator's EC2) only
//! once the CNINode lists `SecurityGroupsForPods`, in the subnet and security groups of the
//! ENIConfig a `CustomNetworking` feature names (else the node's), advertises
//! `vpc.amazonaws.com/pod-eni` on the Node, and gives each scheduled pod that requests that
//! resource a branch ENI on the trunk and the `vpc.amazonaws.com/pod-eni` annotation.
//!
//! Level-triggered, as controllers are: watches of Nodes, CNINodes and Pods only wake it, and
//! each pass reads what it acts on. What it did is recorded for the tests.

use std::{
    collections::BTreeMap,
    io::BufRead,
    process::Child,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use aws_sdk_ec2::Client;
use serde_json::{json, Value};

use crate::kube::{Admin, CNINODES};

pub const POD_ENI: &str = "vpc.amazonaws.com/pod-eni";
const HAS_TRUNK_LABEL: &str = "vpc.amazonaws.com/has-trunk-attached";
const ENICONFIGS: &str = "/apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs";

/// A node the stand-in manages: its Node name, its instance and where its primary ENI is.
#[derive(Clone, Debug)]
pub struct ManagedNode {
    pub name: String,
    pub instance_id: String,
    pub subnet: String,
    pub security_groups: Vec<String>,
}

/// A trunk the stand-in attached, and the CNINode's features when it decided to.
#[derive(Clone, Debug)]
pub struct Trunk {
    pub eni: String,
    pub subnet: String,
    pub security_groups: Vec<String>,
    pub features: Vec<(String, String)>,
}

/// A branch ENI made for a pod.
#[derive(Clone, Debug)]
pub struct Branch {
    pub node: String,
    pub pod: String,
    pub uid: String,
    pub eni: String,
    pub vlan: i32,
    pub ip: String,
}

#[derive(Clone, Debug, Default)]
pub struct Record {
    /// By node name.
    pub trunks: BTreeMap<String, Trunk>,
    pub branches: Vec<Branch>,
}

pub struct ResourceController {
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    watches: Arc<Mutex<Vec<Child>>>,
    thread: Option<JoinHandle<()>>,
}

/// What the stand-in is told at start.
pub struct Settings {
    pub nodes: Vec<ManagedNode>,
    /// The `vpc.amazonaws.com/pod-eni` capacity a trunk node advertises (the controller's
    /// branch-interface limit for the instance type: 9 for an m5.large).
    pub pod_eni_capacity: u32,
    /// The security groups of every branch ENI (a SecurityGroupPolicy matching every pod).
    pub branch_security_groups: Vec<String>,
}

impl ResourceController {
    /// Installs the CNINode CRD and starts the stand-in against `api` and `ec2`.
    pub fn start(api: Admin, ec2: Client, settings: Settings) -> ResourceController {
        crate::kube::install_cninode_crd(&api);
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let watches = Arc::new(Mutex::new(Vec::new()));
        let (wake, woken) = mpsc::channel();
        for collection in ["/api/v1/nodes", CNINODES, "/api/v1/pods"] {
            watch(&api, collection, wake.clone(), &stop, &watches);
        }
        let thread = {
            let (record, stop) = (record.clone(), stop.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                let mut controller = Controller {
                    api,
                    ec2,
                    settings,
                    record,
                    next_vlan: 1,
                };
                while !stop.load(Ordering::Relaxed) {
                    runtime.block_on(controller.pass());
                    // Woken by a watch event, else a pass a second anyway.
                    let _ = woken.recv_timeout(Duration::from_secs(1));
                    while woken.try_recv().is_ok() {}
                }
            })
        };
        ResourceController {
            record,
            stop,
            watches,
            thread: Some(thread),
        }
    }

    /// What it has done so far.
    pub fn record(&self) -> Record {
        self.record.lock().unwrap().clone()
    }
}

impl Drop for ResourceController {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for child in self.watches.lock().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Watches `collection` in a thread of its own, sending a wake-up for every event; a watch the
/// API ends is started again from the newest state.
fn watch(
    api: &Admin,
    collection: &'static str,
    wake: mpsc::Sender<()>,
    stop: &Arc<AtomicBool>,
    children: &Arc<Mutex<Vec<Child>>>,
) {
    let (api, stop, children) = (api.clone(), stop.clone(), children.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let mut curl = api.watch_stream(collection, "", 300);
            let stdout = curl.stdout.take().expect("curl's stdout");
            children.lock().unwrap().push(curl);
            for _line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if wake.send(()).is_err() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

struct Controller {
    api: Admin,
    ec2: Client,
    settings: Settings,
    record: Arc<Mutex<Record>>,
    next_vlan: i32,
}

impl Controller {
    async fn pass(&mut self) {
        for node in self.settings.nodes.clone() {
            self.reconcile_node(&node).await;
            self.reconcile_pods(&node).await;
        }
    }

    async fn reconcile_node(&mut self, node: &ManagedNode) {
        let (status, object) = self
            .api
            .call("GET", &format!("/api/v1/nodes/{}", node.name), None);
        if status != 200 {
            return; // not registered yet
        }
        let cninode_path = format!("{CNINODES}/{}", node.name);
        let (status, cninode) = self.api.call("GET", &cninode_path, None);
        if status == 404 {
            let cninode = json!({
                "apiVersion": "vpcresources.k8s.aws/v1alpha1",
                "kind": "CNINode",
                "metadata": { "name": node.name },
                "spec": { "features": [] },
            });
            self.api.call("POST", CNINODES, Some(&cninode.to_string()));
            return;
        }
        let features = features(&cninode);
        let wants_trunk = features.iter().any(|(n, _)| n == "SecurityGroupsForPods")
            || object["metadata"]["labels"][HAS_TRUNK_LABEL] == "true";
        let has_trunk = self.record.lock().unwrap().trunks.contains_key(&node.name);
        if wants_trunk && !has_trunk {
            self.attach_trunk(node, features).await;
        }
        if self.record.lock().unwrap().trunks.contains_key(&node.name)
            && object["status"]["capacity"][POD_ENI].is_null()
        {
            // kubelet copies capacity into allocatable for extended resources.
            let capacity = self.settings.pod_eni_capacity.to_string();
            let patch = json!({ "status": { "capacity": { POD_ENI: capacity } } });
            let path = format!("/api/v1/nodes/{}/status", node.name);
            self.api.call("PATCH", &path, Some(&patch.to_string()));
        }
    }

    /// The trunk, in the subnet and security groups `CustomNetworking`'s ENIConfig names.
    async fn attach_trunk(&mut self, node: &ManagedNode, features: Vec<(String, String)>) {
        let custom = features.iter().find(|(n, _)| n == "CustomNetworking");
        let (subnet, security_groups) = match custom {
            Some((_, name)) => {
                let (status, config) = self.api.call("GET", &format!("{ENICONFIGS}/{name}"), None);
                if status != 200 {
                    return; // the controller waits for the ENIConfig
                }
                let groups: Vec<String> = config["spec"]["securityGroups"]
                    .as_array()
                    .map(|g| {
                        g.iter()
                            .filter_map(|g| g.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let subnet = config["spec"]["subnet"].as_str().unwrap_or_default();
                let groups = if groups.is_empty() {
                    node.security_groups.clone()
                } else {
                    groups
                };
                (subnet.to_owned(), groups)
            }
            None => (node.subnet.clone(), node.security_groups.clone()),
        };
        let eni = crate::lab::new_trunk(&self.ec2, &subnet, &security_groups).await;
        let device_index = next_device_index(&self.ec2, &node.instance_id).await;
        let attached = self
            .ec2
            .attach_network_interface()
            .network_interface_id(&eni)
            .instance_id(&node.instance_id)
            .device_index(device_index)
            .send()
            .await;
        if attached.is_err() {
            // The agent took that device index meanwhile: as the controller, try again later.
            let _ = self
                .ec2
                .delete_network_interface()
                .network_interface_id(&eni)
                .send()
                .await;
            return;
        }
        let label = json!({ "metadata": { "labels": { HAS_TRUNK_LABEL: "true" } } });
        let path = format!("/api/v1/nodes/{}", node.name);
        self.api.call("PATCH", &path, Some(&label.to_string()));
        let trunk = Trunk {
            eni,
            subnet,
            security_groups,
            features,
        };
        self.record
            .lock()
            .unwrap()
            .trunks
            .insert(node.name.clone(), trunk);
    }

    /// Branch ENIs for the node's pods that request one; those of deleted pods deleted.
    async fn reconcile_pods(&mut self, node: &ManagedNode) {
        let Some(trunk) = self.record.lock().unwrap().trunks.get(&node.name).cloned() else {
            return;
        };
        let path = format!("/api/v1/pods?fieldSelector=spec.nodeName={}", node.name);
        let (status, pods) = self.api.call("GET", &path, None);
        if status != 200 {
            return;
        }
        let pods = pods["items"].as_array().cloned().unwrap_or_default();
        for pod in &pods {
            let annotated = !pod["metadata"]["annotations"][POD_ENI].is_null();
            if requests_pod_eni(pod) && !annotated {
                self.give_branch(node, pod, &trunk).await;
            }
        }
        let live: Vec<&str> = pods
            .iter()
            .filter_map(|p| p["metadata"]["uid"].as_str())
            .collect();
        let gone: Vec<Branch> = {
            let mut record = self.record.lock().unwrap();
            let (gone, kept) = record
                .branches
                .drain(..)
                .partition(|b| b.node == node.name && !live.contains(&b.uid.as_str()));
            record.branches = kept;
            gone
        };
        for branch in gone {
            // The pod is gone; its VLAN is never handed out again (the agent cools VLANs).
            let _ = self
                .ec2
                .delete_network_interface()
                .network_interface_id(&branch.eni)
                .send()
                .await;
        }
    }

    async fn give_branch(&mut self, node: &ManagedNode, pod: &Value, trunk: &Trunk) {
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let vlan = self.next_vlan;
        self.next_vlan += 1;
        let groups = &self.settings.branch_security_groups;
        let eni = crate::lab::new_branch(&self.ec2, &trunk.subnet, &trunk.eni, vlan, groups).await;
        let id = eni.network_interface_id.clone().expect("an ENI id");
        let cidr = self
            .ec2
            .describe_subnets()
            .subnet_ids(&trunk.subnet)
            .send()
            .await
            .expect("DescribeSubnets")
            .subnets
            .and_then(|mut s| s.pop())
            .and_then(|s| s.cidr_block)
            .expect("the subnet's CIDR");
        let ip = eni.private_ip_address.clone().expect("an address");
        let annotation = json!([{
            "eniId": id,
            "ifAddress": eni.mac_address,
            "privateIp": ip,
            "vlanId": vlan,
            "subnetCidr": cidr,
        }]);
        let patch = json!({ "metadata": { "annotations": { POD_ENI: annotation.to_string() } } });
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        let (status, answer) = self.api.call("PATCH", &path, Some(&patch.to_string()));
        assert_eq!(status, 200, "annotate pod {namespace}/{name}: {answer}");
        self.record.lock().unwrap().branches.push(Branch {
            node: node.name.clone(),
            pod: format!("{namespace}/{name}"),
            uid: pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            eni: id,
            vlan,
            ip,
        });
    }
}

/// The (name, value) pairs of a CNINode's features.
pub fn features(cninode: &Value) -> Vec<(String, String)> {
    cninode["spec"]["features"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|f| {
                    let text = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
                    (text("name"), text("value"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether any of the pod's containers requests a branch ENI.
fn requests_pod_eni(pod: &Value) -> bool {
    pod["spec"]["containers"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            !c["resources"]["limits"][POD_ENI].is_null()
                || !c["resources"]["requests"][POD_ENI].is_null()
        })
    })
}

/// The device index after the highest one attached to `instance`.
async fn next_device_index(ec2: &Client, instance: &str) -> i32 {
    let reservations = ec2
        .describe_instances()
        .instance_ids(instance)
        .send()
        .await
        .expect("DescribeInstances")
        .reservations
        .unwrap_or_default();
    let used = reservations
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.network_interfaces())
        .filter_map(|n| n.attachment.as_ref()?.device_index)
        .max()
        .unwrap_or(0);
    used + 1
}
