//! `cargo xtask bench` (CNI part): ADD and DEL latency, p50 and p99, with no other pod and with
//! 250 pods on the node (249 others and the measured one), for eniflow through its real shim
//! (executed as a container runtime executes it) and through cnitool, side by side with Debian's
//! bridge + host-local doing the same through cnitool, in one run on the lab's node (an
//! m5.16xlarge in prefix mode, its kubelet's max pods said to be 1000). The pool is filled first
//! (MINIMUM_IP_TARGET=1000) and released addresses are reusable at once (IP_COOLDOWN_PERIOD=0),
//! so ADD never waits for EC2: this measures the CNI path itself.
//!
//! Beside the latencies: where an ADD's time goes (the agent's own per-step timings from its
//! /metrics, and the rest: the shim's exec and the gRPC round trip), the agent's memory idle and
//! with 250 and 1000 pods and its CPU per 100 ADDs, the shim's peak memory and exec time, and
//! the agent's cold start and restart.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use eniflow_agent::metrics::AddStep;
use eniflow_tests::{
    agent,
    cni::{self, cnitool, pod_args, shim, PodNode, ShimCall},
    lab::{LabSpec, SubnetSpec},
    netns::Netns,
    procfs, prometheus,
    report::{self, percentile, Part, Series, Table},
    require_root,
};
use serde_json::json;

const SAMPLES: usize = 40;
/// With the measured pod, EKS's max pods for the node (250).
const BACKGROUND: usize = 249;
/// The pods of the agent-memory row on a dense node: the node runs with prefix delegation and
/// ENIFLOW_MAX_PODS=1000 (as a kubelet with --max-pods=1000 would), its pool full of them.
const DENSE: usize = 1000;

/// One way of running a CNI command for a pod.
#[derive(Clone, Copy, PartialEq)]
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

    /// SAMPLES pods added and deleted one after another.
    fn sample(&self, path: Path) -> Sampled {
        let mut sampled = Sampled::default();
        for n in 0..SAMPLES {
            let pod = Netns::new("bench");
            let started = Instant::now();
            self.cni(path, "ADD", 10_000 + n, &pod);
            sampled.adds.push(started.elapsed().as_secs_f64() * 1000.0);
            if n == 0 {
                sampled.agent_rss_kib = self.agent_rss_kib();
            }
            let started = Instant::now();
            self.cni(path, "DEL", 10_000 + n, &pod);
            sampled.dels.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        sampled
    }

    fn agent_pid(&self) -> u32 {
        self.node
            .agent
            .as_ref()
            .and_then(|a| a.pid())
            .expect("the agent runs")
    }

    fn agent_rss_kib(&self) -> f64 {
        procfs::status_field(self.agent_pid(), "VmRSS")
    }
}

/// What one run of SAMPLES ADDs and DELs measured (latencies in ms).
#[derive(Default)]
struct Sampled {
    adds: Vec<f64>,
    dels: Vec<f64>,
    /// The agent's RSS right after the first ADD (with the background pods: 250 pods).
    agent_rss_kib: f64,
}

/// The sum of the exposition's samples of `name` that carry the label pair `label` (any pair
/// when empty; the encoder orders labels by name, so they are matched one by one).
fn metric_sum(exposition: &str, name: &str, label: &str) -> f64 {
    exposition
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            let labelled = labels.is_empty() || labels.starts_with('{');
            (labelled && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Seconds and counts of the ADDs the agent timed, whole and per step (`AddStep::ALL`'s order),
/// from its /metrics.
#[derive(Clone, Default)]
struct AgentTimes {
    total: (f64, f64),
    steps: Vec<(f64, f64)>,
}

impl AgentTimes {
    fn scrape(node: &PodNode) -> AgentTimes {
        let text = prometheus::scrape_agent(&node.lab.node.netns);
        let series = |name: &str, labels: &str| {
            (
                metric_sum(&text, &format!("{name}_sum"), labels),
                metric_sum(&text, &format!("{name}_count"), labels),
            )
        };
        AgentTimes {
            total: series("eniflow_cni_add_duration_seconds", r#"result="ok""#),
            steps: AddStep::ALL
                .iter()
                .map(|s| {
                    series(
                        "eniflow_cni_add_step_duration_seconds",
                        &format!(r#"step="{}""#, s.name()),
                    )
                })
                .collect(),
        }
    }

    /// Mean ms per ADD of the whole and of each step, between `earlier` and `self`.
    fn means_since(&self, earlier: &AgentTimes) -> (f64, Vec<f64>) {
        let mean =
            |now: (f64, f64), was: (f64, f64)| (now.0 - was.0) * 1000.0 / (now.1 - was.1).max(1.0);
        (
            mean(self.total, earlier.total),
            self.steps
                .iter()
                .zip(&earlier.steps)
                .map(|(now, was)| mean(*now, *was))
                .collect(),
        )
    }
}

/// What a restart with pods measured, ms from the SIGKILL.
struct Restart {
    until_add: f64,
    until_ready: f64,
    /// The new agent's own start-up time (its metric: to the conflist written).
    startup: f64,
}

/// With BACKGROUND + 1 pods up, SIGKILLs the agent and starts another: until an ADD through
/// the shim succeeds again, and until its start-up work is over (ready file). The pods are
/// deleted afterwards.
fn restart_with_pods(node: &mut PodNode) -> Restart {
    let pods: Vec<Netns> = (0..=BACKGROUND).map(|_| Netns::new("rs")).collect();
    let add = |node: &PodNode, n: usize, pod: &Netns| {
        let name = format!("restart-{n}");
        node.cni("ADD", &name, Some(pod), "eth0", &pod_args(&name))
    };
    for (n, pod) in pods.iter().enumerate().take(BACKGROUND) {
        assert!(add(node, n, pod).ok, "ADD restart-{n}");
    }
    node.agent.take().expect("the agent runs").kill();
    let started = Instant::now();
    let mut agent = node.spawn_agent(&[], Stdio::null());
    while !add(node, BACKGROUND, &pods[BACKGROUND]).ok {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no ADD succeeded within 60 s of the restart"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let until_add = started.elapsed().as_secs_f64() * 1000.0;
    agent.wait_ready();
    let until_ready = started.elapsed().as_secs_f64() * 1000.0;
    node.agent = Some(agent);
    for (n, pod) in pods.iter().enumerate() {
        let name = format!("restart-{n}");
        let del = node.cni("DEL", &name, Some(pod), "eth0", &pod_args(&name));
        assert!(del.ok, "DEL {name}: {}", del.json);
    }
    Restart {
        until_add,
        until_ready,
        startup: startup_ms(node),
    }
}

/// The running agent's start-up time, from its start to the conflist written (its metric).
fn startup_ms(node: &PodNode) -> f64 {
    let text = prometheus::scrape_agent(&node.lab.node.netns);
    metric_sum(&text, "awscni_ipamd_startup_duration_seconds_sum", "") * 1000.0
}

/// The shim's peak RSS (KiB) over SAMPLES ADDs (each deleted after), forked from the
/// measuring launcher.
fn shim_peak_rss_kib(node: &PodNode) -> u64 {
    let log = node.files.path("cni.log");
    let config = node.config();
    (0..SAMPLES)
        .map(|n| {
            let pod = Netns::new("rss");
            let (name, netns) = (format!("rss-{n}"), pod.path());
            let args = pod_args(&name);
            let add = ShimCall {
                command: "ADD",
                container: &name,
                netns: &netns,
                ifname: "eth0",
                args: &args,
                log: &log,
            };
            let added = cni::shim_peak_rss(&add, &config);
            assert!(added.ok, "ADD {name}: {}", added.json);
            let deleted = shim(
                &ShimCall {
                    command: "DEL",
                    ..add
                },
                &config,
            );
            assert!(deleted.ok, "DEL {name}: {}", deleted.json);
            added.peak_rss_kib.expect("measured")
        })
        .max()
        .unwrap_or(0)
}

/// The agent's RSS (KiB) with DENSE pods added through the shim, which are deleted afterwards.
fn rss_with_dense_pods(bench: &Bench) -> f64 {
    let pods: Vec<Netns> = (0..DENSE).map(|_| Netns::new("dn")).collect();
    for (n, pod) in pods.iter().enumerate() {
        bench.cni(Path::EniflowShim, "ADD", 20_000 + n, pod);
    }
    let rss = bench.agent_rss_kib();
    for (n, pod) in pods.iter().enumerate() {
        bench.cni(Path::EniflowShim, "DEL", 20_000 + n, pod);
    }
    rss
}

/// Wall time (ms) of each of SAMPLES shim execs for VERSION, which the shim answers alone.
fn shim_version_execs(node: &PodNode) -> Vec<f64> {
    let log = node.files.path("cni-version.log");
    (0..SAMPLES)
        .map(|_| {
            let call = ShimCall {
                command: "VERSION",
                container: "",
                netns: "",
                ifname: "",
                args: "",
                log: &log,
            };
            let started = Instant::now();
            let answer = shim(&call, &json!({ "cniVersion": "1.0.0" }));
            assert!(answer.ok, "VERSION: {}", answer.json);
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
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
    let dense = DENSE.to_string();
    let knobs = [
        ("ENABLE_PREFIX_DELEGATION", "true"),
        ("ENIFLOW_MAX_PODS", dense.as_str()),
        ("MINIMUM_IP_TARGET", dense.as_str()),
        ("IP_COOLDOWN_PERIOD", "0"),
    ];
    let mut node = PodNode::start_custom(spec, &[], &knobs).await;
    let cold_start = startup_ms(&node);
    // Wait for the pool to hold the dense row's addresses (/28 prefixes of 16).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let view = node.lab.emulator.view();
        let held: usize = view["enis"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["instance_id"] == node.lab.node.id.as_str())
            .map(|e| e["prefixes"].as_array().map_or(0, Vec::len) * 16)
            .sum();
        if held >= DENSE {
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

    let idle_rss = bench.agent_rss_kib();
    let version_execs = shim_version_execs(&node);
    println!("## CNI ADD and DEL latency, ms ({SAMPLES} pods added and deleted one after another)");
    println!();
    println!("| path | other pods on the node | ADD p50 | ADD p99 | ADD max | DEL p50 | DEL p99 | DEL max |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut cdfs = Vec::new();
    let mut data = Vec::new();
    // eniflow's shim only: (other pods, the agent's mean ADD and its steps, the mean ADD wall).
    let mut breakdown = Vec::new();
    let (mut rss_250, mut cpu_per_100) = (0.0, 0.0);
    for path in [Path::EniflowShim, Path::EniflowCnitool, Path::BridgeCnitool] {
        for background in [0, BACKGROUND] {
            let shim_path = path == Path::EniflowShim;
            let pods: Vec<Netns> = (0..background).map(|_| Netns::new("bg")).collect();
            let cpu_before = procfs::cpu_seconds(bench.agent_pid());
            for (n, pod) in pods.iter().enumerate() {
                bench.cni(path, "ADD", n, pod);
            }
            if shim_path && background == BACKGROUND {
                cpu_per_100 = (procfs::cpu_seconds(bench.agent_pid()) - cpu_before) * 100.0
                    / BACKGROUND as f64;
            }
            let times_before = AgentTimes::scrape(&node);
            let sampled = bench.sample(path);
            let (adds, dels) = (&sampled.adds, &sampled.dels);
            if shim_path {
                let (agent_ms, steps) = AgentTimes::scrape(&node).means_since(&times_before);
                let wall_ms = adds.iter().sum::<f64>() / adds.len() as f64;
                breakdown.push((background, agent_ms, steps, wall_ms));
                if background == BACKGROUND {
                    rss_250 = sampled.agent_rss_kib;
                }
            }
            let row = vec![
                path.name().to_owned(),
                background.to_string(),
                format!("{:.1}", percentile(adds, 50.0)),
                format!("{:.1}", percentile(adds, 99.0)),
                format!("{:.1}", percentile(adds, 100.0)),
                format!("{:.1}", percentile(dels, 50.0)),
                format!("{:.1}", percentile(dels, 99.0)),
                format!("{:.1}", percentile(dels, 100.0)),
            ];
            println!("| {} |", row.join(" | "));
            rows.push(row);
            if background == BACKGROUND {
                cdfs.push(Series {
                    name: path.name().to_owned(),
                    points: report::cdf(adds),
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
    let rss_dense = rss_with_dense_pods(&bench);
    let shim_rss = shim_peak_rss_kib(&node);
    let peak_rss = procfs::status_field(bench.agent_pid(), "VmHWM");
    let restart = restart_with_pods(&mut node);

    // Where an ADD's time goes, by other pods on the node.
    let mut step_rows: Vec<Vec<String>> = AddStep::ALL
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let mut row = vec![format!("agent: {}", step.name())];
            row.extend(
                breakdown
                    .iter()
                    .map(|(_, _, steps, _)| format!("{:.2}", steps[i])),
            );
            row
        })
        .collect();
    let rest = |f: &dyn Fn(f64, &[f64], f64) -> f64| -> Vec<String> {
        breakdown
            .iter()
            .map(|(_, agent, steps, wall)| format!("{:.2}", f(*agent, steps, *wall)))
            .collect()
    };
    for (name, value) in [
        (
            "agent: the rest (request checks, ENI wait, locks)",
            rest(&|agent, steps, _| agent - steps.iter().sum::<f64>()),
        ),
        ("agent: whole ADD", rest(&|agent, _, _| agent)),
        (
            "shim exec and gRPC round trip (wall - agent)",
            rest(&|agent, _, wall| wall - agent),
        ),
        ("ADD wall, mean", rest(&|_, _, wall| wall)),
    ] {
        let mut row = vec![name.to_owned()];
        row.extend(value);
        step_rows.push(row);
    }
    println!("\n## Where an ADD's time goes (eniflow's shim, mean ms per ADD)\n");
    for row in &step_rows {
        println!("| {} |", row.join(" | "));
    }
    let mib = |kib: f64| format!("{:.1} MiB", kib / 1024.0);
    let cost_rows = vec![
        vec!["agent RSS, pool full, no pods".into(), mib(idle_rss)],
        vec![format!("agent RSS, {} pods", BACKGROUND + 1), mib(rss_250)],
        vec![format!("agent RSS, {DENSE} pods"), mib(rss_dense)],
        vec!["agent peak RSS over the run (VmHWM)".into(), mib(peak_rss)],
        vec![
            "agent CPU per 100 ADDs (through the shim)".into(),
            format!("{cpu_per_100:.2} s"),
        ],
        vec!["shim peak RSS (ADD)".into(), mib(shim_rss as f64)],
        vec![
            "  its floor: the measuring launcher's own size (the shim forks from it)".into(),
            mib(cni::peak_rss_floor_kib() as f64),
        ],
        vec![
            "shim exec, VERSION (answered alone), p50 / p99".into(),
            format!(
                "{:.1} / {:.1} ms",
                percentile(&version_execs, 50.0),
                percentile(&version_execs, 99.0)
            ),
        ],
    ];
    let cost_rows = [
        cost_rows,
        vec![
            vec![
                format!(
                    "restart: SIGKILL with {} pods, until an ADD succeeds",
                    BACKGROUND + 1
                ),
                format!("{:.0} ms", restart.until_add),
            ],
            vec![
                "restart: until its start-up work is over (ENIs re-adopted, the pool reconciled with EC2: its ready file)".into(),
                format!("{:.0} ms", restart.until_ready),
            ],
            vec![
                "restart: the agent's own start-up time, to the conflist written (awscni_ipamd_startup_duration_seconds)"
                    .into(),
                format!("{:.0} ms", restart.startup),
            ],
            vec![
                "cold start (a node's first start, empty pool): to the conflist written".into(),
                format!("{cold_start:.0} ms"),
            ],
        ],
    ]
    .concat();
    println!("\n## Memory, CPU and restart\n");
    for row in &cost_rows {
        println!("| {} |", row.join(" | "));
    }
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
            "{SAMPLES} pods added and deleted one after another on the lab's node (m5.16xlarge, prefix delegation, ENIFLOW_MAX_PODS={DENSE} for the memory row), with 0 and {BACKGROUND} other pods; the pool is full first and released addresses are reusable at once, so ADD never waits for EC2. eniflow through its shim run as a runtime runs it and through cnitool, Debian's bridge + host-local through cnitool, in one run."
        ),
        tables: vec![
            Table {
                caption: "Latency, ms".into(),
                header: [
                    "path",
                    "other pods",
                    "ADD p50",
                    "ADD p99",
                    "ADD max",
                    "DEL p50",
                    "DEL p99",
                    "DEL max",
                ]
                .map(String::from)
                .to_vec(),
                rows,
            },
            Table {
                caption: "Where an ADD's time goes: eniflow's shim, mean ms per ADD; the agent's steps from its own eniflow_cni_add_step_duration_seconds".into(),
                header: ["", "0 other pods", "249 other pods"]
                    .map(String::from)
                    .to_vec(),
                rows: step_rows,
            },
            Table {
                caption: "Memory, CPU and restart (the agent's from /proc; the shim's peak from wait4, forked from a small launcher: spawned from the bench driver it would start at the driver's size)".into(),
                header: ["what", "measured"].map(String::from).to_vec(),
                rows: cost_rows,
            },
        ],
        figures: vec![(figure, format!("ADD latency CDF with {BACKGROUND} other pods"))],
        data: json!({
            "latencies": data,
            "add_breakdown_ms": breakdown.iter().map(|(bg, agent, steps, wall)| json!({
                "other_pods": bg, "agent": agent, "wall": wall,
                "steps": AddStep::ALL.iter().zip(steps).map(|(s, ms)| (s.name(), *ms)).collect::<std::collections::BTreeMap<_, _>>(),
            })).collect::<Vec<_>>(),
            "agent_rss_kib": { "idle": idle_rss, "pods_250": rss_250, "pods_1000": rss_dense, "peak": peak_rss },
            "agent_cpu_s_per_100_adds": cpu_per_100,
            "shim_peak_rss_kib": shim_rss,
            "shim_version_exec_ms": version_execs,
            "restart_ms": { "until_add_ok": restart.until_add, "until_ready": restart.until_ready, "agent_startup": restart.startup },
            "cold_start_to_conflist_ms": cold_start,
        }),
    }
    .write();
}
