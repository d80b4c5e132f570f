//! What EKS's controllers and scheduler act on, told by the agent through a real kube-apiserver
//! (RBAC on, the agent as deploy/rbac.yaml's service account): the CNINode features the VPC
//! resource controller (the lab's stand-in) attaches a trunk for, in the subnet and groups of
//! the ENIConfig custom networking names first, the startup taint that
//! keeps pods off a node until it can wire them, and the pods' vpc.amazonaws.com/pod-ips.

use std::{process::Stdio, time::Duration};

use eniflow_tests::{
    agent,
    cluster::wait_for,
    cni::{address, pod_args, PodNode as Node},
    kube::{KubeApi, CNINODES},
    lab::{Fault, Lab, LabSpec},
    netns::Netns,
    require_root,
    resource_controller::{features, ManagedNode, ResourceController, Settings, POD_ENI},
};
use serde_json::json;

const NODE: &str = "lab-node";
const TAINT: &str = "eniflow.io/agent-not-ready";

fn cninode_path() -> String {
    format!("{CNINODES}/{NODE}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trunk_is_built_in_the_eniconfigs_subnet_and_groups_as_the_cninode_asks_once() {
    require_root();
    // The node's security groups are both; the ENIConfig's only the second.
    let lab = Lab::start(LabSpec {
        security_groups: vec!["pods".into(), "pods-b".into()],
        ..LabSpec::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let node = json!({
        "metadata": { "name": NODE, "labels": { "k8s.amazonaws.com/eniConfig": "pods-b" } }
    });
    let kube = KubeApi::with_node(&lab.node.netns, node);
    let eniconfig_groups = vec![lab.security_groups[1].clone()];
    kube.create_eni_config("pods-b", &lab.subnets[1], &eniconfig_groups);
    // As a node that ran with another ENIConfig left it: that feature's value must be replaced.
    kube.create_cninode(
        NODE,
        json!([{ "name": "CustomNetworking", "value": "pods-a" }]),
    );
    let watch = kube.watch(
        &format!("{CNINODES}?fieldSelector=metadata.name={NODE}"),
        15,
    );
    let controller = ResourceController::start(
        kube.admin(),
        lab.ec2(),
        Settings {
            nodes: vec![ManagedNode {
                name: NODE.into(),
                instance_id: lab.node.id.clone(),
                subnet: lab.subnets[lab.spec.node_subnet].clone(),
                security_groups: lab.security_groups.clone(),
            }],
            pod_eni_capacity: 9,
            branch_security_groups: lab.security_groups.clone(),
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        controller.record().trunks.is_empty(),
        "a trunk before the CNINode asked for one"
    );

    let args = kube.agent_args(NODE);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [
        ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
        ("ENABLE_POD_ENI", "true"),
    ];
    let mut node = Node::on_lab(lab, &args, &env).await;
    let wanted = vec![
        ("CustomNetworking".to_owned(), "pods-b".to_owned()),
        ("SecurityGroupsForPods".to_owned(), String::new()),
    ];
    let cninode = || kube.call("GET", &cninode_path(), None).1;
    wait_for(
        "the CNINode's features",
        Duration::from_secs(30),
        || features(&cninode()) == wanted,
        || cninode().to_string(),
    );
    wait_for(
        "the controller's trunk",
        Duration::from_secs(30),
        || controller.record().trunks.contains_key(NODE),
        || format!("{:?}", controller.record()),
    );

    // The controller acted on the CNINode as it was: the ENIConfig's subnet and groups, which a
    // trunk keeps for good.
    let trunk = controller.record().trunks[NODE].clone();
    assert_eq!(trunk.subnet, node.lab.subnets[1], "the trunk's subnet: {trunk:?}");
    assert_eq!(trunk.security_groups, eniconfig_groups, "{trunk:?}");
    assert!(trunk.features.contains(&wanted[0]), "{trunk:?}");
    let eni = node.lab.view()["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == trunk.eni.as_str())
        .cloned()
        .expect("the trunk in EC2");
    assert_eq!(eni["instance_id"], node.lab.node.id.as_str(), "{eni}");
    let capacity = || {
        let (_, object) = kube.call("GET", &format!("/api/v1/nodes/{NODE}"), None);
        object["status"]["capacity"][POD_ENI].clone()
    };
    wait_for(
        "pod-eni capacity on the Node",
        Duration::from_secs(10),
        || capacity() == "9",
        || capacity().to_string(),
    );
    // Never SecurityGroupsForPods without this node's ENIConfig beside it.
    let events = watch.join().unwrap();
    let seen: Vec<_> = events.iter().map(|e| features(&e["object"])).collect();
    assert!(seen.len() >= 3, "initial + 2 patches: {seen:?}");
    for features in &seen {
        if features.iter().any(|(n, _)| n == "SecurityGroupsForPods") {
            assert!(
                features.contains(&wanted[0]),
                "SecurityGroupsForPods before CustomNetworking=pods-b: {seen:?}"
            );
        }
    }

    // A second start finds both there and patches nothing.
    let (_, before) = kube.call("GET", &cninode_path(), None);
    node.agent.take().expect("the agent runs").stop();
    node.start_agent();
    std::thread::sleep(Duration::from_secs(2));
    let (_, after) = kube.call("GET", &cninode_path(), None);
    assert_eq!(
        before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
        "a restarted agent patched the CNINode again: {after}"
    );
    assert_eq!(controller.record().trunks.len(), 1);
    drop(controller); // before the lab it calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_taint_goes_only_once_the_node_can_wire_a_pod() {
    require_root();
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let other = json!({ "key": "dedicated", "value": "batch", "effect": "NoSchedule" });
    let node = json!({
        "metadata": { "name": NODE },
        "spec": { "taints": [ { "key": TAINT, "effect": "NoSchedule" }, other ] },
    });
    let kube = KubeApi::with_node(&lab.node.netns, node);
    let taints = || {
        let (_, node) = kube.call("GET", &format!("/api/v1/nodes/{NODE}"), None);
        node["spec"]["taints"].clone()
    };
    let tainted = || {
        taints()
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == TAINT)
    };
    // EC2 hands out no address yet: the agent serves the CNI with an empty pool.
    for action in ["AssignPrivateIpAddresses", "CreateNetworkInterface"] {
        lab.emulator.fault(&Fault {
            action: action.into(),
            code: Some("InternalError".into()),
            status: 500,
            count: 100_000,
            latency_ms: 0,
            cut: false,
        });
    }
    let args = kube.agent_args(NODE);
    let files = agent::PoolFiles::new("eks-taint");
    let mut all_args = files.args();
    all_args.extend(args);
    let all_args: Vec<&str> = all_args.iter().map(String::as_str).collect();
    let root = eniflow_tests::bpffs_dir("eks-taint");
    let _agent = agent::Agent::start_logging(
        &lab.node.netns.path(),
        &root,
        &all_args,
        agent::LAB_NODE_ENV,
        Stdio::inherit(),
    );
    assert!(
        std::path::Path::new(&files.conflist()).exists(),
        "the agent is ready but wrote no conflist"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        tainted(),
        "the taint went while the pool had no address: {}",
        taints()
    );

    lab.emulator.clear_faults();
    wait_for(
        "the startup taint to go",
        Duration::from_secs(60),
        || !tainted(),
        || taints().to_string(),
    );
    // The API's own (node.kubernetes.io/not-ready, no controller here to lift it) and the
    // operator's stay.
    let kept = taints();
    assert!(
        kept.as_array().unwrap().contains(&other),
        "another taint was touched: {kept}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_address_annotation_only_with_annotate_pod_ip() {
    require_root();
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let kube = KubeApi::with_node(&lab.node.netns, json!({ "metadata": { "name": NODE } }));
    kube.apply_deploy_file("pod-ips-rbac.yaml");
    // The pods' service account (no controller-manager here makes it).
    kube.create(
        "/api/v1/namespaces/default/serviceaccounts",
        &json!({ "metadata": { "name": "default" } }).to_string(),
    );
    for pod in ["plain", "annotated"] {
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": pod, "namespace": "default" },
            "spec": {
                "nodeName": NODE,
                "automountServiceAccountToken": false,
                "containers": [{ "name": "c", "image": "lab" }],
            },
        });
        kube.create("/api/v1/namespaces/default/pods", &object.to_string());
    }
    let args = kube.agent_args(NODE);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = Node::on_lab(lab, &args, &[]).await;
    let add = |node: &Node, pod: &str, netns: &Netns| {
        let added = node.cni(
            "ADD",
            &format!("c-{pod}"),
            Some(netns),
            "eth0",
            &pod_args(pod),
        );
        assert!(added.ok, "ADD {pod}: {}", added.json);
        address(&added)
    };
    let annotation = |pod: &str| {
        kube.annotations(&format!("/api/v1/namespaces/default/pods/{pod}"))
            ["vpc.amazonaws.com/pod-ips"]
            .clone()
    };

    let plain = Netns::new("pod");
    add(&node, "plain", &plain);
    assert!(annotation("plain").is_null(), "annotated with the knob off");

    node.agent.take().expect("the agent runs").stop();
    node.start_agent_logging(&[("ANNOTATE_POD_IP", "true")], Stdio::inherit());
    let annotated = Netns::new("pod");
    let ip = add(&node, "annotated", &annotated);
    assert_eq!(annotation("annotated"), json!(ip));
    assert!(annotation("plain").is_null());
}

#[test]
fn annotate_pod_ip_off_a_cluster_is_refused_by_name() {
    require_root();
    let ns = Netns::new("refuse");
    let root = eniflow_tests::bpffs_dir("eks-refused");
    let out = std::process::Command::new(agent::binary("eniflow-agent"))
        .arg("--netns")
        .arg(ns.path())
        .arg("--bpffs-root")
        .arg(&*root)
        .args(["run", "--ipam=false", "--interfaces", "lo"])
        .env("ANNOTATE_POD_IP", "true")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("ENIFLOW_KUBE_API_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started: {stderr}");
    assert!(
        stderr.contains("ANNOTATE_POD_IP") && stderr.contains("off a cluster"),
        "{stderr}"
    );
    assert!(!root.exists(), "pins were made before the refusal");
}
