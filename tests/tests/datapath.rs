//! The first slice of the data plane on real veths in test namespaces: eniflow's programs
//! attach under tcx and under clsact, count real packets in pinned maps that bpftool can read by
//! field name, survive agent restarts without attaching twice, and uninstall without a trace.

use std::{fs, path::Path};

use eniflow_common::maps;
use eniflow_tests::{
    agent::{self, Agent},
    bpffs_dir, bpftool,
    hooks::{self, Dir, Prog},
    netns::{Netns, Wire},
    require_root,
};

/// The programs on `ifname`'s hooks under either API, with the API's name.
fn attached(ns: &Netns, ifname: &str, dir: Dir) -> (Vec<Prog>, Vec<Prog>) {
    (
        hooks::tcx_programs(ns, ifname, dir),
        hooks::clsact_programs(ns, ifname, dir),
    )
}

/// Asserts that exactly one eniflow program sits on each hook of `ifname`, through `mode`, and
/// returns their ids (ingress, egress).
fn assert_attached_once(ns: &Netns, ifname: &str, mode: &str) -> [u32; 2] {
    Dir::BOTH.map(|dir| {
        let (tcx, clsact) = attached(ns, ifname, dir);
        let (used, unused) = if mode == "tcx" {
            (tcx, clsact)
        } else {
            (clsact, tcx)
        };
        let ours: Vec<_> = used
            .iter()
            .filter(|(_, name)| name == dir.eni_program())
            .collect();
        assert_eq!(
            ours.len(),
            1,
            "{ifname} {}: expected one {} via {mode}, found {used:?}",
            dir.name(),
            dir.eni_program()
        );
        assert!(
            unused.iter().all(|(_, name)| name != dir.eni_program()),
            "{ifname} {}: eniflow's program is also attached the other way: {unused:?}",
            dir.name()
        );
        ours[0].0
    })
}

/// Packets counted on (ifindex, direction), read with bpftool from the pinned map.
fn counted(root: &Path, ifindex: u32, dir: Dir) -> u64 {
    let path = root
        .join(eniflow_common::PIN_VERSION)
        .join("maps")
        .join(maps::IFACE_STATS);
    bpftool::dump(&path)
        .iter()
        .map(|entry| bpftool::formatted(entry, maps::IFACE_STATS))
        .find(|f| f["key"]["ifindex"] == ifindex && f["key"]["direction"] == dir.code())
        .map_or(0, |f| bpftool::per_cpu_sum(f, "packets"))
}

fn uninstall(wire: &Wire, root: &Path) {
    let out = agent::command(&wire.left.path(), root, &["uninstall"]);
    assert!(
        out.status.success(),
        "uninstall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn attach_and_count(mode: &str) {
    require_root();
    let wire = Wire::new([10, 71, 1]);
    let root = bpffs_dir("attach");
    let agent = Agent::start(&wire.left.path(), &root, &["eth0"], mode);
    assert_attached_once(&wire.left, "eth0", mode);
    let ifindex = wire.left.ifindex("eth0");
    let before = counted(&root, ifindex, Dir::Egress);
    assert_eq!(
        wire.send_udp(20),
        20,
        "datagrams were lost crossing eniflow's programs"
    );
    // Egress sees the 20 datagrams (plus ARP); ingress sees at least the ARP reply.
    assert!(
        counted(&root, ifindex, Dir::Egress) >= before + 20,
        "egress counter did not move by 20"
    );
    assert!(
        counted(&root, ifindex, Dir::Ingress) >= 1,
        "ingress counter did not move"
    );
    agent.stop();
    uninstall(&wire, &root);
}

#[test]
fn tcx_attaches_and_counts_packets() {
    attach_and_count("tcx");
}

#[test]
fn clsact_attaches_and_counts_packets() {
    attach_and_count("clsact");
}

#[test]
fn auto_mode_prefers_tcx() {
    require_root();
    let wire = Wire::new([10, 71, 2]);
    let root = bpffs_dir("auto");
    let agent = Agent::start(&wire.left.path(), &root, &["eth0"], "auto");
    // This kernel has tcx (the tcx test proves it): auto must have chosen it.
    assert_attached_once(&wire.left, "eth0", "tcx");
    assert!(
        !hooks::has_clsact(&wire.left, "eth0"),
        "auto mode added a clsact qdisc next to tcx"
    );
    agent.stop();
    uninstall(&wire, &root);
}

#[test]
fn bpftool_prints_every_map_by_field_name() {
    require_root();
    let wire = Wire::new([10, 71, 3]);
    let root = bpffs_dir("bpftool");
    let agent = Agent::start(&wire.left.path(), &root, &["eth0"], "clsact");
    wire.send_udp(3);
    let maps_dir = root.join(eniflow_common::PIN_VERSION).join("maps");
    // The per-hook maps; the pod maps are checked with pods on the lab (pod_dataplane.rs).
    for map in [maps::IFACE_STATS, maps::ATTACHMENTS] {
        let entries = bpftool::dump(&maps_dir.join(map));
        assert!(
            !entries.is_empty(),
            "{map}: no entries after attaching and sending traffic"
        );
        for entry in &entries {
            let f = bpftool::formatted(entry, map);
            assert!(
                f["key"]["ifindex"].is_u64() && f["key"]["direction"].is_u64(),
                "{map}: key fields not named: {f}"
            );
        }
    }
    let attachments = bpftool::dump(&maps_dir.join(maps::ATTACHMENTS));
    let first = bpftool::formatted(&attachments[0], maps::ATTACHMENTS);
    for field in ["mode", "flags", "priority", "handle"] {
        assert!(
            first["value"][field].is_u64(),
            "attachments: value field {field} not named: {first}"
        );
    }
    let stats = bpftool::dump(&maps_dir.join(maps::IFACE_STATS));
    let first = bpftool::formatted(&stats[0], maps::IFACE_STATS);
    for field in ["packets", "bytes"] {
        assert!(
            first["values"][0]["value"][field].is_u64(),
            "iface_stats: field {field} not named: {first}"
        );
    }
    agent.stop();
    uninstall(&wire, &root);
}

fn restart_readopts(mode: &str) {
    require_root();
    let wire = Wire::new([10, 71, 4]);
    let root = bpffs_dir("restart");
    let ifindex = wire.left.ifindex("eth0");
    let first = Agent::start(&wire.left.path(), &root, &["eth0"], mode);
    let ids = assert_attached_once(&wire.left, "eth0", mode);

    // A clean stop: forwarding and counting go on without the agent.
    first.stop();
    let before = counted(&root, ifindex, Dir::Egress);
    assert_eq!(wire.send_udp(10), 10);
    assert!(
        counted(&root, ifindex, Dir::Egress) >= before + 10,
        "nothing counted while the agent was down"
    );
    let second = Agent::start(&wire.left.path(), &root, &["eth0"], mode);
    assert_eq!(
        assert_attached_once(&wire.left, "eth0", mode),
        ids,
        "a restarted agent attached new programs"
    );

    // A crash: same story.
    second.kill();
    let third = Agent::start(&wire.left.path(), &root, &["eth0"], mode);
    assert_eq!(
        assert_attached_once(&wire.left, "eth0", mode),
        ids,
        "an agent restarted after a crash attached new programs"
    );
    let before = counted(&root, ifindex, Dir::Egress);
    assert_eq!(wire.send_udp(10), 10);
    assert!(
        counted(&root, ifindex, Dir::Egress) >= before + 10,
        "the re-adopted programs stopped counting"
    );
    third.stop();
    uninstall(&wire, &root);
}

#[test]
fn restarted_agent_readopts_tcx_links() {
    restart_readopts("tcx");
}

#[test]
fn restarted_agent_readopts_clsact_filters() {
    restart_readopts("clsact");
}

/// Everything uninstall must restore, as the tools print it.
#[derive(Debug, PartialEq)]
struct Snapshot {
    links: Vec<(String, String)>,
    qdiscs: Vec<serde_json::Value>,
    filters: Vec<serde_json::Value>,
    tcx: Vec<Prog>,
    bpffs: Vec<String>,
}

fn snapshot(ns: &Netns, root: &Path) -> Snapshot {
    let links: serde_json::Value = serde_json::from_str(&ns.ip(&["-j", "link", "show"])).unwrap();
    let links = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["ifname"].as_str().unwrap().to_owned(),
                l["flags"].to_string(),
            )
        })
        .collect();
    let mut filters = Vec::new();
    let mut tcx = Vec::new();
    for dir in Dir::BOTH {
        filters.extend(hooks::tc_filters(ns, "eth0", dir));
        tcx.extend(hooks::tcx_programs(ns, "eth0", dir));
    }
    Snapshot {
        links,
        qdiscs: hooks::qdiscs(ns),
        filters,
        tcx,
        bpffs: listing(root),
    }
}

/// Every path under `root` on bpffs (empty if `root` does not exist).
fn listing(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            out.push(entry.path().display().to_string());
            walk(&entry.path(), out);
        }
    }
    let mut out = Vec::new();
    if root.exists() {
        out.push(root.display().to_string());
    }
    walk(root, &mut out);
    out.sort();
    out
}

/// Another tool's state on the same interface: a clsact qdisc with a u32 filter on egress and an
/// object of its own next to eniflow's on bpffs. eniflow must work alongside it and leave it.
fn add_foreign_state(wire: &Wire, root: &Path) {
    wire.left
        .run("tc", &["qdisc", "add", "dev", "eth0", "clsact"]);
    wire.left.run(
        "tc",
        &[
            "filter", "add", "dev", "eth0", "egress", "prio", "3", "u32", "match", "u32", "0", "0",
            "classid", "1:1",
        ],
    );
    fs::create_dir_all(root.join("other-tool")).expect("create a foreign bpffs directory");
}

fn uninstall_restores(mode: &str, foreign: bool) {
    require_root();
    let wire = Wire::new([10, 71, 5]);
    let root = bpffs_dir("uninstall");
    if foreign {
        add_foreign_state(&wire, &root);
    }
    let before = snapshot(&wire.left, &root);
    let agent = Agent::start(&wire.left.path(), &root, &["eth0"], mode);
    assert_attached_once(&wire.left, "eth0", mode);
    assert_ne!(
        snapshot(&wire.left, &root),
        before,
        "attaching changed nothing visible"
    );
    wire.send_udp(3);
    agent.stop();
    uninstall(&wire, &root);
    assert_eq!(
        snapshot(&wire.left, &root),
        before,
        "uninstall did not restore the state before eniflow"
    );
    // A second uninstall has nothing left to do and says so by succeeding.
    uninstall(&wire, &root);
    if foreign {
        fs::remove_dir(root.join("other-tool")).unwrap();
        fs::remove_dir(&root).unwrap();
    }
}

#[test]
fn uninstall_restores_tcx_state() {
    uninstall_restores("tcx", false);
}

#[test]
fn uninstall_restores_clsact_state() {
    uninstall_restores("clsact", false);
}

#[test]
fn uninstall_keeps_other_tools_state_tcx() {
    uninstall_restores("tcx", true);
}

#[test]
fn uninstall_keeps_other_tools_state_clsact() {
    uninstall_restores("clsact", true);
}

#[test]
fn unknown_interface_is_refused_by_name() {
    require_root();
    let wire = Wire::new([10, 71, 6]);
    let root = bpffs_dir("badif");
    let out = std::process::Command::new(agent::binary("eniflow-agent"))
        .arg("--netns")
        .arg(wire.left.path())
        .arg("--bpffs-root")
        .arg(&*root)
        .args(["run", "--interfaces", "eth0,nosuch0"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the agent accepted an interface that does not exist"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nosuch0"),
        "the error does not name the interface: {stderr}"
    );
    // Checked before anything is loaded: nothing attached, nothing pinned.
    assert_refused_start_left_nothing(&wire, &root);
}

fn assert_refused_start_left_nothing(wire: &Wire, root: &std::path::Path) {
    assert!(!root.exists(), "a refused start left {}", root.display());
    for dir in Dir::BOTH {
        assert_eq!(
            attached(&wire.left, "eth0", dir),
            (vec![], vec![]),
            "a refused start attached to eth0"
        );
    }
}

#[test]
fn contradictory_pool_knobs_stop_the_agent_before_anything_is_attached() {
    require_root();
    let wire = Wire::new([10, 71, 7]);
    let root = bpffs_dir("badknob");
    for (knob, value) in [
        ("WARM_PREFIX_TARGET", "2"), // without ENABLE_PREFIX_DELEGATION
        ("WARM_IP_TARGET", "-1"),
        ("MAX_ENI", "0"),
    ] {
        // Under `timeout`: an agent that accepted the knob would serve until stopped.
        let out = std::process::Command::new("timeout")
            .arg("10")
            .arg(agent::binary("eniflow-agent"))
            .arg("--netns")
            .arg(wire.left.path())
            .arg("--bpffs-root")
            .arg(&*root)
            .args(["run", "--interfaces", "eth0"])
            .env(knob, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "the agent accepted {knob}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(knob) && stderr.trim().lines().count() == 1,
            "not one line naming {knob}: {stderr}"
        );
        assert_refused_start_left_nothing(&wire, &root);
    }
}
