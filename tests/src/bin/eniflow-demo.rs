//! `cargo xtask demo`: eniflow on an emulated node. A `node` namespace with two ENIs (eth0,
//! eth1) wired to a `vpc` namespace holding their subnet gateways; the agent attaches its
//! programs to both ENIs, real pings cross them, and the pinned maps are dumped with bpftool.
//! Everything is removed at the end (and on a panic).

use eniflow_tests::{
    agent::{self, Agent},
    bpffs_dir,
    hooks::{self, Dir},
    netns::Netns,
    require_root, sh,
};

fn main() {
    require_root();
    let node = Netns::new("node");
    let vpc = Netns::new("vpc");
    // Two ENIs on two subnets; the vpc side answers as each subnet's gateway.
    let enis = [
        ("eth0", "10.0.1.10", "10.0.1.1"),
        ("eth1", "10.0.2.10", "10.0.2.1"),
    ];
    for (i, (eni, addr, gateway)) in enis.iter().enumerate() {
        let far = format!("eni{i}");
        node.ip(&[
            "link",
            "add",
            eni,
            "type",
            "veth",
            "peer",
            "name",
            &far,
            "netns",
            vpc.name(),
        ]);
        node.ip(&["addr", "add", &format!("{addr}/24"), "dev", eni]);
        vpc.ip(&["addr", "add", &format!("{gateway}/24"), "dev", &far]);
        node.ip(&["link", "set", eni, "up"]);
        vpc.ip(&["link", "set", &far, "up"]);
    }
    let root = bpffs_dir("demo");
    section(&format!(
        "node {} with ENIs eth0, eth1; vpc {}",
        node.name(),
        vpc.name()
    ));
    print!("{}", node.ip(&["-br", "addr", "show"]));

    section("eniflow-agent run --interfaces eth0,eth1");
    let running = Agent::start(&node.path(), &root, &["eth0", "eth1"], "auto");
    for (eni, _, _) in enis {
        for dir in Dir::BOTH {
            let progs = hooks::tcx_programs(&node, eni, dir);
            let progs = if progs.is_empty() {
                hooks::clsact_programs(&node, eni, dir)
            } else {
                progs
            };
            println!("{eni} {:<7} programs attached: {progs:?}", dir.name());
        }
    }

    section("traffic through eniflow's programs: ping each subnet gateway from the node");
    for (_, _, gateway) in enis {
        let out = node.run("ping", &["-c", "3", "-i", "0.2", "-W", "1", gateway]);
        println!(
            "{}",
            out.lines()
                .filter(|l| l.contains("packets transmitted"))
                .collect::<String>()
        );
    }

    section("eniflow-agent status");
    let status = agent::command(&node.path(), &root, &["status"]);
    print!("{}", String::from_utf8_lossy(&status.stdout));

    let maps_dir = root.join(eniflow_common::PIN_VERSION).join("maps");
    for map in eniflow_common::maps::ALL {
        let path = maps_dir.join(map);
        section(&format!("bpftool map dump pinned {}", path.display()));
        print!(
            "{}",
            sh::run(
                "bpftool",
                &["map", "dump", "pinned", &path.to_string_lossy()]
            )
        );
    }

    section("stop the agent (the programs stay attached), then eniflow-agent uninstall");
    running.stop();
    let out = agent::command(&node.path(), &root, &["uninstall"]);
    assert!(
        out.status.success(),
        "uninstall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (eni, _, _) in enis {
        let left = hooks::tcx_programs(&node, eni, Dir::Ingress).len()
            + hooks::tcx_programs(&node, eni, Dir::Egress).len()
            + hooks::clsact_programs(&node, eni, Dir::Ingress).len()
            + hooks::clsact_programs(&node, eni, Dir::Egress).len();
        println!("{eni}: {left} program(s) attached after uninstall");
    }
    println!(
        "{} exists after uninstall: {}",
        root.display(),
        root.exists()
    );
    section("demo done; namespaces removed");
}

fn section(title: &str) {
    println!("\n== {title}");
}
