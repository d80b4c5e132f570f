//! `cargo xtask bench kubelet`: pod startup as users feel it, through a real kubelet on the lab's
//! node (an m5.4xlarge, max pods 110): a Deployment scaled 0 → 100, each pod's time from when the
//! API first lists it to Running (its sandbox and network are up) and to its first successful
//! HTTP readiness probe, p50 and p99; with eniflow installed from deploy/ (default knobs, so the
//! pool grows through EC2 as it would; then with MINIMUM_IP_TARGET=100, the pool warmed for the
//! burst), and, on the same node in the same run (first, so nothing
//! of eniflow's is on the node yet), with Debian's bridge + host-local as the node's CNI. Also:
//! the agent pod's start to node Ready.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use eniflow_tests::{
    cluster::{
        agent_pods, bootstrap_max_pods, deployed_image, lab_agent_env, wait_for, web_deployment,
        web_pods, ControlPlane, KubeletNode,
    },
    images,
    lab::{Lab, LabSpec},
    report::percentile,
    require_root,
};

const PODS: usize = 100;
const BRIDGE_CONFLIST: &str = "20-bridge.conflist";
const INSTANCE_TYPE: &str = "m5.4xlarge";

/// Per pod: (first listed, Running, Ready), as seen by polling the API every 100 ms.
type Seen = BTreeMap<String, (Instant, Option<Instant>, Option<Instant>)>;

/// Scales the bench Deployment 0 → PODS; returns (to Running, to Ready) seconds per pod, sorted,
/// and the time until the last pod was Ready.
fn scale_up(plane: &ControlPlane) -> (Vec<f64>, Vec<f64>, f64) {
    let start = Instant::now();
    plane.kubectl(&[
        "scale",
        "deployment",
        "bench",
        &format!("--replicas={PODS}"),
    ]);
    let mut seen = Seen::new();
    let deadline = start + Duration::from_secs(600);
    loop {
        let now = Instant::now();
        let pods = plane.get(&["pods", "-l", "app=bench"]);
        for pod in pods["items"].as_array().cloned().unwrap_or_default() {
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let entry = seen.entry(name).or_insert((now, None, None));
            let running = pod["status"]["phase"] == "Running";
            let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if running && entry.1.is_none() {
                entry.1 = Some(now);
            }
            if ready && entry.2.is_none() {
                entry.2 = Some(now);
            }
        }
        if seen.len() == PODS && seen.values().all(|(_, _, ready)| ready.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "{PODS} pods not Ready in 600 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let total = start.elapsed().as_secs_f64();
    let since = |from: Instant, to: Option<Instant>| to.unwrap().duration_since(from).as_secs_f64();
    let mut running: Vec<f64> = seen.values().map(|(f, r, _)| since(*f, *r)).collect();
    let mut ready: Vec<f64> = seen.values().map(|(f, _, r)| since(*f, *r)).collect();
    running.sort_by(f64::total_cmp);
    ready.sort_by(f64::total_cmp);
    (running, ready, total)
}

fn scale_down(plane: &ControlPlane) {
    plane.kubectl(&["scale", "deployment", "bench", "--replicas=0"]);
    wait_for(
        "bench scaled to 0",
        Duration::from_secs(300),
        || {
            plane.get(&["pods", "-l", "app=bench"])["items"]
                .as_array()
                .is_some_and(Vec::is_empty)
        },
        || format!("{:?}", web_pods(plane, "bench").len()),
    );
}

fn report(cni: &str, (running, ready, total): &(Vec<f64>, Vec<f64>, f64)) {
    println!(
        "    {cni:<22} to Running p50 {:>5.1} s  p99 {:>5.1} s   to Ready p50 {:>5.1} s  p99 {:>5.1} s   all {PODS} Ready {:>5.1} s",
        percentile(running, 50.0),
        percentile(running, 99.0),
        percentile(ready, 50.0),
        percentile(ready, 99.0),
        total
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    require_root();
    let lab = Lab::start(LabSpec {
        instance_type: INSTANCE_TYPE.into(),
        hosts: false,
        ..LabSpec::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let archive = images::eniflow_archive();
    let plane = ControlPlane::start(&lab.node.netns, &lab.node.primary_ip);
    let max_pods = bootstrap_max_pods(INSTANCE_TYPE, false);
    assert!(
        max_pods as usize > PODS,
        "{INSTANCE_TYPE}: max pods {max_pods}"
    );
    let node = KubeletNode::start(
        &plane,
        &lab.node.netns,
        "bench-node",
        &lab.node.primary_ip,
        max_pods,
        &[archive],
        &[],
    );

    plane.api.create(
        "/apis/apps/v1/namespaces/default/deployments",
        &web_deployment("bench", 0),
    );
    println!("==> pod startup through kubelet on one {INSTANCE_TYPE} node, 0 -> {PODS} pods");
    // Bridge + host-local first, so nothing of eniflow's (its SNAT chain, say) is on the node.
    node.write_cni_config(
        BRIDGE_CONFLIST,
        &serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bench-bridge",
            "plugins": [{
                "type": "bridge",
                "bridge": "bench0",
                "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": "10.244.0.0/24" }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            }],
        })
        .to_string(),
    );
    wait_for(
        "node Ready with bridge",
        Duration::from_secs(60),
        || plane.node_ready("bench-node").0 == "True",
        || node.log("kubelet"),
    );
    let bridge = scale_up(&plane);
    report("bridge + host-local", &bridge);
    scale_down(&plane);
    node.remove_cni_config(BRIDGE_CONFLIST);
    wait_for(
        "node NotReady without a CNI",
        Duration::from_secs(60),
        || plane.node_ready("bench-node").0 == "False",
        String::new,
    );

    let applied = Instant::now();
    plane.install_eniflow(&deployed_image(), &lab_agent_env());
    let mut agent_running = None;
    wait_for(
        "node Ready with eniflow",
        Duration::from_secs(180),
        || {
            if agent_running.is_none()
                && agent_pods(&plane)
                    .iter()
                    .any(|(_, phase, _)| phase == "Running")
            {
                agent_running = Some(Instant::now());
            }
            agent_running.is_some() && plane.node_ready("bench-node").0 == "True"
        },
        || node.log("kubelet"),
    );
    let ready_at = Instant::now();
    let agent_running = agent_running.unwrap();
    let eniflow = scale_up(&plane);
    report("eniflow", &eniflow);
    scale_down(&plane);

    // The same with the pool warmed for the burst beforehand: what is left is the CNI path.
    plane.kubectl(&[
        "set",
        "env",
        "-n",
        "kube-system",
        "daemonset/eniflow-agent",
        "-c",
        "agent",
        &format!("MINIMUM_IP_TARGET={PODS}"),
        "IP_COOLDOWN_PERIOD=0",
    ]);
    wait_for(
        "the warmed pool",
        Duration::from_secs(180),
        || {
            let addresses: usize = lab.view()["enis"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter(|e| e["instance_id"] == lab.node.id.as_str())
                .map(|e| e["private_ips"].as_array().map_or(0, Vec::len))
                .sum();
            let ds = plane.get(&["daemonset", "-n", "kube-system", "eniflow-agent"]);
            addresses > PODS
                && ds["status"]["updatedNumberScheduled"] == 1
                && ds["status"]["numberReady"] == 1
        },
        || format!("{:?}", agent_pods(&plane)),
    );
    let warmed = scale_up(&plane);
    report("eniflow, pool warmed", &warmed);
    scale_down(&plane);
    println!(
        "    eniflow install: DaemonSet applied -> agent Running {:.1} s -> node Ready {:.1} s later",
        agent_running.duration_since(applied).as_secs_f64(),
        ready_at.duration_since(agent_running).as_secs_f64()
    );
}
