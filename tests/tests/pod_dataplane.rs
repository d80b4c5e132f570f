//! The eBPF data plane on the lab, with real packets through a fabric that enforces EC2's
//! source/destination check: pods on the primary and on a secondary ENI reach remote VPC hosts
//! and each other with no per-pod ip rule; a spoofing pod is dropped and counted; off-VPC
//! traffic leaves SNATed; a service address DNAT'd by the node still leaves by the pod's ENI;
//! the agent killed during a ping flood costs no packet and the restarted agent re-adopts.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use eniflow_common::maps;
use eniflow_tests::{
    bpftool,
    cni::{address, pings, pod_args, PodNode as Node},
    dataplane::{capture_on, dnat, drops_moved, Taps},
    lab::{internet, LabSpec},
    netns::Netns,
    raw::{self, UdpFrame},
    require_root,
};
use serde_json::Value;

struct Pod {
    netns: Netns,
    container: String,
    ip: String,
    device_index: u64,
}

/// The node with ten pods: the primary ENI holds nine (m5.large: ten addresses, one its own),
/// so the tenth lands on the secondary ENI the warm pool attached.
async fn node_with_pods() -> (Node, Vec<Pod>) {
    let node = Node::start().await;
    let mut pods = Vec::new();
    for i in 0..10 {
        let netns = Netns::new("pod");
        let container = format!("c-dp-{i}");
        let added = node.cni(
            "ADD",
            &container,
            Some(&netns),
            "eth0",
            &pod_args(&format!("dp-{i}")),
        );
        assert!(added.ok, "ADD {container}: {}", added.json);
        let ip = address(&added);
        let device_index = device_index_of(&node, &ip);
        pods.push(Pod {
            netns,
            container,
            ip,
            device_index,
        });
    }
    (node, pods)
}

fn device_index_of(node: &Node, ip: &str) -> u64 {
    node.lab.view()["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["private_ips"].as_array().unwrap().iter().any(|a| a == ip))
        .and_then(|e| e["device_index"].as_u64())
        .unwrap_or_else(|| panic!("{ip} is on no ENI"))
}

fn on_device(pods: &[Pod], index: u64) -> &Pod {
    pods.iter()
        .find(|p| p.device_index == index)
        .unwrap_or_else(|| panic!("no pod on the ENI at device index {index}"))
}

/// `node_with_pods`, its secondary-ENI pod checked to be routed by its ENI; that pod is
/// `on_device(&pods, 1)`.
async fn node_with_secondary_pod() -> (Node, Vec<Pod>) {
    let (node, pods) = node_with_pods().await;
    assert_on_its_eni(&node, on_device(&pods, 1));
    (node, pods)
}

/// The data plane routes `pod` by its ENI as soon as its ADD answers (ADD waits for a new
/// ENI to be set up on the node).
/// A node whose primary address DNATs `proto` port `node_port` to its secondary-ENI pod's
/// `pod_port` (hostPort/NodePort style); returns the node, its pods and that address.
async fn dnat_to_secondary_pod(
    proto: &str,
    node_port: u16,
    pod_port: u16,
) -> (Node, Vec<Pod>, String) {
    let (node, pods) = node_with_secondary_pod().await;
    let node_ip = node.lab.node.primary_ip.clone();
    dnat(
        &node.lab.node.netns,
        &[
            "-d",
            &node_ip,
            "-p",
            proto,
            "--dport",
            &node_port.to_string(),
        ],
        &format!("{}:{pod_port}", on_device(&pods, 1).ip),
    );
    (node, pods, node_ip)
}

fn assert_on_its_eni(node: &Node, pod: &Pod) {
    let eth = format!("eth{}", pod.device_index);
    let want = node.lab.node.netns.ifindex(&eth);
    let entry = node.pod_entry(&pod.ip);
    assert!(
        entry.as_ref().is_some_and(|e| e["eni_ifindex"] == want),
        "{} does not have {eth} (ifindex {want}) as its ENI: {entry:?}",
        pod.ip
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_every_eni_reach_the_vpc_and_each_other_without_ip_rules() {
    require_root();
    let (node, pods) = node_with_pods().await;
    let primary = on_device(&pods, 0);
    let secondary = on_device(&pods, 1);
    assert_on_its_eni(&node, secondary);
    assert_on_its_eni(&node, primary);

    let hosts: Vec<&str> = node
        .lab
        .hosts
        .iter()
        .map(|h| h.primary_ip.as_str())
        .collect();
    for host in &hosts {
        assert!(pings(&secondary.netns, host), "secondary-ENI pod -> {host}");
        assert!(pings(&primary.netns, host), "primary-ENI pod -> {host}");
    }
    for host in &node.lab.hosts {
        assert!(
            pings(&host.netns, &secondary.ip),
            "{} -> the secondary-ENI pod",
            host.primary_ip
        );
    }
    assert!(
        pings(&primary.netns, &secondary.ip),
        "pod -> pod on this node"
    );
    assert!(
        pings(&secondary.netns, &primary.ip),
        "pod -> pod on this node"
    );

    // Everything above went by eniflow's programs, not the kernel stack.
    assert_eq!(node.pod_counter(&secondary.ip, "sent_to_stack"), 0);
    assert!(node.pod_counter(&secondary.ip, "sent_packets") >= 12);
    assert!(node.pod_counter(&secondary.ip, "received_packets") >= 12);
    let drops = node.pod_drops();
    assert!(drops.is_empty(), "drops on a healthy path: {drops:?}");

    // On-call view: each pod's entry by field name.
    let entry = node
        .pod_entry(&secondary.ip)
        .expect("the secondary pod's entry");
    for field in [
        "host_ifindex",
        "eni_ifindex",
        "pod_mac",
        "host_mac",
        "vlan",
        "flags",
    ] {
        assert!(entry.get(field).is_some(), "no {field} in {entry}");
    }
    for pod in &pods {
        assert!(node.pod_entry(&pod.ip).is_some(), "{} has no entry", pod.ip);
    }

    // No per-pod routing state beyond a /32 route: the three rules every Linux has.
    let rules = node.lab.node.netns.ip(&["rule", "show"]);
    assert_eq!(
        rules.lines().count(),
        3,
        "ip rule holds more than the defaults:\n{rules}"
    );
    for pod in &pods {
        assert!(!rules.contains(&pod.ip), "{rules}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_sending_from_another_pods_address_is_dropped_and_counted() {
    require_root();
    let (node, pods) = node_with_secondary_pod().await;
    let spoofer = on_device(&pods, 0);
    let victim = on_device(&pods, 1);
    let host = &node.lab.hosts[0].primary_ip;
    assert!(pings(&spoofer.netns, host));

    spoofer
        .netns
        .ip(&["addr", "add", &format!("{}/32", victim.ip), "dev", "eth0"]);
    // Dropped means nothing with the victim's address leaves any of the node's ENIs (the reply
    // would reach the victim either way, so the ping's own outcome proves nothing).
    let node_ns = &node.lab.node.netns;
    let links: Value = serde_json::from_str(&node_ns.ip(&["-j", "link", "show"])).unwrap();
    let enis: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|name| name.starts_with("eth"))
        .map(str::to_owned)
        .collect();
    assert!(enis.len() >= 2, "the node's ENIs: {enis:?}");
    let enis: Vec<&str> = enis.iter().map(String::as_str).collect();
    let (pods_before, hooks_before) = (node.pod_drops(), node.hook_drops());
    // The on-call view: the monitor prints the drops as they happen.
    let monitor = node.agent_spawn(&["monitor", "--format", "json", "--count", "1"]);
    let leaked = capture_on(
        node_ns,
        &enis,
        &format!("icmp and src host {} and dst host {host}", victim.ip),
        || {
            Command::new("nsenter")
                .args([
                    &format!("--net={}", spoofer.netns.path()),
                    "ping",
                    "-c",
                    "3",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    "-I",
                    &victim.ip,
                    host,
                ])
                .output()
                .unwrap();
        },
    );
    assert!(
        leaked.trim().is_empty(),
        "spoofed frames left the node's ENIs ({enis:?}):\n{leaked}"
    );
    // Counted against the pod that sent them and on the hook that dropped them, under their
    // reason and no other.
    let by_pod = drops_moved(&pods_before, &node.pod_drops());
    let by_hook = drops_moved(&hooks_before, &node.hook_drops());
    assert_eq!(
        by_pod.keys().collect::<Vec<_>>(),
        [&(spoofer.ip.clone(), "spoofed_source")],
        "{by_pod:?}"
    );
    assert!(by_pod.values().all(|n| *n >= 3), "{by_pod:?}");
    assert_eq!(
        by_hook.keys().collect::<Vec<_>>(),
        [&("pod_egress".to_owned(), "spoofed_source")],
        "{by_hook:?}"
    );
    let event = first_event(monitor);
    assert_eq!(event["reason"], "spoofed_source", "{event}");
    assert_eq!(event["hook"], "pod_egress", "{event}");
    assert_eq!(event["pod"], spoofer.ip.as_str(), "{event}");
    assert_eq!(event["source"], victim.ip.as_str(), "{event}");
    assert_eq!(event["destination"], host.as_str(), "{event}");
    assert_eq!(event["protocol"], "icmp", "{event}");
}

/// The first event a `monitor --count 1` printed (it is killed if none came within 10 s).
fn first_event(mut monitor: std::process::Child) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while monitor.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = monitor.kill();
            let _ = monitor.wait();
            panic!("the monitor printed no drop event within 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = monitor.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "monitor: {text}");
    serde_json::from_str(text.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("monitor printed no JSON event ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_vpc_traffic_leaves_snated_and_a_dnated_service_leaves_by_the_pods_eni() {
    require_root();
    let (node, pods) = node_with_secondary_pod().await;
    let pod = on_device(&pods, 1);
    let node_ns = &node.lab.node.netns;

    // A service address, DNAT'd by the node to a host on the other subnet: the stack routes the
    // rewritten packet out of the primary ENI, the ENI program moves it to the pod's own ENI,
    // and the reply goes back through the stack to be un-DNAT'd.
    let backend = &node.lab.hosts[1].primary_ip;
    dnat(node_ns, &["-d", "10.96.0.10/32"], backend);
    assert!(
        pings(&pod.netns, "10.96.0.10"),
        "secondary-ENI pod -> DNAT'd service"
    );
    assert!(node.pod_counter(&pod.ip, "sent_to_stack") >= 2);

    let internet = node.lab.internet();
    assert!(
        pings(&pod.netns, internet::HOST),
        "secondary-ENI pod -> the internet"
    );
    // Without the SNAT the internet cannot answer a pod address.
    node_ns.run(
        "iptables",
        &[
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "eniflow: SNAT pod traffic leaving the VPC",
            "-j",
            "ENIFLOW-SNAT",
        ],
    );
    assert!(
        !pings(&pod.netns, internet::HOST),
        "the internet answered a pod address without SNAT"
    );
    drop(internet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_during_a_ping_flood_costs_no_packet_and_readopts() {
    require_root();
    let (mut node, pods) = node_with_secondary_pod().await;
    let pod = on_device(&pods, 1);
    let host = node.lab.hosts[1].primary_ip.clone();

    let flood = Command::new("nsenter")
        .args([
            &format!("--net={}", pod.netns.path()),
            "ping",
            "-q",
            "-c",
            "1500",
            "-i",
            "0.002",
            "-W",
            "1",
            &host,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.agent.take().expect("running").kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.start_agent();
    let out = flood.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    let line = summary
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {summary}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(numbers[0], 1500, "{line}");
    assert_eq!(
        numbers[1], 1500,
        "lost packets while the agent restarted: {line}"
    );

    // The restarted agent re-adopted the pod: DEL removes its entry and its link pins.
    let entry = node
        .pod_entry(&pod.ip)
        .expect("entry kept across the restart");
    let host_ifindex = entry["host_ifindex"].as_u64().unwrap();
    let del = node.cni(
        "DEL",
        &pod.container,
        Some(&pod.netns),
        "eth0",
        &pod_args("x"),
    );
    assert!(del.ok, "DEL: {}", del.json);
    assert!(node.pod_entry(&pod.ip).is_none(), "entry left after DEL");
    let veths = bpftool::dump(&node.map(maps::VETHS));
    assert!(
        !veths
            .iter()
            .any(|e| bpftool::formatted(e, maps::VETHS)["key"] == host_ifindex),
        "veth entry left after DEL"
    );
    let links = node.map(maps::PODS);
    let links = links.parent().unwrap().parent().unwrap().join("links");
    let left: Vec<_> = std::fs::read_dir(&links)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("if{host_ifindex}_")))
        .collect();
    assert!(left.is_empty(), "link pins left after DEL: {left:?}");

    // And the restarted agent wires new pods.
    let fresh = Netns::new("pod");
    let added = node.cni("ADD", "c-dp-new", Some(&fresh), "eth0", &pod_args("dp-new"));
    assert!(added.ok, "{}", added.json);
    assert!(pings(&fresh, &host));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_two_nodes_reach_each_other_by_their_enis() {
    require_root();
    let spec = LabSpec {
        second_node: true,
        ..LabSpec::default()
    };
    let node = Node::start_custom(spec, &[], &[]).await;
    let peer = node.start_second_agent().await;
    let here = Netns::new("pod");
    let there = Netns::new("pod");
    let added = node.cni("ADD", "c-x-here", Some(&here), "eth0", &pod_args("x-here"));
    assert!(added.ok, "{}", added.json);
    let here_ip = address(&added);
    let added = peer.cni(
        "ADD",
        "c-x-there",
        Some(&there),
        "eth0",
        &pod_args("x-there"),
    );
    assert!(added.ok, "{}", added.json);
    let there_ip = address(&added);
    assert!(pings(&here, &there_ip), "pod -> pod on the other node");
    assert!(pings(&there, &here_ip), "pod on the other node -> pod");
    assert_eq!(node.pod_counter(&here_ip, "sent_to_stack"), 0);
    assert!(node.pod_counter(&here_ip, "received_packets") >= 4);
}

/// Another tool's program on the same hook as eniflow's: placed first it sees every packet and
/// eniflow still forwards; placed last it sees only what eniflow passes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tc_program_chains_before_and_after_eniflows() {
    use eniflow_lab_common as lab;

    require_root();
    let (node, pods) = node_with_secondary_pod().await;
    let pod = on_device(&pods, 1);
    let veth = node
        .lab
        .node
        .netns
        .ip(&["-j", "link", "show"])
        .parse::<Value>()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifindex"] == node.pod_entry(&pod.ip).unwrap()["host_ifindex"])
        .and_then(|l| l["ifname"].as_str().map(str::to_owned))
        .expect("the pod's host veth");

    let taps = Taps::ingress(&node.lab.node.netns, &veth);
    let seen = |position| taps.seen(position);

    let host = &node.lab.hosts[0].primary_ip;
    assert!(
        pings(&pod.netns, host),
        "VPC traffic with another program chained"
    );
    assert!(seen(lab::TAP_FIRST) >= 2, "the first program saw nothing");
    assert_eq!(
        seen(lab::TAP_LAST),
        0,
        "eniflow passed on packets it forwarded"
    );

    let internet = node.lab.internet();
    assert!(
        pings(&pod.netns, internet::HOST),
        "off-VPC traffic with another program chained"
    );
    assert!(
        seen(lab::TAP_LAST) >= 2,
        "eniflow did not pass off-VPC packets on"
    );
    drop(internet);
}

/// hostPort/NodePort style: a remote host connects to the node's address, the node DNATs to a
/// pod on the secondary ENI; the pod's replies must go back through the stack to be un-DNAT'd
/// (sent straight out of its ENI they would carry the pod's address and the client would reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dnat_to_a_pod_is_answered_through_the_stack() {
    use std::io::{Read, Write};
    require_root();
    let (node, pods, node_ip) = dnat_to_secondary_pod("tcp", 30080, 8080).await;
    let pod = on_device(&pods, 1);
    let listener = pod
        .netns
        .within(|| std::net::TcpListener::bind(("0.0.0.0", 8080)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"from the pod").unwrap();
    });
    let host = &node.lab.hosts[0];
    let answer = host.netns.within(|| {
        let to = format!("{node_ip}:30080").parse().unwrap();
        let mut conn = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .expect("connect through the node's DNAT");
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    });
    server.join().unwrap();
    assert_eq!(answer, "from the pod");
    assert!(node.pod_counter(&pod.ip, "sent_to_stack") >= 2);
}

/// Flows a pod can make the programs mark: every port of TCP, UDP and ICMP echo.
const MARKABLE_PER_POD: usize = 3 * 65536;

/// What a pod can do to the stack-flow marks of others: two hostile pods each send a new flow
/// (two packets) to the node on every port of three protocols (393,216 new flows, half again
/// what `stack_flows` holds), while another pod's hostPort connection, DNAT'd by the node, is
/// idle.
/// Each flooder goes over its budget of marks within its first few thousand flows and is the
/// stack's from then on: the idle connection's mark stays, and its next reply still goes back
/// through the stack's un-DNAT. The flooders keep working, through the stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_flows_cannot_evict_another_pods_nat_marks() {
    use std::io::{Read, Write};
    require_root();
    let (node, pods, node_ip) = dnat_to_secondary_pod("tcp", 30081, 8081).await;
    let victim = on_device(&pods, 1);
    let flooders: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.device_index == 0)
        .take(2)
        .collect();
    assert_eq!(flooders.len(), 2);

    let listener = victim
        .netns
        .within(|| std::net::TcpListener::bind(("0.0.0.0", 8081)).unwrap());
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"one").unwrap();
        wait.recv().unwrap();
        conn.write_all(b"two").unwrap();
        // Open until the client has read (or given up).
        let _ = conn.read(&mut [0u8; 1]);
    });
    let host = &node.lab.hosts[0];
    let mut conn = host.netns.within(|| {
        let to = format!("{node_ip}:30081").parse().unwrap();
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .expect("connect through the node's DNAT")
    });
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut word = [0u8; 3];
    conn.read_exact(&mut word).unwrap();
    assert_eq!(&word, b"one");

    let node_addr: std::net::Ipv4Addr = node_ip.parse().unwrap();
    let marks_before = bpftool::dump(&node.map(maps::STACK_FLOWS)).len();
    // What the budgets let the flooders add: each its burst, and its rate while it floods.
    let mut allowed = 0;
    for flooder in &flooders {
        let neigh: Value =
            serde_json::from_str(&flooder.netns.ip(&["-j", "neigh", "show", "169.254.1.1"]))
                .unwrap();
        let host_mac = raw::mac(neigh[0]["lladdr"].as_str().unwrap());
        let pod_mac = mac_in(&flooder.netns, "eth0");
        let own: std::net::Ipv4Addr = flooder.ip.parse().unwrap();
        let frames: Vec<Vec<u8>> = [17u8, 6, 1]
            .into_iter()
            .flat_map(|protocol| (0..=u16::MAX).map(move |port| (protocol, port)))
            .flat_map(|(protocol, port)| {
                let mut f = UdpFrame {
                    dst_mac: host_mac,
                    src_mac: pod_mac,
                    vlan: None,
                    src: own,
                    dst: node_addr,
                    src_port: port,
                    dst_port: 9,
                    payload: vec![0; 8],
                }
                .bytes();
                f[23] = protocol;
                if protocol == 1 {
                    // An echo request whose id is the port.
                    f[34..36].copy_from_slice(&[8, 0]);
                    f[38..40].copy_from_slice(&port.to_be_bytes());
                }
                // A wrong header checksum: past tc, the stack drops it before conntrack, so
                // the flood fills the programs' map and nothing of the node's.
                f[24] ^= 0xff;
                // Twice: the second lookup marks the entry used, as any real flow's next
                // packet would, so the kernel's LRU cannot sacrifice the flood's entries first.
                [f.clone(), f]
            })
            .collect();
        assert_eq!(frames.len(), 2 * MARKABLE_PER_POD);
        let ifindex = flooder.netns.ifindex("eth0");
        let before = node.pod_counter(&flooder.ip, "sent_to_stack");
        let flooding = Instant::now();
        flooder.netns.within(|| {
            // Paced: a veth's backlog holds 1,000 frames, and a frame dropped there was never
            // seen by the programs.
            for chunk in frames.chunks(500) {
                raw::send_each(ifindex, chunk);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        allowed += eniflow_common::FLOW_MARK_BURST
            + (flooding.elapsed().as_secs_f64() * eniflow_common::FLOW_MARKS_PER_SECOND as f64)
                .ceil() as u64;
        let crossed = node.pod_counter(&flooder.ip, "sent_to_stack") - before;
        assert!(
            crossed as usize >= frames.len() * 9 / 10,
            "only {crossed} of {} flood frames reached the programs",
            frames.len()
        );
    }

    // The idle connection's next reply still reaches the client un-DNAT'd.
    go.send(()).unwrap();
    let answered = conn.read_exact(&mut word);
    drop(conn);
    server.join().unwrap();
    let marks = bpftool::dump(&node.map(maps::STACK_FLOWS)).len();
    let budgets: Vec<Value> = bpftool::dump(&node.map(maps::FLOW_BUDGETS))
        .iter()
        .map(|e| bpftool::formatted(e, maps::FLOW_BUDGETS).clone())
        .collect();
    println!(
        "{} flood frames: {marks_before} marks in {} before, {marks} after (the budgets allowed {allowed} more)",
        4 * MARKABLE_PER_POD,
        maps::STACK_FLOWS
    );
    assert!(
        answered.is_ok() && &word == b"two",
        "the idle DNAT'd connection lost its reply after the flood ({answered:?}, {marks} marks)"
    );
    for flooder in &flooders {
        let budget = budgets
            .iter()
            .find(|b| b["key"] == eniflow_tests::dataplane::wire(&flooder.ip))
            .unwrap_or_else(|| panic!("no budget for {}: {budgets:?}", flooder.ip));
        println!("{}: {}", flooder.ip, budget["value"]);
        assert_ne!(
            budget["value"]["over_since_ns"], 0,
            "{} never went over its budget",
            flooder.ip
        );
    }
    assert!(
        marks <= marks_before + allowed as usize,
        "{marks} marks: the flooders were not held to their budgets"
    );
    // Over budget, a flooder still reaches the VPC, through the stack.
    let stack_before = node.pod_counter(&flooders[0].ip, "sent_to_stack");
    assert!(pings(&flooders[0].netns, &host.primary_ip));
    assert!(node.pod_counter(&flooders[0].ip, "sent_to_stack") > stack_before);
}

/// A DNAT'd UDP flow whose reply the pod sends in fragments: fragments carry no ports, so the
/// programs cannot match them to the flow; every fragment must reach the stack, which
/// reassembles, un-NATs and sends the reply on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_reply_of_a_dnated_flow_is_reassembled_and_un_nated_by_the_stack() {
    require_root();
    let (node, pods, node_ip) = dnat_to_secondary_pod("udp", 30053, 8053).await;
    let pod = on_device(&pods, 1);
    // A 1500-byte MTU in the pod: its 4000-byte reply leaves in three fragments.
    pod.netns.run("ip", &["link", "set", "eth0", "mtu", "1500"]);
    let socket = pod
        .netns
        .within(|| std::net::UdpSocket::bind(("0.0.0.0", 8053)).unwrap());
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let (_, from) = socket.recv_from(&mut buf).unwrap();
        socket.send_to(&[7u8; 4000], from).unwrap();
    });
    let host = &node.lab.hosts[0];
    let (size, from) = host.netns.within(|| {
        let client = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        client
            .send_to(b"hello", format!("{node_ip}:30053"))
            .unwrap();
        let mut buf = [0u8; 8192];
        let (size, from) = client
            .recv_from(&mut buf)
            .expect("the reply's fragments were not reassembled and un-NATed");
        (size, from)
    });
    server.join().unwrap();
    assert_eq!(size, 4000);
    assert_eq!(from.to_string(), format!("{node_ip}:30053"), "un-NATed");
}

/// The ICMP error a pod sends about a DNAT'd flow (here: port unreachable) carries no ports:
/// only the stack's conntrack relates it to the flow and un-NATs it, so the client learns why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_icmp_error_about_a_dnated_flow_reaches_the_client_un_nated() {
    require_root();
    // Nothing listens on the pod's port 8054: its kernel answers port unreachable.
    let (node, _pods, node_ip) = dnat_to_secondary_pod("udp", 30054, 8054).await;
    let host = &node.lab.hosts[0];
    let outcome = host.netns.within(|| {
        let client = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        client.connect(format!("{node_ip}:30054")).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        client.send(b"anyone?").unwrap();
        client
            .recv(&mut [0u8; 64])
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(
        outcome,
        Err(std::io::ErrorKind::ConnectionRefused),
        "the port-unreachable did not reach the client as the node's"
    );
}

/// An ENI detached outside eniflow: its table entry, attachment records and link pins go with
/// its interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_eni_leaves_no_entry_or_pin_behind() {
    require_root();
    // Ten pods fill the primary ENI and start on eth1; the warm pool adds eth2, left empty.
    let (node, _pods) = node_with_pods().await;
    let node_ns = &node.lab.node.netns;
    let third_eni = || {
        node.lab.view()["enis"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["instance_id"] == node.lab.node.id.as_str() && e["device_index"] == 2)
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let eni = loop {
        if let Some(eni) = third_eni() {
            break eni;
        }
        assert!(
            Instant::now() < deadline,
            "the warm pool attached no third ENI"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ifindex = node_ns.ifindex("eth2");
    let in_table = |index: u64| {
        bpftool::dump(&node.map(maps::ENIS))
            .iter()
            .any(|e| bpftool::formatted(e, maps::ENIS)["key"] == index)
    };
    let pins = |index: u32| -> Vec<String> {
        let links = node.map(maps::ENIS);
        let links = links.parent().unwrap().parent().unwrap().join("links");
        std::fs::read_dir(links)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("if{index}_")))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !in_table(u64::from(ifindex)) || pins(ifindex).len() != 2 {
        assert!(
            Instant::now() < deadline,
            "eth2 never got its programs and entry"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    node.lab
        .ec2()
        .detach_network_interface()
        .attachment_id(eni["attachment_id"].as_str().unwrap())
        .force(true)
        .send()
        .await
        .expect("DetachNetworkInterface");
    let deadline = Instant::now() + Duration::from_secs(20);
    while in_table(u64::from(ifindex)) || !pins(ifindex).is_empty() {
        assert!(
            Instant::now() < deadline,
            "eth2's entry or pins outlived it: {:?}",
            pins(ifindex)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let records = bpftool::dump(&node.map(maps::ATTACHMENTS));
    assert!(
        !records
            .iter()
            .any(|e| bpftool::formatted(e, maps::ATTACHMENTS)["key"]["ifindex"] == ifindex),
        "attachment records outlived eth2"
    );
}

/// AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS keeps VPC CNI's meaning: traffic to those CIDRs leaves
/// with the pod's own address (here the internet cannot answer it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_cidrs_are_not_snated() {
    require_root();
    let node = Node::start_custom(
        LabSpec::default(),
        &[],
        &[("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "198.51.100.0/24")],
    )
    .await;
    let pod = Netns::new("pod");
    let added = node.cni("ADD", "c-nosnat", Some(&pod), "eth0", &pod_args("nosnat"));
    assert!(added.ok, "{}", added.json);
    let node_ns = &node.lab.node.netns;
    let deadline = Instant::now() + Duration::from_secs(20);
    let chain = loop {
        let chain = Command::new("nsenter")
            .args([
                &format!("--net={}", node_ns.path()),
                "iptables",
                "-t",
                "nat",
                "-S",
                "ENIFLOW-SNAT",
            ])
            .output()
            .unwrap();
        let chain = String::from_utf8_lossy(&chain.stdout).into_owned();
        if chain.contains("SNAT") {
            break chain;
        }
        assert!(Instant::now() < deadline, "the SNAT chain never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(chain.contains("-d 198.51.100.0/24 -j RETURN"), "{chain}");
    // The pod is connected (a VPC host answers), so the miss below is the exclusion's doing.
    let vpc_host = &node.lab.hosts[0].primary_ip;
    assert!(pings(&pod, vpc_host), "the pod reaches no VPC host");
    let internet = node.lab.internet();
    assert!(
        !pings(&pod, internet::HOST),
        "an excluded destination was reached SNATed"
    );
    drop(internet);
}

/// A link's MAC in `ns`.
fn mac_in(ns: &Netns, ifname: &str) -> [u8; 6] {
    let links: Value =
        serde_json::from_str(&ns.ip(&["-j", "link", "show", "dev", ifname])).unwrap();
    raw::mac(links[0]["address"].as_str().unwrap())
}

/// An ARP reply from `(mac, ip)` to `(to_mac, to_ip)`.
fn arp_reply(
    mac: [u8; 6],
    ip: std::net::Ipv4Addr,
    to_mac: [u8; 6],
    to_ip: std::net::Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&to_ip.octets());
    f
}

/// A minimal IPv6 frame (an all-nodes multicast with no payload).
fn ipv6_frame(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 59, 255]);
    f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f
}

/// Hostile pods: a pod speaks untagged IPv4 and ARP, from its own MAC and address, and nothing
/// else. Each other frame is dropped at the pod's veth and counted under its own reason only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_sending_tags_foreign_macs_foreign_arp_or_ipv6_is_dropped_under_each_reason() {
    require_root();
    let (node, pods) = node_with_pods().await;
    let (hostile, victim) = (&pods[0], &pods[1]);
    let pod_mac = mac_in(&hostile.netns, "eth0");
    let neigh: Value =
        serde_json::from_str(&hostile.netns.ip(&["-j", "neigh", "show", "169.254.1.1"])).unwrap();
    let host_mac = raw::mac(neigh[0]["lladdr"].as_str().unwrap());
    let ifindex = hostile.netns.ifindex("eth0");
    let (own, other): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (hostile.ip.parse().unwrap(), victim.ip.parse().unwrap());
    let host: std::net::Ipv4Addr = node.lab.hosts[0].primary_ip.parse().unwrap();
    // The pod has no IPv6 address, and no IPv6 at all: a healthy pod sends none.
    let v6 = hostile
        .netns
        .run("cat", &["/proc/sys/net/ipv6/conf/eth0/disable_ipv6"]);
    assert_eq!(v6.trim(), "1", "IPv6 left on in the pod");
    let udp = |vlan, src_mac| UdpFrame {
        dst_mac: host_mac,
        src_mac,
        vlan,
        src: own,
        dst: host,
        src_port: 4000,
        dst_port: 4001,
        payload: b"hostile".to_vec(),
    };
    let cases: [(&str, Vec<u8>); 4] = [
        // To a security-group pod's VLAN, say.
        ("vlan_from_pod", udp(Some(11), pod_mac).bytes()),
        ("spoofed_mac", udp(None, [2, 0, 0, 0, 0x66, 6]).bytes()),
        // Claiming the victim's address for the pod's own MAC.
        ("spoofed_arp", arp_reply(pod_mac, other, host_mac, own)),
        ("unexpected_protocol", ipv6_frame(pod_mac)),
    ];
    for (reason, frame) in cases {
        let before = (node.pod_drops(), node.hook_drops());
        hostile.netns.within(|| raw::send_many(ifindex, &frame, 3));
        let by_pod = drops_moved(&before.0, &node.pod_drops());
        let by_hook = drops_moved(&before.1, &node.hook_drops());
        assert_eq!(
            by_pod.into_iter().collect::<Vec<_>>(),
            [((hostile.ip.clone(), reason), 3)],
            "{reason}"
        );
        assert_eq!(
            by_hook.into_iter().collect::<Vec<_>>(),
            [(("pod_egress".to_owned(), reason), 3)],
            "{reason}"
        );
    }
    // Its own ARP, untagged, from its own MAC, passes: the node still reaches it.
    hostile
        .netns
        .within(|| raw::send(ifindex, &arp_reply(pod_mac, own, host_mac, own)));
    assert!(
        pings(&victim.netns, &hostile.ip),
        "the pod is still reachable"
    );
    assert!(node.pod_drops().keys().all(|(pod, _)| *pod == hostile.ip));
}
