//! A node moves from aws-node to eniflow in place, and back: the lab node is wired as VPC CNI
//! wires it (`eniflow_tests::vpc_cni`), with pods on the primary ENI, a secondary ENI and a
//! branch ENI serving traffic; eniflow starts there and takes the pods over while they ping a
//! remote VPC host every 10 ms and hold TCP connections to it.

use std::time::Duration;

use eniflow_tests::{
    cni::{pings, pod_args, PodNode},
    lab::{Lab, LabSpec},
    require_root,
    vpc_cni::{self, echo_server, Connection, Kind, Pinger, VpcCniNode, Wiring, DEFAULT_RULES},
};
use serde_json::Value;

/// Security-group pods on (strict, as VPC CNI's default); the pool kept small.
const ENV: [(&str, &str); 2] = [("ENABLE_POD_ENI", "true"), ("WARM_IP_TARGET", "1")];

async fn aws_node_node(wiring: Wiring) -> VpcCniNode {
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let node = VpcCniNode::start(lab, &[], &ENV, wiring).await;
    // The fixture is sound: VPC CNI's wiring carries every pod before eniflow starts.
    for pod in &node.pods {
        assert!(
            pings(&pod.netns, &remote(&node.node, pod)),
            "{} ({:?}) does not reach its remote host wired VPC CNI's way",
            pod.name,
            pod.kind
        );
    }
    node
}

/// The remote host a pod talks to: another subnet's for the secondary ENI's pod (its packets
/// must leave by that ENI), the node subnet's for the others.
fn remote(node: &PodNode, pod: &vpc_cni::Pod) -> String {
    let index = usize::from(pod.kind == Kind::Secondary);
    node.lab.hosts[index].primary_ip.clone()
}

fn takeover_report(node: &PodNode) -> Value {
    let path = std::path::Path::new(&node.files.checkpoint()).with_file_name("takeover.json");
    serde_json::from_slice(&std::fs::read(&path).expect("takeover.json")).unwrap()
}

/// Whether the node has VPC CNI 1.23's nftables table.
fn has_nft_table(node: &PodNode) -> bool {
    let tables = node.lab.node.netns.run("nft", &["list", "tables"]);
    tables.lines().any(|l| l.trim() == "table ip aws-cni")
}

fn iptables(node: &PodNode, table: &str) -> String {
    node.lab.node.netns.run("iptables", &["-t", table, "-S"])
}

/// The routes of `table` ("" when it has none: the kernel then says it does not exist).
fn routes_in(node: &PodNode, table: &str) -> String {
    let ns = node.lab.node.netns.name();
    eniflow_tests::sh::try_ip(&["-n", ns, "route", "show", "table", table])
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moves_from_aws_node_without_losing_a_ping_or_a_connection() {
    require_root();
    // VPC CNI 1.18–1.22: its connmark rules in iptables.
    let mut vpc = aws_node_node(Wiring::default()).await;
    let servers: Vec<_> = vpc
        .pods
        .iter()
        .map(|p| {
            let index = usize::from(p.kind == Kind::Secondary);
            let host = &vpc.node.lab.hosts[index];
            echo_server(&host.netns, &host.primary_ip)
        })
        .collect();
    let mut connections: Vec<Connection> = vpc
        .pods
        .iter()
        .zip(&servers)
        .map(|(p, s)| Connection::open(&p.netns, *s))
        .collect();
    for (c, p) in connections.iter_mut().zip(&vpc.pods) {
        assert!(
            c.echoes("before"),
            "{}: no echo before the takeover",
            p.name
        );
    }
    // 15 s of pings at 10 ms cover the agent's start and the takeover.
    let pingers: Vec<Pinger> = vpc
        .pods
        .iter()
        .map(|p| Pinger::start(&p.netns, &remote(&vpc.node, p), 1500))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    vpc.node.start_agent_and_wait().await;
    let taken = std::time::Instant::now();
    for (pinger, pod) in pingers.into_iter().zip(&vpc.pods) {
        let (sent, answered) = pinger.finish();
        assert_eq!(
            sent,
            answered,
            "{} ({:?}) lost {} of {sent} pings across the takeover",
            pod.name,
            pod.kind,
            sent - answered
        );
    }
    assert!(
        taken.elapsed() > Duration::from_secs(2),
        "the pings ended before the takeover was done"
    );
    for (c, p) in connections.iter_mut().zip(&vpc.pods) {
        assert!(
            c.echoes("after"),
            "{}: its connection did not survive",
            p.name
        );
    }
    let node = &vpc.node;
    // VPC CNI's rules, tables, VLAN device and chains are gone; the kernel's defaults remain.
    assert_eq!(vpc_cni::rules(&node.lab.node.netns), DEFAULT_RULES);
    for table in ["2", "3", "105"] {
        assert_eq!(routes_in(node, table), "", "table {table} is left");
    }
    assert!(
        vpc_cni::try_link(&node.lab.node.netns, "vlan.eth.5").is_none(),
        "the VLAN device is left"
    );
    let nat = iptables(node, "nat");
    assert!(!nat.contains("AWS"), "VPC CNI's nat rules are left:\n{nat}");
    assert!(
        nat.contains("ENIFLOW-SNAT"),
        "eniflow SNATs off-VPC traffic"
    );
    let mangle = iptables(node, "mangle");
    assert!(
        !mangle.contains("AWS"),
        "VPC CNI's mangle rules are left:\n{mangle}"
    );
    assert!(
        !std::path::Path::new(&vpc_cni::aws_conflist(node)).exists(),
        "aws-node's conflist is left: the runtime would take it before eniflow's"
    );
    let report = takeover_report(node);
    assert_eq!(report["kept"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["failed"], serde_json::json!([]), "{report:#}");

    // The programs forward the pods' VPC traffic: none of it goes to the stack.
    let to_stack = |n: &PodNode| -> Vec<u64> {
        vpc.pods
            .iter()
            .map(|p| n.pod_counter(&p.ip, "sent_to_stack"))
            .collect()
    };
    let sent = |n: &PodNode| -> Vec<u64> {
        vpc.pods
            .iter()
            .map(|p| n.pod_counter(&p.ip, "sent_packets"))
            .collect()
    };
    let (stack_before, sent_before) = (to_stack(node), sent(node));
    // Not one of their packets went to the stack since the programs took them: the pings and
    // the connections' packets are all VPC traffic.
    assert!(
        stack_before.iter().all(|n| *n == 0),
        "sent to the stack: {stack_before:?}"
    );
    for (c, p) in connections.iter_mut().zip(&vpc.pods) {
        assert!(
            pings(&p.netns, &remote(node, p)),
            "{} stopped answering",
            p.name
        );
        assert!(c.echoes("forwarded"), "{}: no echo", p.name);
    }
    assert_eq!(
        to_stack(node),
        stack_before,
        "VPC traffic went to the stack"
    );
    for ((after, before), p) in sent(node).iter().zip(&sent_before).zip(&vpc.pods) {
        assert!(
            after > before,
            "{}: the programs saw none of its packets",
            p.name
        );
    }
    for p in &vpc.pods {
        let entry = node.pod_entry(&p.ip).expect("in the pods map");
        let vlan = entry["vlan"].as_u64().unwrap();
        match p.kind {
            Kind::Branch { vlan: v } => assert_eq!(vlan, u64::from(v)),
            _ => assert_eq!(vlan, 0),
        }
    }

    // A second start: nothing new is removed, the pods stay.
    vpc.node.agent.take().unwrap().stop();
    vpc.node.start_agent_and_wait().await;
    let node = &vpc.node;
    let again = takeover_report(node);
    assert_eq!(again["removed"], serde_json::json!([]), "{again:#}");
    assert_eq!(
        again["branch_pods_found"],
        serde_json::json!([]),
        "{again:#}"
    );
    assert_eq!(vpc_cni::rules(&node.lab.node.netns), DEFAULT_RULES);
    for (c, p) in connections.iter_mut().zip(&vpc.pods) {
        assert!(c.echoes("restarted"), "{}: no echo after a restart", p.name);
    }

    // DEL of each migrated pod (kubelet's, by VPC CNI's container id) leaves nothing.
    let held_before = node.allocations();
    for p in &vpc.pods {
        let deleted = node.cni(
            "DEL",
            &p.container,
            Some(&p.netns),
            "eth0",
            &pod_args(&p.name),
        );
        assert!(deleted.ok, "DEL {}: {}", p.name, deleted.json);
        assert!(
            node.pod_entry(&p.ip).is_none(),
            "{}: its entry is left",
            p.name
        );
        assert!(
            vpc_cni::try_link(&node.lab.node.netns, &p.host_veth).is_none(),
            "{}: its veth {} is left",
            p.name,
            p.host_veth
        );
    }
    assert_eq!(
        node.allocations(),
        held_before - 2,
        "the two pool pods' addresses are released"
    );
    let branch_file =
        std::path::Path::new(&node.files.checkpoint()).with_file_name("branch-pods.json");
    if let Ok(text) = std::fs::read(&branch_file) {
        let branch_pods: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(
            branch_pods["pods"],
            serde_json::json!([]),
            "{branch_pods:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handback_leaves_the_pods_to_aws_node_answering() {
    require_root();
    // VPC CNI 1.23 on an nftables host: its connmark rules in its own nftables table.
    let nft = Wiring {
        nft_connmark: true,
        ..Wiring::default()
    };
    let mut vpc = aws_node_node(nft).await;
    assert!(
        has_nft_table(&vpc.node),
        "the fixture made no nftables table"
    );
    vpc.node.start_agent_and_wait().await;
    assert_eq!(vpc_cni::rules(&vpc.node.lab.node.netns), DEFAULT_RULES);
    assert!(
        !has_nft_table(&vpc.node),
        "VPC CNI's nftables table is left"
    );
    let report = takeover_report(&vpc.node);
    assert!(
        report["removed"]
            .to_string()
            .contains("nftables table ip aws-cni"),
        "{report:#}"
    );
    vpc.node.agent.take().unwrap().stop();
    let node = &vpc.node;
    let handback_checkpoint = node.files.path("handed-back-ipam.json");
    let out = node.agent_command(&[
        "uninstall",
        "--handback",
        "--checkpoint",
        &node.files.checkpoint(),
        "--vpc-cni-checkpoint",
        &handback_checkpoint,
        "--cni-conflist",
        &node.files.conflist(),
    ]);
    assert!(
        out.status.success(),
        "uninstall --handback: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // aws-node's checkpoint: the pool's pods, under VPC CNI's network name.
    let written: Value =
        serde_json::from_slice(&std::fs::read(&handback_checkpoint).unwrap()).unwrap();
    assert_eq!(written["version"], "vpc-cni-ipam/1");
    let mut got: Vec<(String, String, String)> = written["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["networkName"], "aws-cni");
            (
                a["containerID"].as_str().unwrap().to_owned(),
                a["ipv4"].as_str().unwrap().to_owned(),
                a["metadata"]["k8sPodName"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, String)> = vpc
        .pods
        .iter()
        .filter(|p| !matches!(p.kind, Kind::Branch { .. }))
        .map(|p| (p.container.clone(), p.ip.clone(), p.name.clone()))
        .collect();
    want.sort();
    assert_eq!(got, want);
    // VPC CNI's per-pod rules and the branch pod's device and table are back.
    let rules = vpc_cni::rules(&node.lab.node.netns);
    let primary = vpc.pod(|k| *k == Kind::Primary);
    let secondary = vpc.pod(|k| *k == Kind::Secondary);
    let mut wanted = vec![
        format!("512:\tfrom all to {} lookup main", primary.ip),
        format!("512:\tfrom all to {} lookup main", secondary.ip),
        format!("1536:\tfrom {} lookup 2", secondary.ip),
    ];
    if let Some(branch) = vpc
        .pods
        .iter()
        .find(|p| matches!(p.kind, Kind::Branch { .. }))
    {
        wanted.push("10:\tfrom all iif vlan.eth.5 lookup 105".to_owned());
        wanted.push(format!("10:\tfrom all iif {} lookup 105", branch.host_veth));
        assert!(routes_in(node, "105").contains(&branch.ip), "table 105");
        assert!(vpc_cni::try_link(&node.lab.node.netns, "vlan.eth.5").is_some());
    }
    for want in wanted {
        assert!(rules.contains(&want), "{want:?} is not in {rules:#?}");
    }
    assert!(routes_in(node, "2").contains("default via"), "table 2");
    // eniflow is gone: no pins, no conflist, no checkpoint to restore stale holds from.
    assert!(!std::path::Path::new(&node.files.conflist()).exists());
    assert!(!std::path::Path::new(&node.files.checkpoint()).exists());
    assert!(
        !node.map(eniflow_common::maps::PODS).exists(),
        "the maps are unpinned"
    );
    // The stack carries the pods again, by VPC CNI's rules.
    for p in &vpc.pods {
        assert!(
            pings(&p.netns, &remote(node, p)),
            "{} ({:?}) does not answer after the handback",
            p.name,
            p.kind
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_consistent_is_reported_and_kept() {
    require_root();
    // A rule for an address no checkpoint entry names, and a checkpoint entry whose veth is
    // gone (its pod was deleted while nobody served the node), with its rule.
    // And VPC CNI 1.23's nftables table holds a chain that is not its own.
    let mut vpc = aws_node_node(Wiring {
        nft_connmark: true,
        inconsistent: true,
    })
    .await;
    vpc.node.start_agent_and_wait().await;
    let node = &vpc.node;
    let report = takeover_report(node);
    let kept = report["kept"].to_string();
    // The table with someone else's chain stays, and so does the connmark rule it serves.
    assert!(
        kept.contains("nftables table ip aws-cni") && kept.contains("someone-elses"),
        "the nftables table is not reported as kept: {report:#}"
    );
    assert!(
        has_nft_table(node),
        "a table with a foreign chain was deleted"
    );
    assert!(
        vpc_cni::rules(&node.lab.node.netns)
            .iter()
            .any(|r| r.starts_with("1024:")),
        "the connmark rule went while VPC CNI's table still marks"
    );
    for ip in [vpc_cni::STRAY_RULE_ADDRESS, &vpc.ghost_ip] {
        assert!(
            kept.contains(ip),
            "{ip} is not reported as kept: {report:#}"
        );
        let rule = format!("512:\tfrom all to {ip} lookup main");
        assert!(
            vpc_cni::rules(&node.lab.node.netns).contains(&rule),
            "the rule for {ip} was deleted"
        );
    }
    // The ghost's address is released; the real pods are taken over all the same.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(node.files.checkpoint()).unwrap()).unwrap();
    assert!(
        !saved["allocations"]
            .to_string()
            .contains(&format!("\"{}\"", vpc.ghost_ip)),
        "the ghost's address is still held: {saved}"
    );
    for p in &vpc.pods {
        assert!(
            node.pod_entry(&p.ip).is_some(),
            "{} is not taken over",
            p.name
        );
        assert!(
            pings(&p.netns, &remote(node, p)),
            "{} does not answer",
            p.name
        );
    }
}
