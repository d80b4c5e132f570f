//! eniflow installed as operators install it, on real Kubernetes: `kubectl apply -k deploy/`
//! (through an overlay that only points the agent at the lab's EC2 and API) on a lab node run by a
//! real kubelet and containerd, with the scheduler and controller-manager placing real workloads.

use std::time::Duration;

use eniflow_tests::{
    agent,
    cluster::{lab_agent_env, wait_for, ControlPlane, KubeletNode},
    images::{self, BUSYBOX_IMAGE},
    lab::{Lab, LabSpec},
    require_root,
};
use serde_json::{json, Value};

/// What the DaemonSet runs (`image:` in deploy/daemonset.yaml, as the CRI names it).
fn deployed_image() -> String {
    format!("docker.io/library/eniflow:{}", env!("CARGO_PKG_VERSION"))
}

/// The node's max pods as its bootstrap computes it, before kubelet starts.
fn bootstrap_max_pods(instance_type: &str) -> u32 {
    let out = std::process::Command::new(agent::binary("eniflow-agent"))
        .args(["max-pods", "--instance-type", instance_type])
        .output()
        .expect("run eniflow-agent max-pods");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number")
}

/// The agent's pods in kube-system: (name, phase, ready).
fn agent_pods(plane: &ControlPlane) -> Vec<(String, String, bool)> {
    let pods = plane.get(&[
        "pods",
        "-n",
        "kube-system",
        "-l",
        "app.kubernetes.io/name=eniflow",
    ]);
    pods["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["status"]["phase"].as_str().unwrap_or_default().to_owned(),
                ready,
            )
        })
        .collect()
}

/// A Deployment of busybox httpd pods, each passing a kubelet HTTP readiness probe.
fn web_deployment(name: &str, replicas: u32) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "web",
                        "image": BUSYBOX_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/busybox", "sh", "-c",
                            "mkdir -p /www && echo $HOSTNAME > /www/index.html && exec /busybox httpd -f -p 8080 -h /www"],
                        "readinessProbe": {
                            "httpGet": { "path": "/", "port": 8080 },
                            "periodSeconds": 2,
                        },
                    }],
                },
            },
        },
    })
    .to_string()
}

/// The Deployment's pods: (name, pod IP, ready).
fn web_pods(plane: &ControlPlane, app: &str) -> Vec<(String, String, bool)> {
    let pods = plane.get(&["pods", "-n", "default", "-l", &format!("app={app}")]);
    pods["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p: &Value| {
            let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["status"]["podIP"].as_str().unwrap_or_default().to_owned(),
                ready,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_turns_ready_with_the_daemonset_and_its_pods_get_vpc_addresses() {
    require_root();
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let archive = images::eniflow_archive();
    let plane = ControlPlane::start(&lab.node.netns);
    let max_pods = bootstrap_max_pods(&lab.spec.instance_type);
    let node = KubeletNode::start(
        &plane,
        &lab.node.netns,
        "lab-node",
        &lab.node.primary_ip,
        max_pods,
        &[archive],
    );
    let image = deployed_image();
    assert!(
        node.ctr(&["images", "ls", "-q"])
            .lines()
            .any(|l| l == image),
        "eniflow's image is not in the node's containerd as {image}: {}",
        node.ctr(&["images", "ls", "-q"])
    );

    // No CNI configuration yet: kubelet reports the node NotReady because of the network.
    wait_for(
        "node NotReady for want of a network plugin",
        Duration::from_secs(60),
        || {
            let (status, message) = plane.node_ready("lab-node");
            status == "False" && message.contains("NetworkPluginNotReady")
        },
        || {
            format!(
                "{:?}\n{}",
                plane.node_ready("lab-node"),
                node.log("kubelet")
            )
        },
    );

    plane.install_eniflow(&image, &lab_agent_env(&plane));
    wait_for(
        "the agent's pod Running and Ready",
        Duration::from_secs(120),
        || {
            agent_pods(&plane)
                .iter()
                .any(|(_, phase, ready)| phase == "Running" && *ready)
        },
        || {
            format!(
                "{:?}\n{}\n{}",
                agent_pods(&plane),
                plane.kubectl(&["describe", "pods", "-n", "kube-system"]),
                node.log("kubelet")
            )
        },
    );
    wait_for(
        "node Ready",
        Duration::from_secs(60),
        || plane.node_ready("lab-node").0 == "True",
        || format!("{:?}", plane.node_ready("lab-node")),
    );
    assert!(
        node.read("/etc/cni/net.d/10-eniflow.conflist").is_some(),
        "Ready without eniflow's conflist"
    );
    // kubelet's --max-pods came from the bootstrap; the running agent publishes the same figure.
    let published = || {
        let node = plane.get(&["node", "lab-node"]);
        (
            node["status"]["capacity"]["pods"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            node["metadata"]["annotations"]["eniflow.io/max-pods"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    wait_for(
        "max pods published on the Node",
        Duration::from_secs(30),
        || published().1 == max_pods.to_string(),
        || format!("{:?}", published()),
    );
    assert_eq!(published().0, max_pods.to_string(), "kubelet's capacity");

    // A Deployment placed by the scheduler: every pod gets a VPC address and passes its probe.
    plane.api.create(
        "/apis/apps/v1/namespaces/default/deployments",
        &web_deployment("web", 12),
    );
    wait_for(
        "12 web pods Ready",
        Duration::from_secs(180),
        || {
            let pods = web_pods(&plane, "web");
            pods.len() == 12 && pods.iter().all(|(_, _, ready)| *ready)
        },
        || {
            format!(
                "{:?}\nfirst failures: {}\nagent: {}",
                web_pods(&plane, "web"),
                node.kubelet_log_matching("failed (add)"),
                node.pod_logs("kube-system", "eniflow-agent"),
            )
        },
    );
    let node_addresses: Vec<String> = lab.view()["enis"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|eni| eni["instance_id"] == lab.node.id.as_str())
        .flat_map(|eni| eni["private_ips"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let remote = &lab.hosts[0];
    for (name, ip, _) in web_pods(&plane, "web") {
        assert!(
            node_addresses.contains(&ip),
            "pod {name}'s address {ip} is not one of the node's ENI addresses {node_addresses:?}"
        );
        assert!(
            eniflow_tests::cni::pings(&remote.netns, &ip),
            "remote VPC host cannot reach pod {name} at {ip}"
        );
    }

    // Without the DaemonSet the node is NotReady again, and its pods keep running and answering.
    plane.kubectl(&["delete", "daemonset", "-n", "kube-system", "eniflow-agent"]);
    wait_for(
        "node NotReady once the agent is gone",
        Duration::from_secs(60),
        || plane.node_ready("lab-node").0 == "False",
        || format!("{:?}", plane.node_ready("lab-node")),
    );
    let pods = web_pods(&plane, "web");
    assert_eq!(pods.len(), 12);
    for (name, ip, _) in &pods {
        assert!(
            eniflow_tests::cni::pings(&remote.netns, ip),
            "pod {name} at {ip} unreachable after the DaemonSet went"
        );
    }
}
