//! `cargo xtask bench` (data-plane part): netperf TCP_RR and TCP_STREAM from a pod to a VPC
//! host with 1, 250 and 1000 pods on the node, three ways, interleaved in one run and reported
//! as ratios to the floor:
//!
//! - floor: the client and the server joined by one veth, no routing at all;
//! - ip rules: the pod behind a host veth, routed by the node out of its ENI the VPC CNI way:
//!   per pod `to <pod> lookup main` (priority 512) and `from <pod> lookup <ENI table>` (1536),
//!   the measured pod's rules added last as the newest pod's are;
//! - eniflow: the same topology with eniflow's programs on the ENI and the pod's host veth and
//!   the other pods in its maps (no ip rule at all).
//!
//! Topology of the routed ways: pod ns ─veth─ node ns ─veth "eni"─ VPC ns (the subnet router
//! 10.1.0.1 and the server 10.9.0.10). Run as root; netperf and netserver come from
//! $ENIFLOW_NETPERF_DIR (`cargo xtask bench` fetches them).

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use eniflow_agent::datapath::{
    self, AttachMode, Datapath, EniPort, Forwarding, Pins, Plane, PodPort,
};
use eniflow_common::ENI_ROLE_PRIMARY;
use eniflow_tests::{bpffs_dir, netns::Netns, require_root, BpffsDir};
use serde_json::Value;

const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 20);
const ENI_PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const SERVER: &str = "10.9.0.10";
const POD_COUNTS: [usize; 3] = [1, 250, 1000];
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

/// A pod behind a host veth in a node namespace whose ENI leads to the VPC namespace.
struct Routed {
    pod: Netns,
    node: Netns,
    vpc: Netns,
    host_veth: String,
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

        let host_veth = "enibench0".to_owned();
        node.add_veth(&host_veth, &pod, "eth0");
        node.ip(&["link", "set", &host_veth, "up"]);
        node.ip(&[
            "route",
            "add",
            &format!("{POD}/32"),
            "dev",
            &host_veth,
            "scope",
            "link",
        ]);
        let host_mac = mac_of(&node, &host_veth);
        let host_mac = host_mac.map(|b| format!("{b:02x}")).join(":");
        pod.ip(&["addr", "add", &format!("{POD}/32"), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        pod.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        pod.ip(&[
            "neigh",
            "add",
            "169.254.1.1",
            "lladdr",
            &host_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        Routed {
            pod,
            node,
            vpc,
            host_veth,
        }
    }
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

/// VPC CNI's two rules per pod for other pods `from..to`, then the measured pod's, last.
fn grow_rules(node: &Netns, from: usize, to: usize, first: bool) {
    let mut lines = Vec::new();
    if !first {
        lines.push(format!("rule del to {POD} lookup main priority 512"));
        lines.push(format!(
            "rule del from {POD} lookup {ENI_TABLE} priority 1536"
        ));
    } else {
        lines.push(format!(
            "route add default via {GATEWAY} dev eni table {ENI_TABLE}"
        ));
    }
    for i in from..to {
        let other = other_pod(i);
        lines.push(format!("rule add to {other} lookup main priority 512"));
        lines.push(format!(
            "rule add from {other} lookup {ENI_TABLE} priority 1536"
        ));
    }
    lines.push(format!("rule add to {POD} lookup main priority 512"));
    lines.push(format!(
        "rule add from {POD} lookup {ENI_TABLE} priority 1536"
    ));
    ip_batch(node, &lines);
}

/// eniflow's programs on the node's ENI and the pod's veth, with the pod and the ENI in its maps.
fn install_eniflow(routed: &Routed, pins: &Pins) {
    let eni_mac = mac_of(&routed.node, "eni");
    let host_mac = mac_of(&routed.node, &routed.host_veth);
    let pod_mac = mac_of(&routed.pod, "eth0");
    let eni_ifindex = routed.node.ifindex("eni");
    let host_veth = routed.host_veth.clone();
    let pins = pins.clone();
    routed.node.within(move || {
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
            let pod = PodPort {
                addr: POD,
                eni_id: "eni-bench".into(),
                host_ifindex: datapath::ifindex(&host_veth).expect("the host veth"),
                host_mac,
                pod_mac,
                branch: None,
            };
            plane.add_pod(&host_veth, pod).await.expect("add the pod");
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

/// One netperf run from `ns` to `server`: transactions/s (TCP_RR) or Mbit/s (TCP_STREAM).
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
    let root: BpffsDir = bpffs_dir("bench-dp");
    let pins = Pins::new(&*root);
    install_eniflow(&fast, &pins);
    let mut servers = vec![
        netserver(&floor.right),
        netserver(&rules.vpc),
        netserver(&fast.vpc),
    ];

    println!(
        "netperf {SECONDS} s per run, {ROUNDS} interleaved rounds; median, and ratio to the floor"
    );
    let mut others = 0;
    for (n, count) in POD_COUNTS.into_iter().enumerate() {
        grow_rules(&rules.node, others, count - 1, n == 0);
        grow_map(&pins, others, count - 1);
        others = count - 1;
        let rule_count = rules.node.ip(&["rule", "show"]).lines().count();
        for test in ["TCP_RR", "TCP_STREAM"] {
            let mut results: Vec<Vec<f64>> = vec![Vec::new(); 3];
            for _ in 0..ROUNDS {
                for (i, way) in Way::ALL.iter().enumerate() {
                    let value = match way {
                        Way::Floor => netperf(&floor.left, &floor_server, test),
                        Way::IpRules => netperf(&rules.pod, SERVER, test),
                        Way::Eniflow => netperf(&fast.pod, SERVER, test),
                    };
                    results[i].push(value);
                }
            }
            let medians: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
            let unit = if test == "TCP_RR" {
                "trans/s"
            } else {
                "Mbit/s"
            };
            println!(
                "\n{count} pods on the node ({rule_count} ip rules in the ip-rules node), {test}:"
            );
            for (way, value) in Way::ALL.iter().zip(&medians) {
                let ratio = value / medians[0];
                println!(
                    "  {:<18} {value:>10.0} {unit:<8} {ratio:>5.2}x  {}",
                    way.name(),
                    bar(ratio)
                );
            }
        }
    }
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
