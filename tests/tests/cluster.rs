//! eniflow installed as operators install it, on real Kubernetes: `kubectl apply -k deploy/`
//! (through an overlay that only points the agent at the lab's EC2 and API) on a lab node run by a
//! real kubelet and containerd, with the scheduler and controller-manager placing real workloads.

use std::time::Duration;

use eniflow_tests::{
    cluster::{
        agent_pods, bootstrap_max_pods, deployed_image, lab_agent_env, wait_for, web_deployment,
        web_pods, ControlPlane, KubeletNode, WebPod,
    },
    images,
    lab::{Lab, LabSpec},
    require_root,
    resource_controller::{ManagedNode, ResourceController, Settings, POD_ENI},
};
use serde_json::{json, Value};

/// The taint the lab's node registers with until eniflow can wire its pods.
const STARTUP_TAINT_KEY: &str = "eniflow.io/agent-not-ready";
const STARTUP_TAINT: &str = "eniflow.io/agent-not-ready:NoSchedule";

/// Waits until the Deployment `app` has exactly `n` pods, all Ready.
fn wait_for_web(plane: &ControlPlane, nodes: &[&KubeletNode], app: &str, n: usize) -> Vec<WebPod> {
    wait_for(
        &format!("{n} {app} pods Ready"),
        Duration::from_secs(240),
        || {
            let pods = web_pods(plane, app);
            pods.len() == n && pods.iter().all(|p| p.ready)
        },
        || {
            let mut why = format!("{:?}", web_pods(plane, app));
            for node in nodes {
                why.push_str(&format!(
                    "\n{}: first failures: {}\nagent: {}",
                    node.name,
                    node.kubelet_log_matching("failed (add)"),
                    node.pod_logs("kube-system", "eniflow-agent")
                ));
            }
            why
        },
    );
    web_pods(plane, app)
}

/// The addresses of `instance`'s ENIs in the lab's EC2, split into (primary ENI, others).
fn eni_addresses(lab: &Lab, instance: &str) -> (Vec<String>, Vec<String>) {
    let (mut primary, mut others) = (Vec::new(), Vec::new());
    for eni in lab.view()["enis"].as_array().cloned().unwrap_or_default() {
        if eni["instance_id"] != instance {
            continue;
        }
        let addresses = eni["private_ips"].as_array().cloned().unwrap_or_default();
        let addresses = addresses
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned));
        if eni["device_index"] == 0 {
            primary.extend(addresses);
        } else {
            others.extend(addresses);
        }
    }
    (primary, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_turns_ready_with_the_daemonset_and_pods_get_vpc_and_branch_eni_addresses() {
    require_root();
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let archive = images::eniflow_archive();
    let plane = ControlPlane::start(&lab.node.netns, &lab.node.primary_ip);
    // Security groups for pods: a slot kept for the resource controller's trunk.
    let max_pods = bootstrap_max_pods(&lab.spec.instance_type, true);
    let node = KubeletNode::start(
        &plane,
        &lab.node.netns,
        "lab-node",
        &lab.node.primary_ip,
        max_pods,
        &[archive],
        &[STARTUP_TAINT],
    );
    let controller = ResourceController::start(
        plane.api.admin(),
        lab.ec2(),
        Settings {
            nodes: vec![ManagedNode {
                name: "lab-node".into(),
                instance_id: lab.node.id.clone(),
                subnet: lab.subnets[lab.spec.node_subnet].clone(),
                security_groups: lab.security_groups.clone(),
            }],
            pod_eni_capacity: 9,
            branch_security_groups: lab.security_groups.clone(),
        },
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

    let startup_tainted = || {
        plane.get(&["node", "lab-node"])["spec"]["taints"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["key"] == STARTUP_TAINT_KEY))
    };
    assert!(
        startup_tainted(),
        "kubelet registered the node without the startup taint"
    );
    // A pod tolerating nothing waits for the node to be able to wire it.
    plane.api.create(
        "/apis/apps/v1/namespaces/default/deployments",
        &web_deployment("early", 1),
    );
    // A security-group pod (strict mode) cannot be placed: no CNINode feature, so no trunk and
    // no vpc.amazonaws.com/pod-eni on the node. It tolerates the node's NoSchedule taints (startup,
    // not-ready), so that want is what the scheduler names (it names the first filter failed).
    let mut sg_pod: Value = serde_json::from_str(&web_deployment("sg", 1)).unwrap();
    let mut pod = sg_pod["spec"]["template"].take();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["name"] = json!("sg-pod");
    pod["spec"]["containers"][0]["resources"] = json!({ "limits": { POD_ENI: "1" } });
    pod["spec"]["tolerations"] = json!([{ "operator": "Exists", "effect": "NoSchedule" }]);
    plane
        .api
        .create("/api/v1/namespaces/default/pods", &pod.to_string());
    let unschedulable = || {
        let pod = plane.get(&["pod", "sg-pod"]);
        let conditions = pod["status"]["conditions"].as_array().cloned();
        conditions.unwrap_or_default().iter().any(|c| {
            c["type"] == "PodScheduled"
                && c["reason"] == "Unschedulable"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("Insufficient {POD_ENI}")))
        })
    };
    wait_for(
        "the security-group pod unschedulable for want of pod-eni",
        Duration::from_secs(60),
        unschedulable,
        || plane.get(&["pod", "sg-pod"])["status"].to_string(),
    );
    assert!(controller.record().trunks.is_empty(), "a trunk unasked for");

    let mut env = lab_agent_env();
    env.push(("ENABLE_POD_ENI".into(), "true".into()));
    plane.install_eniflow(&image, &env);
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
        || {
            format!(
                "{:?}\n{}",
                published(),
                node.pod_logs("kube-system", "eniflow-agent")
            )
        },
    );
    assert_eq!(published().0, max_pods.to_string(), "kubelet's capacity");
    wait_for(
        "the agent to take the startup taint off",
        Duration::from_secs(30),
        || !startup_tainted(),
        || plane.get(&["node", "lab-node"])["spec"].to_string(),
    );
    wait_for_web(&plane, &[&node], "early", 1);

    // A Deployment placed by the scheduler: every pod gets a VPC address and passes its probe.
    plane.api.create(
        "/apis/apps/v1/namespaces/default/deployments",
        &web_deployment("web", 12),
    );
    let pods = wait_for_web(&plane, &[&node], "web", 12);
    let (primary, others) = eni_addresses(&lab, &lab.node.id);
    let node_addresses = [primary, others].concat();
    let remote = &lab.hosts[0];
    for WebPod { name, ip, .. } in pods {
        assert!(
            node_addresses.contains(&ip),
            "pod {name}'s address {ip} is not one of the node's ENI addresses {node_addresses:?}"
        );
        assert!(
            eniflow_tests::cni::pings(&remote.netns, &ip),
            "remote VPC host cannot reach pod {name} at {ip}"
        );
    }

    // The agent asked for the trunk on the CNINode: the controller attached it and advertised
    // pod-eni, the scheduler placed the security-group pod, the controller gave it a branch ENI
    // (the agent waited for the annotation), and kubelet's probe and a VPC host reach it through
    // the trunk.
    let sg = wait_for_web(&plane, &[&node], "sg", 1);
    let record = controller.record();
    assert!(record.trunks.contains_key("lab-node"), "{record:?}");
    let branch = record
        .branches
        .iter()
        .find(|b| b.pod == "default/sg-pod")
        .unwrap_or_else(|| panic!("no branch ENI for sg-pod: {record:?}"));
    assert_eq!(
        sg[0].ip, branch.ip,
        "the security-group pod has its branch ENI's address"
    );
    assert!(
        eniflow_tests::cni::pings(&remote.netns, &branch.ip),
        "remote VPC host cannot reach the security-group pod at {}",
        branch.ip
    );

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
    for WebPod { name, ip, .. } in &pods {
        assert!(
            eniflow_tests::cni::pings(&remote.netns, ip),
            "pod {name} at {ip} unreachable after the DaemonSet went"
        );
    }
}

/// A Service in front of the Deployment `app` (port 80 to the pods' 8080); its cluster IP.
fn web_service(plane: &ControlPlane, app: &str) -> String {
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": app, "namespace": "default" },
        "spec": {
            "selector": { "app": app },
            "ports": [{ "port": 80, "targetPort": 8080 }],
        },
    });
    let created = plane
        .api
        .create("/api/v1/namespaces/default/services", &service.to_string());
    created["spec"]["clusterIP"]
        .as_str()
        .expect("a cluster IP")
        .to_owned()
}

/// Runs `command` in pod `pod` (default namespace) through the API and kubelet; its output.
fn exec(plane: &ControlPlane, pod: &str, command: &[&str]) -> Result<String, String> {
    let mut args = vec!["exec", "-n", "default", pod, "--"];
    args.extend_from_slice(command);
    let out = plane.kubectl_output(&args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// An HTTP GET of `/` at `host:port` from inside pod `pod`: the body's last line (the name of
/// the pod that answered). busybox's own wget crashes in Debian's static build; nc does not.
fn http_get(plane: &ControlPlane, pod: &str, host: &str, port: u16) -> Result<String, String> {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /busybox nc -w 3 {host} {port}");
    let answer = exec(plane, pod, &["/busybox", "sh", "-c", &script])?;
    answer
        .lines()
        .last()
        .map(|l| l.trim().to_owned())
        .ok_or_else(|| format!("no answer from {host}:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_over_two_nodes_keeps_working_through_scaling_an_agent_crash_and_an_upgrade() {
    require_root();
    let lab = Lab::start(LabSpec {
        second_node: true,
        ..LabSpec::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let archive = images::eniflow_archive();
    let plane = ControlPlane::start(&lab.node.netns, &lab.node.primary_ip);
    let max_pods = bootstrap_max_pods(&lab.spec.instance_type, false);
    let second = lab.second_node.as_ref().expect("a second node");
    let instances = [&lab.node, second];
    let nodes: Vec<KubeletNode> = ["node-a", "node-b"]
        .iter()
        .zip(instances)
        .map(|(name, instance)| {
            KubeletNode::start(
                &plane,
                &instance.netns,
                name,
                &instance.primary_ip,
                max_pods,
                std::slice::from_ref(&archive),
                &[],
            )
        })
        .collect();
    let node_refs: Vec<&KubeletNode> = nodes.iter().collect();
    plane.install_eniflow(&deployed_image(), &lab_agent_env());
    for node in &nodes {
        wait_for(
            &format!("{} Ready", node.name),
            Duration::from_secs(120),
            || plane.node_ready(&node.name).0 == "True",
            || format!("{:?}\n{}", agent_pods(&plane), node.log("kubelet")),
        );
    }

    // 30 replicas spread by the scheduler: VPC addresses of each pod's own node, secondary
    // ENIs included; each reachable from a remote VPC host.
    plane.api.create(
        "/apis/apps/v1/namespaces/default/deployments",
        &web_deployment("web", 30),
    );
    let pods = wait_for_web(&plane, &node_refs, "web", 30);
    let remote = &lab.hosts[0];
    for (node, instance) in nodes.iter().zip(instances) {
        let (primary, others) = eni_addresses(&lab, &instance.id);
        let here: Vec<&WebPod> = pods.iter().filter(|p| p.node == node.name).collect();
        assert!(!here.is_empty(), "no pod on {}", node.name);
        for pod in &here {
            assert!(
                primary.contains(&pod.ip) || others.contains(&pod.ip),
                "{} on {} has {}, not one of its node's ENI addresses",
                pod.name,
                node.name,
                pod.ip
            );
            assert!(
                eniflow_tests::cni::pings(&remote.netns, &pod.ip),
                "remote VPC host cannot reach {} at {}",
                pod.name,
                pod.ip
            );
        }
        assert!(
            here.iter().any(|p| others.contains(&p.ip)),
            "{}'s {} pods all sit on the primary ENI",
            node.name,
            here.len()
        );
    }

    // Pod to pod across nodes, and a ClusterIP Service answering from pods on both nodes.
    let a = pods.iter().find(|p| p.node == "node-a").unwrap();
    let b = pods.iter().find(|p| p.node == "node-b").unwrap();
    let answer = http_get(&plane, &a.name, &b.ip, 8080);
    assert_eq!(
        answer.as_deref(),
        Ok(b.name.as_str()),
        "{} -> {} across nodes",
        a.name,
        b.name
    );
    let service = web_service(&plane, "web");
    let node_of = |name: &str| pods.iter().find(|p| p.name == name).map(|p| p.node.clone());
    let mut answered_from = std::collections::BTreeSet::new();
    for _ in 0..60 {
        if let Ok(name) = http_get(&plane, &a.name, &service, 80) {
            answered_from.extend(node_of(&name));
        }
        if answered_from.len() == 2 {
            break;
        }
    }
    assert_eq!(
        answered_from.len(),
        2,
        "the Service at {service} answered only from {answered_from:?}"
    );

    // Scale to 0: nothing of any pod is left on either node.
    plane.kubectl(&["scale", "deployment", "web", "--replicas=0"]);
    wait_for(
        "web scaled to 0",
        Duration::from_secs(120),
        || {
            web_pods(&plane, "web").is_empty()
                && plane.get(&["pods", "-l", "app=web"])["items"]
                    .as_array()
                    .is_some_and(Vec::is_empty)
        },
        || format!("{:?}", web_pods(&plane, "web")),
    );
    for node in &nodes {
        wait_for(
            &format!("{} emptied", node.name),
            Duration::from_secs(30),
            || {
                node.pod_veths().is_empty()
                    && node.allocations().is_empty()
                    && node.pods_map_entries() == 0
            },
            || {
                format!(
                    "veths {:?}, allocations {:?}, pods map {}",
                    node.pod_veths(),
                    node.allocations(),
                    node.pods_map_entries()
                )
            },
        );
    }
    // Up again: from the warm pool, with no EC2 call on the way.
    let calls = || {
        let calls = lab.emulator.calls();
        [
            "AssignPrivateIpAddresses",
            "CreateNetworkInterface",
            "AttachNetworkInterface",
        ]
        .map(|action| calls.get(action).copied().unwrap_or(0))
    };
    let before = calls();
    plane.kubectl(&["scale", "deployment", "web", "--replicas=6"]);
    wait_for_web(&plane, &node_refs, "web", 6);
    assert_eq!(
        calls(),
        before,
        "scaling up took addresses from EC2, not the warm pool"
    );

    // The agent on node-a killed: kubelet restarts it, and pods created meanwhile are wired
    // once it is back, each once.
    let agent_container = nodes[0]
        .ctr(&[
            "containers",
            "ls",
            "-q",
            "labels.\"io.kubernetes.container.name\"==agent",
        ])
        .trim()
        .to_owned();
    assert!(
        !agent_container.is_empty() && !agent_container.contains('\n'),
        "{agent_container:?}"
    );
    nodes[0].ctr(&["tasks", "kill", "-s", "SIGKILL", &agent_container]);
    plane.kubectl(&["scale", "deployment", "web", "--replicas=14"]);
    let pods = wait_for_web(&plane, &node_refs, "web", 14);
    let restarts = plane.get(&[
        "pods",
        "-n",
        "kube-system",
        "-l",
        "app.kubernetes.io/name=eniflow",
    ])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "node-a")
        .map(|p| {
            p["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum::<u64>();
    assert!(restarts >= 1, "kubelet did not restart the killed agent");
    let check_allocations = |pods: &[WebPod]| {
        let ips: std::collections::BTreeSet<&str> = pods.iter().map(|p| p.ip.as_str()).collect();
        assert_eq!(
            ips.len(),
            pods.len(),
            "an address handed out twice: {pods:?}"
        );
        for node in &nodes {
            let mut held = node.allocations();
            held.sort();
            let mut wanted: Vec<String> = pods
                .iter()
                .filter(|p| p.node == node.name)
                .map(|p| p.ip.clone())
                .collect();
            wanted.sort();
            assert_eq!(held, wanted, "{}'s allocations against its pods", node.name);
        }
    };
    check_allocations(&pods);

    // A rolling update of the DaemonSet to another tag while the pods serve: not one ping from
    // a VPC host every 10 ms is lost, no address moves, no allocation is lost or doubled.
    let next = format!(
        "docker.io/library/eniflow:{}-next",
        env!("CARGO_PKG_VERSION")
    );
    for node in &nodes {
        node.ctr(&["images", "tag", &deployed_image(), &next]);
    }
    let targets: Vec<String> = pods.iter().take(4).map(|p| p.ip.clone()).collect();
    let pingers: Vec<_> = targets
        .iter()
        .map(|ip| {
            let (netns, ip) = (remote.netns.path(), ip.clone());
            std::thread::spawn(move || {
                std::process::Command::new("nsenter")
                    .arg(format!("--net={netns}"))
                    .args(["ping", "-q", "-i", "0.01", "-c", "4000", "-W", "1", &ip])
                    .output()
                    .expect("ping")
            })
        })
        .collect();
    plane.kubectl(&[
        "set",
        "image",
        "-n",
        "kube-system",
        "daemonset/eniflow-agent",
        &format!("agent={next}"),
        &format!("install={next}"),
    ]);
    wait_for(
        "the DaemonSet rolled out",
        Duration::from_secs(120),
        || {
            let ds = plane.get(&["daemonset", "-n", "kube-system", "eniflow-agent"]);
            let status = &ds["status"];
            status["updatedNumberScheduled"] == 2
                && status["numberReady"] == 2
                && status["observedGeneration"] == ds["metadata"]["generation"]
        },
        || format!("{:?}", agent_pods(&plane)),
    );
    for (ip, pinger) in targets.iter().zip(pingers) {
        let out = pinger.join().unwrap();
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(
            summary.contains(" 0% packet loss"),
            "pings to {ip} during the rollout: {summary}"
        );
    }
    let after = wait_for_web(&plane, &node_refs, "web", 14);
    let addresses = |pods: &[WebPod]| {
        let mut v: Vec<(String, String)> = pods
            .iter()
            .map(|p| (p.name.clone(), p.ip.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        addresses(&after),
        addresses(&pods),
        "an address changed during the rollout"
    );
    check_allocations(&after);
}

/// The image `cargo xtask image` builds loads into podman as well as containerd, runs the agent
/// and iptables, and carries nothing the agent does not need.
#[test]
fn the_image_loads_into_podman_and_holds_only_what_the_agent_needs() {
    require_root();
    let archive = images::eniflow_archive();
    let image = deployed_image();
    // A podman store of the test's own: the machine's is never written.
    let store = std::env::temp_dir().join(eniflow_tests::unique_name("podman"));
    let podman = |args: &[&str]| {
        let out = std::process::Command::new("podman")
            .arg("--root")
            .arg(store.join("storage"))
            .arg("--runroot")
            .arg(store.join("run"))
            .arg("--tmpdir")
            .arg(store.join("tmp"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(args)
            .output()
            .expect("run podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    podman(&["load", "-q", "-i", &archive.display().to_string()]);
    let run = |entrypoint: &str, args: &[&str]| {
        let mut full = vec![
            "run",
            "--rm",
            "--network=none",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--entrypoint",
            entrypoint,
            &image,
        ];
        full.extend_from_slice(args);
        podman(&full)
    };
    let version = run("eniflow-agent", &["--version"]);
    let iptables = run("iptables", &["--version"]);
    podman(&["rmi", "--force", &image]);
    let _ = std::fs::remove_dir_all(&store);
    let files = image_files(&archive);
    assert_eq!(
        version.trim(),
        format!("eniflow-agent {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(iptables.contains("nf_tables"), "{iptables}");
    for needed in [
        "/usr/bin/eniflow-agent",
        "/usr/bin/eniflow-cni",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/protocols",
    ] {
        assert!(files.contains(needed), "{needed} missing from the image");
    }
    for unneeded in [
        "/usr/share/doc",
        "/usr/share/man",
        "/bin/sh",
        "/usr/bin/apt-get",
    ] {
        assert!(!files.contains(unneeded), "{unneeded} in the image");
    }
}

/// Every path in an OCI archive's layers, as `/path` (directories without the trailing slash).
fn image_files(archive: &std::path::Path) -> std::collections::BTreeSet<String> {
    let dir = std::env::temp_dir().join(eniflow_tests::unique_name("oci"));
    std::fs::create_dir_all(&dir).unwrap();
    let sh = |args: &[&str]| eniflow_tests::sh::run(args[0], &args[1..]);
    sh(&[
        "tar",
        "-xf",
        &archive.display().to_string(),
        "-C",
        &dir.display().to_string(),
    ]);
    let blob = |digest: &str| {
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let mut files = std::collections::BTreeSet::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let listing = sh(&[
            "tar",
            "-tf",
            &blob(layer["digest"].as_str().unwrap())
                .display()
                .to_string(),
        ]);
        files.extend(
            listing
                .lines()
                .map(|f| format!("/{}", f.trim_start_matches("./").trim_end_matches('/'))),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    files
}
