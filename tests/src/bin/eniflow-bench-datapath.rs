//! `cargo xtask bench` (data-plane part): netperf TCP_RR, TCP_STREAM, UDP_RR and TCP_CRR
//! (connection setup) from a pod to a VPC host with 1, 250 and 1000 pods on the node, three
//! ways, interleaved in one run and reported as ratios to the floor:
//!
//! - floor: the client and the server joined by one veth, no routing at all;
//! - ip rules: the pod behind a host veth, routed by the node out of its ENI the VPC CNI way:
//!   per pod `to <pod> lookup main` (priority 512) and `from <pod> lookup <ENI table>` (1536),
//!   the measured pod's rules added last as the newest pod's are;
//! - eniflow: the same topology with eniflow's programs on the ENI and the pod's host veth and
//!   the other pods in its maps (no ip rule at all).
//!
//! At 1 and 1000 pods, each eniflow program's cost per run from the kernel's own accounting
//! (BPF_ENABLE_STATS while the measurement lasts), beside the lab's no-op program on the same
//! hook of the ip-rules node measured the same way: the accounting's own clock reads cost as
//! much as a small program on this VM, so the net figure is the program's minus the no-op's.
//!
//! Pod to pod on the node (a second pod on the same ENI, its rules as new as the measured
//! pod's), TCP_RR and TCP_STREAM, the same three ways.
//!
//! Then, with 1000 pods, the cost of drops: eniflow's TCP_RR while another pod on the node
//! floods spoofed packets (each dropped and counted, a sample reported to the drop monitor),
//! against TCP_RR without the flood, interleaved; and the CPU the agent's scrape and pods
//! view take with 250 pods in the maps (in-process, the agent's own code).
//!
//! Topology of the routed ways: pod ns ─veth─ node ns ─veth "eni"─ VPC ns (the subnet router
//! 10.1.0.1 and the server 10.9.0.10). Run as root; netperf and netserver come from
//! $ENIFLOW_NETPERF_DIR (`cargo xtask bench` fetches them).

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use aya::programs::tc::TcAttachType;
use eniflow_agent::datapath::{
    self, AttachMode, Datapath, EniPort, Forwarding, Pins, Plane, PodPort,
};
use eniflow_common::{programs, ENI_ROLE_PRIMARY};
use eniflow_tests::{
    bpffs_dir, bpftool,
    dataplane::Noops,
    netns::Netns,
    raw::{self, UdpFrame},
    report::{self, Part, Series, Table},
    require_root, BpffsDir,
};
use serde_json::Value;

const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 20);
/// The flooding pod, and the address it spoofs.
const SPOOFER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 21);
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 99);
/// Spoofed packets a second the flood aims at (100k over a 3 s run).
const FLOOD_PPS: u64 = 33_000;
const ENI_PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const SERVER: &str = "10.9.0.10";
const POD_COUNTS: [usize; 3] = [1, 250, 1000];
/// netperf tests: request/response, bulk, UDP request/response, and a new TCP connection per
/// transaction (the stack's conntrack and eniflow's `stack_flows` path on every one).
const TESTS: [&str; 4] = ["TCP_RR", "TCP_STREAM", "UDP_RR", "TCP_CRR"];
/// eniflow's program on each tc hook of the node, where the no-op goes beside it.
const HOOKS: [(&str, &str, TcAttachType); 4] = [
    (programs::POD_EGRESS, HOST_VETH, TcAttachType::Ingress),
    (programs::POD_INGRESS, HOST_VETH, TcAttachType::Egress),
    (programs::ENI_INGRESS, "eni", TcAttachType::Ingress),
    (programs::ENI_EGRESS, "eni", TcAttachType::Egress),
];
/// Pod to pod on the node, same ENI: what the ip-rules way routes by its rules too.
const PEER_TESTS: [&str; 2] = ["TCP_RR", "TCP_STREAM"];
const PEER_FLOW: &str = "pod to pod";
const HOST_VETH: &str = "enibench0";
/// The pod-to-pod rows' server pod, on the same ENI.
const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 30);
const PEER_VETH: &str = "enibench2";
const ROUNDS: usize = 5;
const SECONDS: &str = "3";
/// VPC CNI's route table for the ENI's pods.
const ENI_TABLE: &str = "2";

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Floor,
    IpRules,
    Eniflow,
}

impl Way {
    const ALL: [Way; 3] = [Way::Floor, Way::IpRules, Way::Eniflow];
    fn name(self) -> &'static str {
        match self {
            Way::Floor => "floor (one veth)",
            Way::IpRules => "per-pod ip rules",
            Way::Eniflow => "eniflow",
        }
    }
}

fn netperf_dir() -> PathBuf {
    PathBuf::from(std::env::var("ENIFLOW_NETPERF_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/eniflow/bin",
            std::env::var("HOME").unwrap_or_default()
        )
    }))
}

/// A pod behind a host veth in a node namespace whose ENI leads to the VPC namespace, and a
/// second pod on the same node and ENI (the pod-to-pod rows' server).
struct Routed {
    pod: Netns,
    peer: Netns,
    node: Netns,
    vpc: Netns,
}

fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname]);
    let links: Value = serde_json::from_str(&out).unwrap();
    let text = links[0]["address"].as_str().unwrap();
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

fn sysctl(ns: &Netns, setting: &str) {
    ns.run("sysctl", &["-qw", setting]);
}

/// A pod wired the way both routed ways share (VPC CNI's pod side): `addr`/32 on eth0, the
/// 169.254.1.1 gateway with a permanent neighbour, and the node's /32 route to it.
fn wire_pod(node: &Netns, pod: &Netns, host_veth: &str, addr: Ipv4Addr) {
    eniflow_tests::vpc_cni::veth_and_pod_side(node, pod, host_veth, &addr.to_string());
    node.ip(&[
        "route",
        "add",
        &format!("{addr}/32"),
        "dev",
        host_veth,
        "scope",
        "link",
    ]);
}

impl Routed {
    fn new() -> Routed {
        let (pod, node, vpc) = (Netns::new("bpod"), Netns::new("bnode"), Netns::new("bvpc"));
        node.add_veth("eni", &vpc, "vpc0");
        node.ip(&["addr", "add", &format!("{ENI_PRIMARY}/24"), "dev", "eni"]);
        node.ip(&["link", "set", "eni", "up"]);
        node.ip(&[
            "route",
            "add",
            "default",
            "via",
            &GATEWAY.to_string(),
            "dev",
            "eni",
        ]);
        sysctl(&node, "net.ipv4.ip_forward=1");
        sysctl(&node, "net.ipv4.conf.all.rp_filter=2");
        vpc.ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "vpc0"]);
        vpc.ip(&["addr", "add", &format!("{SERVER}/32"), "dev", "lo"]);
        vpc.ip(&["link", "set", "vpc0", "up"]);
        // As EC2 does: the pod's address is delivered to the ENI that owns it.
        vpc.ip(&[
            "route",
            "add",
            &format!("{POD}/32"),
            "via",
            &ENI_PRIMARY.to_string(),
            "dev",
            "vpc0",
        ]);

        wire_pod(&node, &pod, HOST_VETH, POD);
        let peer = Netns::new("bpeer");
        wire_pod(&node, &peer, PEER_VETH, PEER);
        Routed {
            pod,
            peer,
            node,
            vpc,
        }
    }
}

/// A second pod behind the eniflow node, which will flood spoofed packets: its namespace and
/// host veth.
fn add_spoofer(routed: &Routed) -> (Netns, String) {
    let pod = Netns::new("bspoof");
    let host_veth = "enibench1".to_owned();
    routed.node.add_veth(&host_veth, &pod, "eth0");
    routed.node.ip(&["link", "set", &host_veth, "up"]);
    pod.ip(&["addr", "add", &format!("{SPOOFER}/32"), "dev", "eth0"]);
    pod.ip(&["addr", "add", &format!("{SPOOFED}/32"), "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    (pod, host_veth)
}

/// Another pod's address: 10.2.0.0/16, none of them the measured pod's.
fn other_pod(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 2, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Runs `ip -batch` in `ns` with one command per line.
fn ip_batch(ns: &Netns, lines: &[String]) {
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.join("\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "ip -batch failed");
}

/// VPC CNI's two rules per pod for other pods `from..to`, then the measured pod's and its
/// peer's, last (the newest pods' rules are the last a lookup reaches).
fn grow_rules(node: &Netns, from: usize, to: usize, first: bool) {
    let mut lines = Vec::new();
    if first {
        lines.push(format!(
            "route add default via {GATEWAY} dev eni table {ENI_TABLE}"
        ));
    } else {
        for pod in [POD, PEER] {
            lines.push(format!("rule del to {pod} lookup main priority 512"));
            lines.push(format!(
                "rule del from {pod} lookup {ENI_TABLE} priority 1536"
            ));
        }
    }
    let pods = (from..to).map(other_pod).chain([PEER, POD]);
    for pod in pods {
        lines.push(format!("rule add to {pod} lookup main priority 512"));
        lines.push(format!(
            "rule add from {pod} lookup {ENI_TABLE} priority 1536"
        ));
    }
    ip_batch(node, &lines);
}

/// A pod's entry in eniflow's maps: `pod`'s eth0 behind `host_veth` of `node`.
fn port_of(node: &Netns, pod: &Netns, host_veth: &str, addr: Ipv4Addr) -> PodPort {
    PodPort {
        addr,
        eni_id: "eni-bench".into(),
        host_ifindex: node.ifindex(host_veth),
        host_mac: mac_of(node, host_veth),
        pod_mac: mac_of(pod, "eth0"),
        branch: None,
    }
}

/// eniflow's programs on the node's ENI and the pods' veths, with the pods (the measured one,
/// its peer, the flooder) and the ENI in its maps.
fn install_eniflow(routed: &Routed, spoofer: &(Netns, String), pins: &Pins) {
    let node = &routed.node;
    let eni_mac = mac_of(node, "eni");
    let eni_ifindex = node.ifindex("eni");
    let pods = vec![
        (
            HOST_VETH.to_owned(),
            port_of(node, &routed.pod, HOST_VETH, POD),
        ),
        (
            PEER_VETH.to_owned(),
            port_of(node, &routed.peer, PEER_VETH, PEER),
        ),
        (
            spoofer.1.clone(),
            port_of(node, &spoofer.0, &spoofer.1, SPOOFER),
        ),
    ];
    let pins = pins.clone();
    node.within(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut dp = Datapath::load(pins, AttachMode::Auto).expect("load eniflow's programs");
            dp.attach_eni("eni").await.expect("attach to the ENI");
            let plane = Plane::new(dp).expect("open the maps");
            let eni = EniPort {
                id: "eni-bench".into(),
                ifindex: eni_ifindex,
                ifname: "eni".into(),
                mac: eni_mac,
                primary: ENI_PRIMARY,
                gateway: GATEWAY,
                role: ENI_ROLE_PRIMARY,
            };
            plane
                .set_enis(vec![eni], &[(Ipv4Addr::new(10, 0, 0, 0), 8)])
                .await
                .expect("ENI table");
            for (host_veth, port) in pods {
                let addr = port.addr;
                plane
                    .add_pod(&host_veth, port)
                    .await
                    .unwrap_or_else(|e| panic!("add the pod {addr}: {e}"));
            }
        });
    });
}

/// Other pods in eniflow's maps (as their entries would be; their veths do not exist).
fn grow_map(pins: &Pins, from: usize, to: usize) {
    let mut forwarding = Forwarding::open(pins).expect("open the maps");
    for i in from..to {
        forwarding
            .add_pod(PodPort {
                addr: other_pod(i),
                eni_id: "eni-bench".into(),
                host_ifindex: 1_000_000 + i as u32,
                host_mac: [2, 0, 0, 0, 0, 1],
                pod_mac: [2, 0, 0, 0, 0, 2],
                branch: None,
            })
            .expect("add a pod entry");
    }
}

fn netserver(ns: &Netns) -> Child {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg(netperf_dir().join("netserver"))
        .args(["-D", "-4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start netserver")
}

/// What a netperf test's THROUGHPUT is in (`test` may carry a prefix naming its flow).
fn unit(test: &str) -> &'static str {
    if test.ends_with("TCP_STREAM") {
        "Mbit/s"
    } else {
        "trans/s"
    }
}

/// One netperf run from `ns` to `server`, in `unit(test)`.
fn netperf(ns: &Netns, server: &str, test: &str) -> f64 {
    for _ in 0..3 {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(netperf_dir().join("netperf"))
            .args([
                "-H",
                server,
                "-t",
                test,
                "-l",
                SECONDS,
                "-P",
                "0",
                "--",
                "-o",
                "THROUGHPUT",
            ])
            .output()
            .expect("run netperf");
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(value) = text.lines().rev().find_map(|l| l.trim().parse().ok()) {
            return value;
        }
        // netserver not listening yet: try again.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    panic!(
        "netperf {test} to {server} from {} gave no result",
        ns.name()
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn bar(ratio: f64) -> String {
    "#".repeat((ratio * 40.0).round().clamp(0.0, 60.0) as usize)
}

/// CPU seconds this thread has used.
fn thread_cpu_s() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU milliseconds per call of the agent's metrics scrape and of its pods view (both read the
/// pinned maps), over `calls` calls each.
fn scrape_cost(pins: &Pins, calls: usize) -> (f64, f64) {
    let settings = serde_json::json!({});
    let node = eniflow_agent::introspection::Node {
        ipam: None,
        branch_pods: None,
        pins,
        settings: &settings,
    };
    let started = thread_cpu_s();
    for _ in 0..calls {
        let text = eniflow_agent::metrics::get().render(None, pins);
        assert!(text.contains("eniflow_drops_total"));
    }
    let metrics = (thread_cpu_s() - started) * 1000.0 / calls as f64;
    let started = thread_cpu_s();
    for _ in 0..calls {
        let pods = eniflow_agent::introspection::pods(&node).expect("the pods view");
        assert!(pods["pods"].as_array().unwrap().len() > 1);
    }
    let pods = (thread_cpu_s() - started) * 1000.0 / calls as f64;
    (metrics, pods)
}

/// Spoofed drops the programs counted so far (every hook).
fn spoofed_drops(pins: &Pins) -> u64 {
    datapath::read_hook_drops(pins)
        .expect("read hook_drops")
        .iter()
        .map(|(_, d)| d.spoofed_source)
        .sum()
}

/// Floods spoofed UDP from the spoofer pod at about FLOOD_PPS until `stop`; returns the
/// packets sent.
fn flood(spoofer: &Netns, host_mac: [u8; 6], stop: &std::sync::atomic::AtomicBool) -> u64 {
    let frame = UdpFrame {
        dst_mac: host_mac,
        src_mac: mac_of(spoofer, "eth0"),
        vlan: None,
        src: SPOOFED,
        dst: SERVER.parse().unwrap(),
        src_port: 5000,
        dst_port: 5001,
        payload: vec![0; 64],
    }
    .bytes();
    let ifindex = spoofer.ifindex("eth0");
    spoofer.within(|| {
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            raw::send_many(ifindex, &frame, 500);
            sent += 500;
            let due = std::time::Duration::from_secs_f64(sent as f64 / FLOOD_PPS as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        sent
    })
}

/// One eniflow program's cost per run and the no-op's on the same hook.
struct ProgramCost {
    program: &'static str,
    hook: String,
    runs: u64,
    ns: f64,
    noop_runs: u64,
    noop_ns: f64,
}

/// Each program's average run time while the measured pod does TCP_RR through eniflow, and a
/// no-op's on the same hook while it does the same through the ip-rules node. Statistics are on
/// only while this runs (BPF_ENABLE_STATS: the kernel turns them off when the descriptor closes,
/// so nothing is left to restore, even if the bench dies).
fn program_costs(fast: &Routed, rules: &Routed) -> Vec<ProgramCost> {
    let noops = Noops::attach(&rules.node, &HOOKS.map(|(_, ifname, hook)| (ifname, hook)));
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let before = bpftool::prog_runs();
    for _ in 0..ROUNDS {
        netperf(&fast.pod, SERVER, "TCP_RR");
        netperf(&rules.pod, SERVER, "TCP_RR");
    }
    let after = bpftool::prog_runs();
    drop(stats);
    // (runs, ns per run) of the program with `id`.
    let moved = |id: u32| {
        let was = before
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .unwrap_or_default();
        let now = after
            .iter()
            .find(|p| p.id == id)
            .expect("a program that stayed loaded");
        let runs = now.run_cnt - was.run_cnt;
        let ns = (now.run_time_ns - was.run_time_ns) as f64 / runs.max(1) as f64;
        (runs, ns)
    };
    HOOKS
        .iter()
        .zip(&noops.ids)
        .map(|((program, ifname, hook), noop)| {
            // eniflow's programs are the only ones of their names the bench loads.
            let ids: Vec<u32> = after
                .iter()
                .filter(|p| p.name == *program)
                .map(|p| p.id)
                .collect();
            assert_eq!(ids.len(), 1, "one {program} program loaded, found {ids:?}");
            let (runs, ns) = moved(ids[0]);
            let (noop_runs, noop_ns) = moved(*noop);
            let direction = if *hook == TcAttachType::Ingress { "ingress" } else { "egress" };
            println!(
                "  {program:<12} {runs:>8} runs {ns:>6.0} ns/run; no-op on {ifname} {direction}: {noop_runs:>8} runs {noop_ns:>6.0} ns/run"
            );
            ProgramCost {
                program,
                hook: format!("{ifname} {direction}"),
                runs,
                ns,
                noop_runs,
                noop_ns,
            }
        })
        .collect()
}

fn main() {
    require_root();
    for tool in ["netperf", "netserver"] {
        let path = netperf_dir().join(tool);
        assert!(
            path.exists(),
            "{} is missing: run `cargo xtask bench`",
            path.display()
        );
    }
    let floor = eniflow_tests::netns::Wire::new([10, 77, 0]);
    let floor_server = floor.right_addr.to_string();
    let rules = Routed::new();
    let fast = Routed::new();
    let spoofer = add_spoofer(&fast);
    let root: BpffsDir = bpffs_dir("bench-dp");
    let pins = Pins::new(&*root);
    install_eniflow(&fast, &spoofer, &pins);
    let mut servers = vec![
        netserver(&floor.right),
        netserver(&rules.vpc),
        netserver(&fast.vpc),
        netserver(&rules.peer),
        netserver(&fast.peer),
    ];

    println!(
        "netperf {SECONDS} s per run, {ROUNDS} interleaved rounds; median, and ratio to the floor"
    );
    let mut others = 0;
    let mut measured = Vec::new();
    let mut scrape = None;
    let mut costs = Vec::new();
    for (n, count) in POD_COUNTS.into_iter().enumerate() {
        grow_rules(&rules.node, others, count - 1, n == 0);
        grow_map(&pins, others, count - 1);
        others = count - 1;
        if count == 250 {
            scrape = Some(scrape_cost(&pins, 50));
        }
        let rule_count = rules.node.ip(&["rule", "show"]).lines().count();
        if count == 1 || count == 1000 {
            println!(
                "\nper-run cost of each program with {count} pods (TCP_RR, kernel accounting):"
            );
            costs.push((count, program_costs(&fast, &rules)));
        }
        let to_vpc = TESTS.map(|test| (test.to_owned(), test, SERVER.to_owned()));
        let to_peer =
            PEER_TESTS.map(|test| (format!("{PEER_FLOW} {test}"), test, PEER.to_string()));
        for (name, test, server) in to_vpc.into_iter().chain(to_peer) {
            let mut results: Vec<Vec<f64>> = vec![Vec::new(); 3];
            // Round 0 warms every way up (caches, neighbour entries, the CPU's frequency) and
            // is not counted: in an earlier run a cold first round pulled the 1-pod floor down.
            for round in 0..=ROUNDS {
                for (i, way) in Way::ALL.iter().enumerate() {
                    let value = match way {
                        Way::Floor => netperf(&floor.left, &floor_server, test),
                        Way::IpRules => netperf(&rules.pod, &server, test),
                        Way::Eniflow => netperf(&fast.pod, &server, test),
                    };
                    if round > 0 {
                        results[i].push(value);
                    }
                }
            }
            let medians: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
            let unit = unit(test);
            println!(
                "\n{count} pods on the node ({rule_count} ip rules in the ip-rules node), {name}:"
            );
            for (way, value) in Way::ALL.iter().zip(&medians) {
                let ratio = value / medians[0];
                println!(
                    "  {:<18} {value:>10.0} {unit:<8} {ratio:>5.2}x  {}",
                    way.name(),
                    bar(ratio)
                );
            }
            measured.push((count, name, medians));
        }
    }

    // Drops under a flood: the measured pod's TCP_RR with another pod flooding spoofed packets.
    let host_mac = mac_of(&fast.node, &spoofer.1);
    let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
    let (mut sent, before) = (0, spoofed_drops(&pins));
    for _ in 0..ROUNDS {
        quiet.push(netperf(&fast.pod, SERVER, "TCP_RR"));
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let flooding = scope.spawn(|| flood(&spoofer.0, host_mac, &stop));
            flooded.push(netperf(&fast.pod, SERVER, "TCP_RR"));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            sent += flooding.join().expect("the flood");
        });
    }
    let counted = spoofed_drops(&pins) - before;
    let (quiet, flooded) = (median(&mut quiet), median(&mut flooded));
    let flood_seconds = ROUNDS as f64 * SECONDS.parse::<f64>().unwrap();
    println!(
        "\ndrops under a flood ({} pods): TCP_RR {quiet:.0} quiet, {flooded:.0} while another pod floods spoofed packets ({:.0}/s, {sent} sent, {counted} counted): {:.3}x",
        POD_COUNTS[2],
        sent as f64 / flood_seconds,
        flooded / quiet
    );
    let (scrape_ms, pods_ms) = scrape.expect("measured at 250 pods");
    println!(
        "scrape cost with 250 pods: metrics {scrape_ms:.2} ms CPU, pods view {pods_ms:.2} ms CPU per call"
    );

    write_part(
        &measured,
        &costs,
        (quiet, flooded, sent, counted),
        (scrape_ms, pods_ms),
    );
    for server in &mut servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    let uninstall = fast.node.within(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(datapath::uninstall(&Pins::new(&*root)))
    });
    if let Err(errors) = uninstall {
        eprintln!("uninstall left: {errors:?}");
    }
}

/// The report's data-plane part: a table and a figure per test, the flood and the scrape.
fn write_part(
    measured: &[(usize, String, Vec<f64>)],
    costs: &[(usize, Vec<ProgramCost>)],
    (quiet, flooded, sent, counted): (f64, f64, u64, u64),
    (scrape_ms, pods_ms): (f64, f64),
) {
    let mut part = Part {
        name: "datapath".into(),
        title: "Packets: pod to VPC host, pod to pod".into(),
        method: format!(
            "netperf, {SECONDS} s per run, {ROUNDS} interleaved rounds after one uncounted warm-up round, median; ratios to the floor (one veth) in the same round. TCP_CRR opens a new connection per transaction. Pod to pod: the measured pod to a second pod on the same node and ENI (the floor is still one veth). The ip-rules way routes the pod the VPC CNI way (two rules per pod); eniflow's programs keep every counter (per pod, per hook, drops) on."
        ),
        ..Default::default()
    };
    let mut data = Vec::new();
    // Every count measured the same tests, in the same order.
    let names = measured
        .iter()
        .filter(|(count, _, _)| *count == POD_COUNTS[0])
        .map(|(_, name, _)| name);
    for test in names {
        let rows: Vec<_> = measured.iter().filter(|(_, t, _)| t == test).collect();
        let unit = unit(test);
        part.tables.push(Table {
            caption: format!("{test} ({unit}; ratio to the floor)"),
            header: ["pods", "floor", "per-pod ip rules", "eniflow"]
                .map(String::from)
                .to_vec(),
            rows: rows
                .iter()
                .map(|(count, _, m)| {
                    vec![
                        count.to_string(),
                        format!("{:.0}", m[0]),
                        format!("{:.0} ({:.2}x)", m[1], m[1] / m[0]),
                        format!("{:.0} ({:.2}x)", m[2], m[2] / m[0]),
                    ]
                })
                .collect(),
        });
        let series: Vec<Series> = [(1, "per-pod ip rules"), (2, "eniflow")]
            .iter()
            .map(|(i, name)| Series {
                name: name.to_string(),
                points: rows
                    .iter()
                    .map(|(count, _, m)| (*count as f64, m[*i] / m[0]))
                    .collect(),
            })
            .collect();
        let file = report::line_chart(
            &format!("datapath-{}.svg", test.to_lowercase().replace(' ', "-")),
            &format!("{test}: ratio to the floor against pods on the node"),
            ("pods on the node", "ratio to the floor"),
            &series,
            &[],
        );
        part.figures.push((
            file,
            format!("{test} as a ratio to the floor, by pods on the node"),
        ));
        for (count, _, m) in rows {
            data.push(serde_json::json!({
                "test": test, "pods": count, "floor": m[0], "ip_rules": m[1], "eniflow": m[2],
            }));
        }
    }
    part.tables.push(Table {
        caption: format!("Per-packet cost of each program (kernel accounting, run_time_ns / run_cnt, during {ROUNDS} x {SECONDS} s of TCP_RR), beside the lab's no-op program on the same hook of the ip-rules node; net = program - no-op"),
        header: ["pods", "program (hook)", "runs", "ns per run", "no-op ns per run", "net ns", "ratio to no-op"]
            .map(String::from)
            .to_vec(),
        rows: costs
            .iter()
            .flat_map(|(count, programs)| {
                programs.iter().map(move |c| {
                    // A program this traffic never reached has no cost to show.
                    let shown = |text: String| if c.runs == 0 { "-".into() } else { text };
                    vec![
                        count.to_string(),
                        format!("{} ({})", c.program, c.hook),
                        c.runs.to_string(),
                        shown(format!("{:.0}", c.ns)),
                        format!("{:.0}", c.noop_ns),
                        shown(format!("{:.0}", c.ns - c.noop_ns)),
                        shown(format!("{:.2}", c.ns / c.noop_ns)),
                    ]
                })
            })
            .collect(),
    });
    part.tables.push(Table {
        caption: format!(
            "Drops under a flood ({} pods): another pod on the node floods spoofed UDP, every packet dropped at pod_egress and counted, a sample (at most 1000/s per CPU) reported to the monitor",
            POD_COUNTS[2]
        ),
        header: ["TCP_RR quiet", "TCP_RR flooded", "ratio", "spoofed sent", "drops counted"]
            .map(String::from)
            .to_vec(),
        rows: vec![vec![
            format!("{quiet:.0}"),
            format!("{flooded:.0}"),
            format!("{:.3}", flooded / quiet),
            sent.to_string(),
            counted.to_string(),
        ]],
    });
    part.tables.push(Table {
        caption:
            "The agent's scrape with 250 pods in the maps (its own code, in-process; CPU per call)"
                .into(),
        header: ["GET /metrics", "GET /v1/pods"].map(String::from).to_vec(),
        rows: vec![vec![
            format!("{scrape_ms:.2} ms"),
            format!("{pods_ms:.2} ms"),
        ]],
    });
    let costs: Vec<_> = costs
        .iter()
        .flat_map(|(count, programs)| {
            programs.iter().map(move |c| {
                serde_json::json!({
                    "pods": count, "program": c.program, "hook": c.hook, "runs": c.runs,
                    "ns_per_run": c.ns, "noop_runs": c.noop_runs, "noop_ns_per_run": c.noop_ns,
                })
            })
        })
        .collect();
    part.data = serde_json::json!({
        "rows": data,
        "program_costs": costs,
        "flood": { "quiet": quiet, "flooded": flooded, "sent": sent, "counted": counted },
        "scrape_ms": { "metrics": scrape_ms, "pods": pods_ms },
    });
    part.write();
}
