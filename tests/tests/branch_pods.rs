//! Security-group pods on the lab: the agent attaches a trunk ENI, the test plays the VPC
//! resource controller (a branch ENI per pod, associated with the trunk on a VLAN, named in the
//! pod's `vpc.amazonaws.com/pod-eni` annotation, passed through the CNI pod-annotations
//! capability). The lab fabric delivers VLAN v on the trunk to the branch ENI on v and drops a
//! branch address arriving on any other VLAN or untagged.

use std::time::{Duration, Instant};

use eniflow_common::{maps, ENI_ROLE_TRUNK};
use eniflow_lab_common::{TAP_FIRST, TAP_LAST};
use eniflow_tests::{
    bpftool,
    cni::{address, pings, pod_args, Answer, PodNode as Node},
    dataplane::{capture, capture_on, dnat, drops_moved, DropCounts, Taps},
    kube::KubeApi,
    lab::{internet, Lab, LabSpec},
    netns::Netns,
    raw::{self, UdpFrame},
    require_root,
};
use serde_json::{json, Value};

/// The node with a trunk (the agent attaches it) and security-group pods in `mode`.
async fn node_with_trunk(mode: &str) -> (Node, String, String) {
    node_with_trunk_and(mode, &[]).await
}

/// The same, with more of the agent's environment.
async fn node_with_trunk_and(mode: &str, env: &[(&str, &str)]) -> (Node, String, String) {
    node_with_trunk_on(LabSpec::default(), mode, env).await
}

/// The same on a lab of `spec`.
async fn node_with_trunk_on(
    spec: LabSpec,
    mode: &str,
    env: &[(&str, &str)],
) -> (Node, String, String) {
    let mut all = vec![
        ("ENABLE_POD_ENI", "true"),
        ("POD_SECURITY_GROUP_ENFORCING_MODE", mode),
    ];
    all.extend_from_slice(env);
    let node = Node::start_custom(spec, &["--create-trunk"], &all).await;
    wait_for_trunk(node).await
}

/// What an on-call engineer reads with bpftool: every map pinned under maps/ (on a node with
/// branch pods, a regular pod and traffic, so each has entries), each entry by field name.
fn every_pinned_map_prints_by_field_name(node: &Node) {
    let dir = node.map("");
    let mut pinned: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pinned.sort();
    let mut expected: Vec<String> = eniflow_common::maps::ALL
        .iter()
        .map(|m| m.to_string())
        .collect();
    expected.sort();
    assert_eq!(pinned, expected, "the maps pinned under {}", dir.display());
    for map in &pinned {
        if map == eniflow_common::maps::DROP_EVENTS {
            // A ring buffer has no entries to dump: `eniflow-agent monitor` reads it.
            let shown = bpftool::show(&node.map(map));
            assert_eq!(shown["type"], "ringbuf", "{map}: {shown}");
            continue;
        }
        let entries = bpftool::dump(&node.map(map));
        // No NAT'd flow has crossed the node yet: the only maps that may be empty here.
        if ![maps::STACK_FLOWS, maps::FLOW_BUDGETS].contains(&map.as_str()) {
            assert!(!entries.is_empty(), "{map}: no entries to read");
        }
        for entry in &entries {
            let f = bpftool::formatted(entry, map);
            let value = f.get("value").or_else(|| f["values"][0].get("value"));
            assert!(
                f["key"].is_object() || f["key"].is_array() || f["key"].is_u64(),
                "{map}: key not printed: {f}"
            );
            assert!(
                value.is_some_and(|v| v.is_object()),
                "{map}: value fields not named: {f}"
            );
        }
    }
}

/// Once the agent's trunk is attached and in the data plane: the node, the trunk's id and its
/// interface.
async fn wait_for_trunk(node: Node) -> (Node, String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let trunk = node.lab.view()["enis"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["instance_id"] == node.lab.node.id.as_str() && e["interface_type"] == "trunk"
            })
            .cloned();
        if let Some(trunk) = trunk {
            let eth = format!("eth{}", trunk["device_index"]);
            let in_table = bpftool::dump(&node.map(eniflow_common::maps::ENIS))
                .iter()
                .any(|e| {
                    bpftool::formatted(e, eniflow_common::maps::ENIS)["value"]["role"]
                        == ENI_ROLE_TRUNK
                });
            if in_table {
                let id = trunk["id"].as_str().unwrap().to_owned();
                return (node, id, eth);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the trunk never reached the data plane"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The shim's configuration with the pod's annotations, as containerd's CRI passes them.
fn with_annotation(node: &Node, annotation: &str) -> Value {
    let mut config = node.config();
    config["runtimeConfig"] = json!({
        "io.kubernetes.cri.pod-annotations": { "vpc.amazonaws.com/pod-eni": annotation }
    });
    config
}

struct BranchPod {
    netns: Netns,
    container: String,
    ip: String,
    mac: String,
    annotation: String,
}

/// As the resource controller and kubelet do: a branch ENI on `vlan`, then ADD.
async fn add_branch_pod(node: &Node, trunk: &str, vlan: i32, name: &str) -> BranchPod {
    let branch = node
        .lab
        .create_branch_eni(trunk, vlan, &node.lab.security_groups)
        .await;
    let annotation = node.lab.pod_eni_annotation(&[&branch]);
    let netns = Netns::new("sgpod");
    let container = format!("c-{name}");
    let added = node.cni_with(
        "ADD",
        &container,
        netns.path(),
        "eth0",
        &pod_args(name),
        &with_annotation(node, &annotation),
    );
    assert!(added.ok, "ADD {name}: {}", added.json);
    let entry: Value = serde_json::from_str(&annotation).unwrap();
    let ip = address(&added);
    assert_eq!(
        ip, entry[0]["privateIp"],
        "the pod got its branch ENI's address"
    );
    BranchPod {
        netns,
        container,
        ip,
        mac: entry[0]["ifAddress"].as_str().unwrap().to_owned(),
        annotation,
    }
}

fn regular_pod(node: &Node, name: &str) -> (Netns, String) {
    let netns = Netns::new("pod");
    let added = node.cni(
        "ADD",
        &format!("c-{name}"),
        Some(&netns),
        "eth0",
        &pod_args(name),
    );
    assert!(added.ok, "ADD {name}: {}", added.json);
    (netns, address(&added))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_pods_and_a_regular_pod_reach_the_vpc_tagged_with_their_vlans() {
    require_root();
    // A short VLAN cooldown, so the test can wait it out.
    let (mut node, trunk, trunk_eth) =
        node_with_trunk_and("standard", &[("ENIFLOW_VLAN_COOLDOWN", "3")]).await;
    let a = add_branch_pod(&node, &trunk, 11, "sg-a").await;
    let b = add_branch_pod(&node, &trunk, 12, "sg-b").await;
    let (regular, regular_ip) = regular_pod(&node, "plain");
    let hosts: Vec<String> = node
        .lab
        .hosts
        .iter()
        .map(|h| h.primary_ip.clone())
        .collect();

    for host in &hosts {
        assert!(pings(&a.netns, host), "branch pod a -> {host}");
        assert!(pings(&b.netns, host), "branch pod b -> {host}");
        assert!(pings(&regular, host), "regular pod -> {host}");
    }
    every_pinned_map_prints_by_field_name(&node);
    let node_ns = &node.lab.node.netns;
    for (pod, vlan) in [(&a, 11), (&b, 12)] {
        let seen = capture(
            node_ns,
            &trunk_eth,
            &format!("vlan {vlan} and icmp"),
            || {
                assert!(pings(&pod.netns, &hosts[0]));
            },
        );
        let outgoing = seen
            .lines()
            .find(|l| l.contains(&format!("{} >", pod.mac)))
            .unwrap_or_else(|| panic!("no frame from {} on {trunk_eth}:\n{seen}", pod.mac));
        assert!(
            outgoing.contains(&format!("vlan {vlan}")),
            "not tagged {vlan}: {outgoing}"
        );
    }
    // A service address DNAT'd by the node: the stack routes it out of the primary ENI, the
    // ENI program moves it onto the pod's VLAN of the trunk; the reply goes back through the
    // stack to be un-DNAT'd.
    dnat(node_ns, &["-d", "10.96.0.10/32"], &hosts[1]);
    assert!(
        pings(&b.netns, "10.96.0.10"),
        "branch pod -> DNAT'd service"
    );

    // Off-VPC: through the stack, then out by the branch ENI on its VLAN, not SNATed to the
    // node (the lab's internet answers only instances' primary addresses; EC2 would need a NAT
    // gateway for a branch address too).
    let internet = node.lab.internet();
    let seen = capture(
        node_ns,
        &trunk_eth,
        &format!("vlan 11 and icmp and host {}", internet::HOST),
        || {
            let _ = pings(&a.netns, internet::HOST);
        },
    );
    assert!(
        seen.lines()
            .any(|l| l.contains(&format!("{} >", a.mac)) && l.contains(&a.ip)),
        "off-VPC traffic of the branch pod did not leave by its VLAN:\n{seen}"
    );
    drop(internet);

    // Standard mode: node-local traffic between a branch pod and a regular pod stays local: no
    // echo between them crosses the trunk.
    let seen = capture(
        node_ns,
        &trunk_eth,
        &format!("(icmp and host {regular_ip}) or (vlan and icmp and host {regular_ip})"),
        || {
            assert!(pings(&a.netns, &regular_ip));
            assert!(pings(&regular, &a.ip));
        },
    );
    assert!(
        seen.trim().is_empty(),
        "standard mode: node-local echoes crossed the trunk:\n{seen}"
    );

    // The agent restarted: the branch pods are re-adopted and keep working.
    node.agent.take().unwrap().kill();
    node.start_agent();
    assert!(pings(&a.netns, &hosts[1]), "branch pod after the restart");

    // DEL, then the same VLAN again at once: refused until it has cooled (retryable).
    let del = node.cni_with(
        "DEL",
        &a.container,
        a.netns.path(),
        "eth0",
        &pod_args("sg-a"),
        &with_annotation(&node, &a.annotation),
    );
    assert!(del.ok, "{}", del.json);
    assert!(node.pod_entry(&a.ip).is_none(), "entry left after DEL");
    let again = Netns::new("sgpod");
    let reused = node.cni_with(
        "ADD",
        "c-sg-a2",
        again.path(),
        "eth0",
        &pod_args("sg-a2"),
        &with_annotation(&node, &a.annotation),
    );
    assert!(!reused.ok);
    assert_eq!(reused.json["code"], 11, "{}", reused.json);
    assert!(
        reused.json["msg"].as_str().unwrap().contains("VLAN 11"),
        "{}",
        reused.json
    );
    // Cooled (3 s), the VLAN is wired for the next pod.
    std::thread::sleep(Duration::from_millis(3200));
    let cooled = node.cni_with(
        "ADD",
        "c-sg-a2",
        again.path(),
        "eth0",
        &pod_args("sg-a2"),
        &with_annotation(&node, &a.annotation),
    );
    assert!(cooled.ok, "after the cooldown: {}", cooled.json);
    let entry = node.pod_entry(&a.ip).expect("the new pod's entry");
    assert_eq!(entry["vlan"], 11, "{entry}");
    let del = node.cni_with(
        "DEL",
        "c-sg-a2",
        again.path(),
        "eth0",
        &pod_args("sg-a2"),
        &with_annotation(&node, &a.annotation),
    );
    assert!(del.ok, "{}", del.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_sends_node_local_traffic_of_a_branch_pod_through_the_vpc() {
    require_root();
    let (node, trunk, trunk_eth) = node_with_trunk("strict").await;
    let a = add_branch_pod(&node, &trunk, 21, "sg-strict").await;
    let (regular, regular_ip) = regular_pod(&node, "plain-strict");
    // The same capture that stays empty in standard mode: here the echoes cross the trunk.
    let seen = capture(
        &node.lab.node.netns,
        &trunk_eth,
        &format!("(icmp and host {regular_ip}) or (vlan and icmp and host {regular_ip})"),
        || {
            assert!(pings(&a.netns, &regular_ip), "branch pod -> regular pod");
            assert!(pings(&regular, &a.ip), "regular pod -> branch pod");
        },
    );
    assert!(
        seen.lines()
            .any(|l| l.contains(&format!("{} >", a.mac)) && l.contains("vlan 21")),
        "strict mode: the branch pod's echoes did not leave by the trunk:\n{seen}"
    );
}

/// A security-group pod trying to reach another node's pod through the node, past its own
/// security groups: packets it makes the node's stack handle (fragments: the programs send
/// every fragment to the stack, which reassembles and routes by the main table, out of the
/// primary ENI) still leave by its branch ENI on its VLAN, and none leaves by another ENI,
/// where the node's security groups would apply instead of the pod's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_pod_reaches_another_nodes_pod_only_by_its_vlan_fragments_too() {
    require_root();
    let spec = LabSpec {
        second_node: true,
        ..LabSpec::default()
    };
    let (node, trunk, trunk_eth) = node_with_trunk_on(spec, "strict", &[]).await;
    let a = add_branch_pod(&node, &trunk, 31, "sg-cross").await;
    let peer = node.start_second_agent().await;
    let there = Netns::new("pod");
    let added = peer.cni("ADD", "c-far", Some(&there), "eth0", &pod_args("far"));
    assert!(added.ok, "{}", added.json);
    let there_ip = address(&added);
    // A 12000-byte echo leaves the pod (MTU 9001) in two fragments.
    let big_ping = || {
        a.netns.run(
            "ping",
            &["-c", "2", "-i", "0.2", "-W", "2", "-s", "12000", &there_ip],
        );
    };
    let node_ns = &node.lab.node.netns;
    let others: Vec<String> = node_ns
        .run("ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_owned())
        .filter(|n| n.starts_with("eth") && *n != trunk_eth)
        .collect();
    assert!(!others.is_empty(), "the node has no ENI but the trunk");

    // Later fragments (offset > 0) cross the trunk on the pod's VLAN from its branch MAC...
    let seen = capture(
        node_ns,
        &trunk_eth,
        &format!(
            "vlan 31 and src host {} and dst host {there_ip} and ip[6:2] & 0x1fff != 0",
            a.ip
        ),
        big_ping,
    );
    let fragment = seen
        .lines()
        .find(|l| l.contains(&format!("{} >", a.mac)))
        .unwrap_or_else(|| panic!("no fragment of the pod's echo on the trunk:\n{seen}"));
    assert!(fragment.contains("vlan 31"), "not on its VLAN: {fragment}");
    // ...and nothing of the pod's leaves by any other ENI, plain or fragmented.
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    let leaked = capture_on(
        node_ns,
        &others,
        &format!("src host {} or (vlan and src host {})", a.ip, a.ip),
        || {
            assert!(
                pings(&a.netns, &there_ip),
                "branch pod -> the other node's pod"
            );
            big_ping();
        },
    );
    assert!(
        leaked.trim().is_empty(),
        "the branch pod's packets left by the node's other ENIs:\n{leaked}"
    );
    assert!(pings(&there, &a.ip), "the other node's pod -> branch pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_annotation_is_refused_by_field_and_leaves_nothing() {
    require_root();
    let (node, trunk, _) = node_with_trunk("standard").await;
    let branch = node
        .lab
        .create_branch_eni(&trunk, 31, &node.lab.security_groups)
        .await;
    let good: Value = serde_json::from_str(&node.lab.pod_eni_annotation(&[&branch])).unwrap();
    let branch_ip = good[0]["privateIp"].as_str().unwrap().to_owned();
    let with = |field: &str, value: Value| {
        let mut bad = good.clone();
        bad[0][field] = value;
        bad.to_string()
    };
    let cases = [
        ("[{\"eniId\":".to_owned(), "is not JSON"),
        (
            with("vlanId", json!(4095)),
            "vlanId 4095 is outside 1..4094",
        ),
        (with("vlanId", json!(0)), "vlanId 0"),
        (with("ifAddress", json!("02:00:00:zz:00:01")), "ifAddress"),
        (with("privateIp", json!("10.0.1.300")), "privateIp"),
    ];
    let veths_before = node.host_veths();
    let checkpoint =
        std::path::Path::new(&node.files.checkpoint()).with_file_name("branch-pods.json");
    for (annotation, expected) in cases {
        let pod = Netns::new("sgbad");
        let answer: Answer = node.cni_with(
            "ADD",
            "c-sg-bad",
            pod.path(),
            "eth0",
            &pod_args("sg-bad"),
            &with_annotation(&node, &annotation),
        );
        assert!(!answer.ok, "{annotation} was accepted");
        assert_eq!(answer.json["code"], 7, "{}", answer.json);
        let msg = answer.json["msg"].as_str().unwrap();
        assert!(msg.contains(expected), "{annotation}: {msg}");
        assert!(
            !pod.ip(&["link", "show"]).contains("eth0"),
            "half-wired pod for {annotation}"
        );
        assert_eq!(
            node.host_veths(),
            veths_before,
            "veth left for {annotation}"
        );
        let held = std::fs::read_to_string(&checkpoint).unwrap_or_default();
        assert!(!held.contains("c-sg-bad"), "branch pod recorded: {held}");
        assert!(
            node.pod_entry(&branch_ip).is_none() && branch_entries(&node) == 0,
            "map entries left for {annotation}"
        );
    }
    // The same checks see a good annotation's pod (and see it go with DEL).
    let pod = Netns::new("sggood");
    let config = with_annotation(&node, &good.to_string());
    let added = node.cni_with(
        "ADD",
        "c-sg-good",
        pod.path(),
        "eth0",
        &pod_args("sg-good"),
        &config,
    );
    assert!(added.ok, "{}", added.json);
    assert!(node.pod_entry(&branch_ip).is_some() && branch_entries(&node) == 1);
    let deleted = node.cni_with(
        "DEL",
        "c-sg-good",
        pod.path(),
        "eth0",
        &pod_args("sg-good"),
        &config,
    );
    assert!(deleted.ok, "{}", deleted.json);
    assert!(node.pod_entry(&branch_ip).is_none() && branch_entries(&node) == 0);
}

/// Entries of the branches map (trunk, VLAN) -> branch pod.
fn branch_entries(node: &Node) -> usize {
    bpftool::dump(&node.map(eniflow_common::maps::BRANCHES)).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_pod_without_a_trunk_is_told_to_retry() {
    require_root();
    let node = Node::start().await;
    let annotation = json!([{"eniId": "eni-0123456789abcdef0", "ifAddress": "02:00:00:00:31:01",
        "privateIp": "10.0.1.200", "vlanId": 5, "subnetCidr": "10.0.1.0/24"}])
    .to_string();
    let pod = Netns::new("sgpod");
    let answer = node.cni_with(
        "ADD",
        "c-no-trunk",
        pod.path(),
        "eth0",
        &pod_args("no-trunk"),
        &with_annotation(&node, &annotation),
    );
    assert!(!answer.ok);
    assert_eq!(answer.json["code"], 11, "{}", answer.json);
    assert!(
        answer.json["msg"].as_str().unwrap().contains("trunk ENI"),
        "{}",
        answer.json
    );
    assert!(node.pod_entry("10.0.1.200").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_on_a_foreign_vlan_passes_the_trunk_untouched() {
    require_root();
    let (node, trunk, trunk_eth) = node_with_trunk("standard").await;
    let _pod = add_branch_pod(&node, &trunk, 41, "sg-owner").await;
    let node_ns = &node.lab.node.netns;
    let taps = Taps::ingress(node_ns, &trunk_eth);
    // The trunk's port in the fabric: the peer of the node's trunk interface.
    let link: Value =
        serde_json::from_str(&node_ns.ip(&["-j", "link", "show", "dev", &trunk_eth])).unwrap();
    let port = link[0]["link_index"].as_u64().expect("a veth peer") as u32;
    let trunk_mac = raw::mac(link[0]["address"].as_str().unwrap());
    let frame = UdpFrame {
        dst_mac: trunk_mac,
        src_mac: [2, 0, 0, 0, 0x99, 1],
        vlan: Some(99),
        src: "10.0.1.251".parse().unwrap(),
        dst: "10.0.1.252".parse().unwrap(),
        src_port: 4000,
        dst_port: 4001,
        payload: b"not eniflow's".to_vec(),
    };
    node.lab.fabric.within(|| {
        for _ in 0..5 {
            raw::send(port, &frame.bytes());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while taps.seen(TAP_LAST) < 5 {
        assert!(
            Instant::now() < deadline,
            "the next program saw {} of 5 foreign-VLAN frames (first saw {})",
            taps.seen(TAP_LAST),
            taps.seen(TAP_FIRST)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The two drops a security-group pod meets when the agent's view of the trunk is incomplete,
/// provoked by removing the entry with bpftool, each counted under its own reason and hook only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_trunk_or_branch_entry_drops_under_its_own_reason() {
    require_root();
    let (node, trunk, trunk_eth) = node_with_trunk("standard").await;
    let pod = add_branch_pod(&node, &trunk, 42, "sg-dropped").await;
    let host = node.lab.hosts[0].primary_ip.clone();
    assert!(pings(&pod.netns, &host));
    let node_ns = &node.lab.node.netns;
    let link: Value =
        serde_json::from_str(&node_ns.ip(&["-j", "link", "show", "dev", &trunk_eth])).unwrap();
    let trunk_ifindex = link[0]["ifindex"].as_u64().unwrap() as u32;
    let port = link[0]["link_index"].as_u64().expect("a veth peer") as u32;
    let pod_addr: std::net::Ipv4Addr = pod.ip.parse().unwrap();
    // What moved since `before`, once something has (a sent frame is counted in softirq).
    let moved = |before: (DropCounts, DropCounts)| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let by_pod = drops_moved(&before.0, &node.pod_drops());
            let by_hook = drops_moved(&before.1, &node.hook_drops());
            if !by_hook.is_empty() || Instant::now() > deadline {
                return (
                    by_pod.into_keys().collect::<Vec<_>>(),
                    by_hook.into_keys().collect::<Vec<_>>(),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // A frame for the pod on its VLAN, of a flow the stack NAT'd (so it must go up the trunk's
    // stack), while the trunk is missing from the ENI table.
    let mut flow = pod_addr.octets().to_vec();
    flow.extend_from_slice(&4001u16.to_ne_bytes());
    flow.extend_from_slice(&[17, 0]);
    bpftool::update(&node.map(maps::STACK_FLOWS), &flow, &[0; 8]);
    bpftool::delete(&node.map(maps::ENIS), &trunk_ifindex.to_ne_bytes());
    let before = (node.pod_drops(), node.hook_drops());
    let frame = UdpFrame {
        dst_mac: raw::mac(link[0]["address"].as_str().unwrap()),
        src_mac: [2, 0, 0, 0, 0x42, 1],
        vlan: Some(42),
        src: host.parse().unwrap(),
        dst: pod_addr,
        src_port: 4000,
        dst_port: 4001,
        payload: b"to a pod behind an unknown trunk".to_vec(),
    };
    node.lab.fabric.within(|| {
        for _ in 0..3 {
            raw::send(port, &frame.bytes());
        }
    });
    assert_eq!(
        moved(before),
        (
            vec![(pod.ip.clone(), "no_trunk_eni")],
            vec![("eni_ingress".to_owned(), "no_trunk_eni")]
        )
    );

    // The pod's branch ENI missing: nothing of its VPC traffic may leave untagged.
    let mut vlan_key = trunk_ifindex.to_ne_bytes().to_vec();
    vlan_key.extend_from_slice(&42u32.to_ne_bytes());
    bpftool::delete(&node.map(maps::BRANCHES), &vlan_key);
    let before = (node.pod_drops(), node.hook_drops());
    assert!(!pings(&pod.netns, &host), "left without its branch ENI");
    assert_eq!(
        moved(before),
        (
            vec![(pod.ip.clone(), "no_branch_eni")],
            vec![("pod_egress".to_owned(), "no_branch_eni")]
        )
    );
}

/// A pod object as the API holds it after the resource controller's webhook: `branch` pods'
/// container asks for a branch ENI.
fn pod_object(name: &str, branch: bool) -> String {
    let resources = if branch {
        json!({ "limits": { "vpc.amazonaws.com/pod-eni": "1" } })
    } else {
        json!({})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{ "name": "c", "image": "busybox", "resources": resources }],
        },
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_annotation_is_read_from_the_api_and_waited_for() {
    require_root();
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let kube = KubeApi::with_node(&lab.node.netns, json!({"metadata": {"name": "lab-node"}}));
    // The service account controller is not running: the namespace's default account is made
    // here, as it would have made it.
    kube.create(
        "/api/v1/namespaces/default/serviceaccounts",
        r#"{"metadata":{"name":"default"}}"#,
    );
    let mut args = kube.agent_args("lab-node");
    args.push("--create-trunk".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let wait = 4;
    let node = Node::on_lab(
        lab,
        &args,
        &[
            ("ENABLE_POD_ENI", "true"),
            ("POD_SECURITY_GROUP_ENFORCING_MODE", "standard"),
            ("ENIFLOW_POD_ENI_WAIT", &wait.to_string()),
        ],
    )
    .await;
    let (node, trunk, _) = wait_for_trunk(node).await;

    // The resource controller annotates the pod 2 s after kubelet's runtime calls ADD (whose
    // runtimeConfig therefore carries no annotation): the one ADD waits and succeeds.
    kube.create(
        "/api/v1/namespaces/default/pods",
        &pod_object("sg-late", true),
    );
    let branch = node
        .lab
        .create_branch_eni(&trunk, 41, &node.lab.security_groups)
        .await;
    let annotation = node.lab.pod_eni_annotation(&[&branch]);
    let late = Netns::new("sgpod");
    let started = Instant::now();
    let added = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            let patch =
                json!({"metadata": {"annotations": {"vpc.amazonaws.com/pod-eni": annotation}}});
            let (status, answer) = kube.call(
                "PATCH",
                "/api/v1/namespaces/default/pods/sg-late",
                Some(&patch.to_string()),
            );
            assert_eq!(status, 200, "annotate: {answer}");
        });
        node.cni(
            "ADD",
            "c-sg-late",
            Some(&late),
            "eth0",
            &pod_args("sg-late"),
        )
    });
    assert!(added.ok, "the first ADD failed: {}", added.json);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the ADD answered before the annotation existed"
    );
    let entry: Value = serde_json::from_str(&annotation).unwrap();
    assert_eq!(
        address(&added),
        entry[0]["privateIp"],
        "not the branch ENI's address"
    );
    assert!(
        pings(&late, &node.lab.hosts[0].primary_ip),
        "the late-annotated branch pod reaches a host"
    );

    // Never annotated: after the wait, a retryable error saying it is the expected race, and
    // nothing of the pod left.
    kube.create(
        "/api/v1/namespaces/default/pods",
        &pod_object("sg-never", true),
    );
    let (veths, allocations) = (node.host_veths().len(), node.allocations());
    let never = Netns::new("sgpod");
    let started = Instant::now();
    let refused = node.cni(
        "ADD",
        "c-sg-never",
        Some(&never),
        "eth0",
        &pod_args("sg-never"),
    );
    assert!(!refused.ok);
    assert_eq!(refused.json["code"], 11, "{}", refused.json);
    let msg = refused.json["msg"].as_str().unwrap();
    assert!(
        msg.contains("sg-never") && msg.contains("expected race"),
        "{msg}"
    );
    assert!(started.elapsed() >= Duration::from_secs(wait), "no wait");
    assert_eq!(node.host_veths().len(), veths, "a veth was left");
    assert_eq!(node.allocations(), allocations, "an address was taken");
    // `kubectl describe pod` explains the runtime's failed sandbox as the expected race: a
    // Normal event, not a Warning.
    let events = || {
        let path = "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name=sg-never";
        kube.call("GET", path, None).1["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    eniflow_tests::cluster::wait_for(
        "the pod's event",
        Duration::from_secs(10),
        || !events().is_empty(),
        || format!("{:?}", events()),
    );
    let event = &events()[0];
    assert_eq!(event["type"], "Normal", "{event}");
    assert_eq!(event["reason"], "BranchENIPending", "{event}");

    // A pod that asks for no branch ENI gets a pool address.
    kube.create(
        "/api/v1/namespaces/default/pods",
        &pod_object("plain", false),
    );
    let plain = Netns::new("pod");
    let added = node.cni("ADD", "c-plain", Some(&plain), "eth0", &pod_args("plain"));
    assert!(added.ok, "{}", added.json);
    assert_ne!(address(&added), entry[0]["privateIp"]);
    assert_eq!(node.allocations(), allocations + 1, "not from the pool");
    assert!(pings(&plain, &node.lab.hosts[0].primary_ip));
}
