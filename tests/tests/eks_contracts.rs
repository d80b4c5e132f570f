//! What EKS's controllers and scheduler act on, told by the agent through a real kube-apiserver
//! (RBAC on, the agent as deploy/rbac.yaml's service account): the CNINode features the VPC
//! resource controller (the lab's stand-in) attaches a trunk for, in the subnet and groups of
//! the ENIConfig custom networking names first, the startup taint that
//! keeps pods off a node until it can wire them, and the pods' vpc.amazonaws.com/pod-ips.

use std::{process::Stdio, time::Duration};

use eniflow_tests::{
    agent,
    cluster::wait_for,
    cni::{address, pod_args, shim_config, shim_for, PodNode as Node},
    kube::{KubeApi, CNINODES},
    lab::{Fault, Lab, LabSpec},
    netns::Netns,
    require_root,
    resource_controller::{features, ManagedNode, ResourceController, Settings, POD_ENI},
    BpffsDir,
};
use serde_json::{json, Value};

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
    assert_eq!(
        trunk.subnet, node.lab.subnets[1],
        "the trunk's subnet: {trunk:?}"
    );
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

/// ADDs pod `pod` (container `c-<pod>`) in `netns`; its address.
fn add_pod(node: &Node, pod: &str, netns: &Netns) -> String {
    let added = node.cni(
        "ADD",
        &format!("c-{pod}"),
        Some(netns),
        "eth0",
        &pod_args(pod),
    );
    assert!(added.ok, "ADD {pod}: {}", added.json);
    address(&added)
}

/// The node's ENIs in the lab's EC2 (primary excluded): (id, subnet, addresses).
fn pod_enis(lab: &Lab) -> Vec<(String, String, Vec<String>)> {
    let view = lab.view();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    view["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["instance_id"] == lab.node.id.as_str() && e["device_index"] != 0)
        .map(|e| {
            let addresses = e["private_ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(text)
                .collect();
            (text(&e["id"]), text(&e["subnet_id"]), addresses)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relabelled_node_moves_new_enis_to_the_other_eniconfig_without_a_restart() {
    require_root();
    let mut spec = LabSpec::default();
    spec.subnets.push(eniflow_tests::lab::SubnetSpec {
        cidr: "10.0.3.0/24".into(),
        az: "us-west-2a".into(),
        tags: vec![],
    });
    let lab = Lab::start(spec).await.unwrap_or_else(|e| panic!("{e}"));
    let (old_subnet, new_subnet) = (lab.subnets[1].clone(), lab.subnets[2].clone());
    let label = "k8s.amazonaws.com/eniConfig";
    let node = json!({ "metadata": { "name": NODE, "labels": { label: "pods-a" } } });
    let kube = KubeApi::with_node(&lab.node.netns, node);
    kube.create_eni_config("pods-a", &old_subnet, &[]);
    kube.create_eni_config("pods-b", &new_subnet, &[]);
    kube.create_cninode(NODE, json!([]));
    kube.create(
        "/api/v1/namespaces/default/serviceaccounts",
        &json!({ "metadata": { "name": "default" } }).to_string(),
    );
    let args = kube.agent_args(NODE);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [
        ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
        ("IP_COOLDOWN_PERIOD", "0"),
        // One pod ENI at a time (an m5.large has slots for two besides the primary).
        ("WARM_IP_TARGET", "2"),
    ];
    let node = Node::on_lab(lab, &args, &env).await;
    let add = |pod: &str, netns: &Netns| add_pod(&node, pod, netns);
    let in_subnet = |ip: &str, subnet: &str| {
        pod_enis(&node.lab)
            .iter()
            .any(|(_, s, addresses)| s == subnet && addresses.iter().any(|a| a == ip))
    };
    let old_pod = Netns::new("pod");
    let old_ip = add("old", &old_pod);
    assert!(
        in_subnet(&old_ip, &old_subnet),
        "{old_ip}: {:?}",
        pod_enis(&node.lab)
    );
    let old_enis: Vec<String> = pod_enis(&node.lab)
        .into_iter()
        .filter(|(_, s, _)| *s == old_subnet)
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(old_enis.len(), 1, "{:?}", pod_enis(&node.lab));

    // Relabelled: no restart, yet the next ENI is pods-b's, and the CNINode says so.
    let patch = json!({ "metadata": { "labels": { label: "pods-b" } } });
    let (status, answer) = kube.call(
        "PATCH",
        &format!("/api/v1/nodes/{NODE}"),
        Some(&patch.to_string()),
    );
    assert_eq!(status, 200, "{answer}");
    wait_for(
        "an ENI in pods-b's subnet",
        Duration::from_secs(30),
        || pod_enis(&node.lab).iter().any(|(_, s, _)| *s == new_subnet),
        || format!("{:?}", pod_enis(&node.lab)),
    );
    let cninode = || kube.call("GET", &cninode_path(), None).1;
    wait_for(
        "CustomNetworking=pods-b on the CNINode",
        Duration::from_secs(30),
        || features(&cninode()).contains(&("CustomNetworking".into(), "pods-b".into())),
        || cninode().to_string(),
    );
    let new_pod = Netns::new("pod");
    let new_ip = add("new", &new_pod);
    assert!(
        in_subnet(&new_ip, &new_subnet),
        "{new_ip}: {:?}",
        pod_enis(&node.lab)
    );
    // The old ENI stays while it holds a pod; once the pod is gone it is given back.
    assert!(
        pod_enis(&node.lab)
            .iter()
            .any(|(id, _, _)| *id == old_enis[0]),
        "the old ENI went with its pod on it"
    );
    let deleted = node.cni("DEL", "c-old", Some(&old_pod), "eth0", &pod_args("old"));
    assert!(deleted.ok, "DEL old: {}", deleted.json);
    wait_for(
        "the old ENI given back",
        Duration::from_secs(60),
        || {
            !pod_enis(&node.lab)
                .iter()
                .any(|(id, _, _)| *id == old_enis[0])
        },
        || format!("{:?}", pod_enis(&node.lab)),
    );
    assert!(
        in_subnet(&new_ip, &new_subnet),
        "the new pod's address moved"
    );
}

/// Makes EC2 refuse every address (assign and new ENI) with `code`, replacing earlier faults.
fn refuse_addresses(lab: &Lab, code: &str, status: u16) {
    lab.emulator.clear_faults();
    for action in ["AssignPrivateIpAddresses", "CreateNetworkInterface"] {
        lab.emulator.fault(&Fault {
            action: action.into(),
            code: Some(code.into()),
            status,
            count: 100_000,
            latency_ms: 0,
            cut: false,
        });
    }
}

/// The agent on the lab's node as `kube`'s node, started without waiting for its pool (which
/// may stay empty); its files, pins and process.
fn start_agent(
    lab: &Lab,
    kube: &KubeApi,
    what: &str,
) -> (agent::PoolFiles, BpffsDir, agent::Agent) {
    let files = agent::PoolFiles::new(what);
    let mut args = files.args();
    args.extend(kube.agent_args(NODE));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let root = eniflow_tests::bpffs_dir(what);
    let agent = agent::Agent::start_logging(
        &lab.node.netns.path(),
        &root,
        &args,
        agent::LAB_NODE_ENV,
        Stdio::inherit(),
    );
    (files, root, agent)
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
    refuse_addresses(&lab, "InternalError", 500);
    let (files, _root, _agent) = start_agent(&lab, &kube, "eks-taint");
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

/// The Events on `kind` `name` with `reason`, as `kubectl describe` finds them.
fn events(kube: &KubeApi, kind: &str, name: &str, reason: &str) -> Vec<Value> {
    let path = format!(
        "/api/v1/namespaces/default/events?fieldSelector=involvedObject.kind={kind},involvedObject.name={name},reason={reason}"
    );
    let (status, list) = kube.call("GET", &path, None);
    assert_eq!(status, 200, "{list}");
    list["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_refusals_and_a_full_subnet_become_events_on_the_node_and_the_pod_once_per_burst() {
    require_root();
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let kube = KubeApi::with_node(&lab.node.netns, json!({ "metadata": { "name": NODE } }));
    kube.create(
        "/api/v1/namespaces/default/serviceaccounts",
        &json!({ "metadata": { "name": "default" } }).to_string(),
    );
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "starved", "namespace": "default" },
        "spec": {
            "nodeName": NODE,
            "automountServiceAccountToken": false,
            "containers": [{ "name": "c", "image": "lab" }],
        },
    });
    let created = kube.create("/api/v1/namespaces/default/pods", &pod.to_string());
    let uid = created["metadata"]["uid"].clone();
    // The node's role may not assign addresses: every refill pass is refused.
    refuse_addresses(&lab, "UnauthorizedOperation", 403);
    let (files, _root, _agent) = start_agent(&lab, &kube, "eks-events");
    let add = |container: &str| {
        let netns = Netns::new("pod");
        let answer = shim_for(
            &files,
            "ADD",
            container,
            &netns.path(),
            "eth0",
            &pod_args("starved"),
            &shim_config(&files),
        );
        assert!(!answer.ok, "ADD with an empty pool: {}", answer.json);
    };
    let refused = |action: &str| {
        let calls = lab.emulator.calls();
        calls.get(action).copied().unwrap_or(0)
    };
    wait_for(
        "three refused refills",
        Duration::from_secs(30),
        || refused("AssignPrivateIpAddresses") >= 3,
        || format!("{:?}", lab.emulator.calls()),
    );
    add("c-starved-1");
    add("c-starved-2");
    let on_node = || events(&kube, "Node", NODE, "EC2PermissionDenied");
    let on_pod = || events(&kube, "Pod", "starved", "EC2PermissionDenied");
    wait_for(
        "EC2PermissionDenied on the node and the pod",
        Duration::from_secs(20),
        || !on_node().is_empty() && !on_pod().is_empty(),
        || format!("{:?} {:?}", on_node(), on_pod()),
    );
    // One Event each for the burst, counted; the action named; the pod's found by its uid.
    let node_events = on_node();
    assert_eq!(node_events.len(), 1, "{node_events:?}");
    assert_eq!(node_events[0]["type"], "Warning");
    let message = node_events[0]["message"].as_str().unwrap();
    assert!(message.contains("AssignPrivateIpAddresses"), "{message}");
    let pod_events = on_pod();
    assert_eq!(pod_events.len(), 1, "two ADDs, one Event: {pod_events:?}");
    assert_eq!(pod_events[0]["involvedObject"]["uid"], uid);
    assert!(
        pod_events[0]["message"]
            .as_str()
            .unwrap()
            .contains("AssignPrivateIpAddresses"),
        "{pod_events:?}"
    );
    wait_for(
        "the repeats counted",
        Duration::from_secs(30),
        || on_node()[0]["count"].as_u64() >= Some(2) && on_pod()[0]["count"].as_u64() == Some(2),
        || format!("{:?} {:?}", on_node(), on_pod()),
    );

    // The subnet is full: the node says so, and so does the pod that finds no address.
    refuse_addresses(&lab, "InsufficientFreeAddressesInSubnet", 400);
    let full_node = || events(&kube, "Node", NODE, "SubnetFull");
    wait_for(
        "SubnetFull on the node",
        Duration::from_secs(30),
        || !full_node().is_empty(),
        || format!("{:?}", lab.emulator.calls()),
    );
    add("c-starved-3");
    let full_pod = || events(&kube, "Pod", "starved", "NoAddressAvailable");
    wait_for(
        "NoAddressAvailable on the pod",
        Duration::from_secs(20),
        || !full_pod().is_empty(),
        || format!("{:?}", full_pod()),
    );
    let message = full_pod()[0]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("no free addresses"), "{message}");
    assert_eq!(full_node().len(), 1, "{:?}", full_node());
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
    let add = add_pod;
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
