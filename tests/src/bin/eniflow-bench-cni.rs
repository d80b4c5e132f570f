//! `cargo xtask bench` (CNI part): ADD and DEL latency, p50 and p99, with no other pod and with
//! 250 pods on the node (249 others and the measured one), for eniflow through its real shim (executed as a container runtime
//! executes it) and through cnitool, side by side with Debian's bridge + host-local doing the same
//! through cnitool, in one run on the lab's node (an m5.16xlarge: max pods 250). The pool is
//! filled first (MINIMUM_IP_TARGET=250) and released addresses are reusable at once
//! (IP_COOLDOWN_PERIOD=0), so ADD never waits for EC2: this measures the CNI path itself.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use eniflow_tests::{
    agent,
    cni::{cnitool, pod_args, PodNode},
    lab::{LabSpec, SubnetSpec},
    netns::Netns,
    report::{self, percentile, Part, Series, Table},
    require_root,
};
use serde_json::json;

const SAMPLES: usize = 40;
/// With the measured pod, the node's max pods (250).
const BACKGROUND: usize = 249;

/// One way of running a CNI command for a pod.
#[derive(Clone, Copy)]
enum Path {
    EniflowShim,
    EniflowCnitool,
    BridgeCnitool,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::EniflowShim => "eniflow, shim run directly",
            Path::EniflowCnitool => "eniflow, through cnitool",
            Path::BridgeCnitool => "bridge + host-local, through cnitool",
        }
    }
}

struct Bench<'a> {
    node: &'a PodNode,
    confdir: String,
}

impl Bench<'_> {
    /// Runs `command` (ADD or DEL) for the pod `n` in `pod` by `path`; panics on failure.
    fn cni(&self, path: Path, command: &str, n: usize, pod: &Netns) {
        let args = pod_args(&format!("bench-{n}"));
        match path {
            Path::EniflowShim => {
                let answer =
                    self.node
                        .cni(command, &format!("bench-{n}"), Some(pod), "eth0", &args);
                assert!(answer.ok, "{command} {n}: {}", answer.json);
            }
            Path::EniflowCnitool | Path::BridgeCnitool => {
                let network = match path {
                    Path::BridgeCnitool => "bench-bridge",
                    _ => "bench-eniflow",
                };
                let plugins = agent::binary("eniflow-cni");
                let out = Command::new("ip")
                    .args(["netns", "exec", self.node.lab.node.netns.name(), &cnitool()])
                    .args([&command.to_lowercase(), network, &pod.path()])
                    .env("NETCONFPATH", &self.confdir)
                    .env(
                        "CNI_PATH",
                        format!("{}:/usr/lib/cni", plugins.parent().unwrap().display()),
                    )
                    .env("CNI_ARGS", &args)
                    .stdout(Stdio::null())
                    .output()
                    .expect("run cnitool");
                assert!(
                    out.status.success(),
                    "cnitool {command} {n}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// ADD and DEL latencies (ms) of SAMPLES pods added and deleted one after another.
    fn sample(&self, path: Path) -> (Vec<f64>, Vec<f64>) {
        let mut adds = Vec::new();
        let mut dels = Vec::new();
        for n in 0..SAMPLES {
            let pod = Netns::new("bench");
            let started = Instant::now();
            self.cni(path, "ADD", 10_000 + n, &pod);
            adds.push(started.elapsed().as_secs_f64() * 1000.0);
            let started = Instant::now();
            self.cni(path, "DEL", 10_000 + n, &pod);
            dels.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        (adds, dels)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    require_root();
    let spec = LabSpec {
        instance_type: "m5.16xlarge".into(),
        subnets: vec![SubnetSpec {
            cidr: "10.0.0.0/20".into(),
            az: "us-west-2a".into(),
            tags: vec![],
        }],
        hosts: false,
        ..Default::default()
    };
    let knobs = [("MINIMUM_IP_TARGET", "250"), ("IP_COOLDOWN_PERIOD", "0")];
    let node = PodNode::start_custom(spec, &[], &knobs).await;
    // Wait for the pool to hold max pods' worth of addresses.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let view = node.lab.emulator.view();
        let held: usize = view["enis"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["instance_id"] == node.lab.node.id.as_str())
            .map(|e| e["private_ips"].as_array().unwrap().len() - 1)
            .sum();
        if held >= 250 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool holds {held} addresses after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let confdir = node.files.path("bench.d");
    std::fs::create_dir_all(&confdir).unwrap();
    let eniflow = json!({ "cniVersion": "1.0.0", "name": "bench-eniflow",
        "plugins": [{ "type": "eniflow-cni", "socket": node.socket(), "logFile": node.files.path("cni.log") }] });
    let bridge = json!({ "cniVersion": "1.0.0", "name": "bench-bridge",
        "plugins": [{ "type": "bridge", "bridge": "cnibench0", "isGateway": true,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.99.0.0/16" }]],
                      "dataDir": node.files.path("host-local") } }] });
    std::fs::write(
        format!("{confdir}/bench-eniflow.conflist"),
        eniflow.to_string(),
    )
    .unwrap();
    std::fs::write(
        format!("{confdir}/bench-bridge.conflist"),
        bridge.to_string(),
    )
    .unwrap();
    let bench = Bench {
        node: &node,
        confdir,
    };

    println!("## CNI ADD and DEL latency, ms ({SAMPLES} pods added and deleted one after another)");
    println!();
    println!("| path | other pods on the node | ADD p50 | ADD p99 | DEL p50 | DEL p99 |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut cdfs = Vec::new();
    let mut data = Vec::new();
    for path in [Path::EniflowShim, Path::EniflowCnitool, Path::BridgeCnitool] {
        for background in [0, BACKGROUND] {
            let pods: Vec<Netns> = (0..background).map(|_| Netns::new("bg")).collect();
            for (n, pod) in pods.iter().enumerate() {
                bench.cni(path, "ADD", n, pod);
            }
            let (adds, dels) = bench.sample(path);
            let row = vec![
                path.name().to_owned(),
                background.to_string(),
                format!("{:.1}", percentile(&adds, 50.0)),
                format!("{:.1}", percentile(&adds, 99.0)),
                format!("{:.1}", percentile(&dels, 50.0)),
                format!("{:.1}", percentile(&dels, 99.0)),
            ];
            println!("| {} |", row.join(" | "));
            rows.push(row);
            if background == BACKGROUND {
                cdfs.push(Series {
                    name: path.name().to_owned(),
                    points: report::cdf(&adds),
                });
            }
            data.push(json!({
                "path": path.name(), "other_pods": background, "add_ms": adds, "del_ms": dels,
            }));
            for (n, pod) in pods.iter().enumerate() {
                bench.cni(path, "DEL", n, pod);
            }
        }
    }
    let _ = node.lab.node.netns.ip(&["link", "del", "cnibench0"]);
    let figure = report::line_chart(
        "cni-add-cdf.svg",
        &format!("CNI ADD latency with {BACKGROUND} other pods on the node"),
        ("ADD latency, ms", "fraction of ADDs at or below"),
        &cdfs,
        &[],
    );
    Part {
        name: "cni".into(),
        title: "Pods: CNI ADD and DEL latency".into(),
        method: format!(
            "{SAMPLES} pods added and deleted one after another on the lab's node (m5.16xlarge, max pods 250), with 0 and {BACKGROUND} other pods; the pool is full first and released addresses are reusable at once, so ADD never waits for EC2. eniflow through its shim run as a runtime runs it and through cnitool, Debian's bridge + host-local through cnitool, in one run."
        ),
        tables: vec![Table {
            caption: "Latency, ms".into(),
            header: ["path", "other pods", "ADD p50", "ADD p99", "DEL p50", "DEL p99"]
                .map(String::from)
                .to_vec(),
            rows,
        }],
        figures: vec![(figure, format!("ADD latency CDF with {BACKGROUND} other pods"))],
        data: json!(data),
    }
    .write();
}
