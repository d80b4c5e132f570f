//! The agent in a cluster (a real kube-apiserver on the lab node, RBAC on, the agent as
//! deploy/rbac.yaml's service account): custom networking's ENIConfig is the one the Node's
//! label names, read from the API, and the node's max pods is published on its Node.

use std::{path::Path, process::Command};

use eniflow_tests::{
    agent::{self, PoolFiles, LAB_NODE_ENV},
    bpffs_dir,
    cni::{address, pings, pod_args, PodNode as Node},
    kube::KubeApi,
    lab::{Lab, LabSpec},
    netns::Netns,
    require_root,
};
use serde_json::json;

const CUSTOM: &[(&str, &str)] = &[("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_networking_takes_the_nodes_eniconfig_from_the_api_and_max_pods_goes_on_the_node() {
    require_root();
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let node = json!({
        "metadata": { "name": "lab-node", "labels": { "k8s.amazonaws.com/eniConfig": "pods-b" } }
    });
    let kube = KubeApi::with_node(&lab.node.netns, node);
    kube.create_eni_config("default", &lab.subnets[0], &[]);
    let args = kube.agent_args("lab-node");

    // The ENIConfig the label names does not exist yet: the agent refuses to start, naming it,
    // and pins and publishes nothing.
    let root = bpffs_dir("kube-node-refused");
    let files = PoolFiles::new("kube-node-refused");
    let out = Command::new("timeout")
        .arg("30")
        .arg(agent::binary("eniflow-agent"))
        .arg("--netns")
        .arg(lab.node.netns.path())
        .arg("--bpffs-root")
        .arg(&*root)
        .arg("run")
        .args(files.args())
        .args(&args)
        .envs(LAB_NODE_ENV.iter().chain(CUSTOM).copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started: {stderr}");
    assert!(
        stderr.contains("ENIConfig \"pods-b\", chosen for this node, does not exist"),
        "{stderr}"
    );
    assert!(!root.exists() && !Path::new(&files.max_pods()).exists());
    assert!(kube.annotations("/api/v1/nodes/lab-node").is_null());

    // Once it exists, pods take addresses from its subnet, never from the primary ENI's.
    kube.create_eni_config("pods-b", &lab.subnets[1], &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::on_lab(lab, &args, CUSTOM).await;
    let pod = Netns::new("pod");
    let added = node.cni("ADD", "c-custom", Some(&pod), "eth0", &pod_args("custom"));
    assert!(added.ok, "{}", added.json);
    let ip = address(&added);
    assert!(
        ip.starts_with("10.0.2."),
        "{ip} is not in pods-b's subnet 10.0.2.0/24"
    );
    // At once: the ADD answered only when the pod's ENI was set up on the node, so its entry
    // already names that ENI (0 would mean the stack routes it until the watcher catches up).
    let entry = node
        .pod_entry(&ip)
        .expect("the pod's entry right after ADD");
    let primary = node.lab.node.netns.ifindex("eth0");
    assert!(
        entry["eni_ifindex"] != 0 && entry["eni_ifindex"] != primary,
        "the pod is not on its own ENI right after ADD: {entry}"
    );
    for host in &node.lab.hosts {
        assert!(pings(&pod, &host.primary_ip), "pod -> {}", host.primary_ip);
    }

    // Max pods, as written to the file, is on the Node (custom networking: the primary ENI
    // carries no pods, so m5.large's 29 becomes 20).
    let file = std::fs::read_to_string(node.files.max_pods()).unwrap();
    assert_eq!(file.trim(), "20");
    let annotations = kube.annotations("/api/v1/nodes/lab-node");
    assert_eq!(
        annotations["eniflow.io/max-pods"],
        file.trim(),
        "{annotations}"
    );
}
