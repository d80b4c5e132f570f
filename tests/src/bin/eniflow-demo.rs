//! `cargo xtask demo`: eniflow on the lab. An emulated m5.large (the `node` namespace) in a VPC
//! with a remote host on each subnet; a second ENI is created and attached through the EC2 API
//! and the hypervisor plugs it in; the agent attaches its programs to both ENIs and fills its
//! warm address pool through the EC2 API; a pod is added through the real CNI shim and pings a
//! remote VPC host; real traffic crosses the programs; the pinned maps are dumped with bpftool.
//! Everything is removed at the end.

use eniflow_tests::{
    agent::{self, Agent},
    bpffs_dir,
    hooks::{self, Dir},
    lab::{Lab, LabSpec},
    require_root, sh,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    require_root();
    section("starting the lab: EC2 + IMDS emulator, VPC fabric, node, remote hosts");
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let node = &lab.node.netns;
    println!(
        "instance {} ({}) in {}; primary ENI {} at {}",
        lab.node.id, lab.spec.instance_type, lab.vpc_id, lab.node.primary_eni, lab.node.primary_ip
    );

    section("CreateNetworkInterface + AttachNetworkInterface (device 1) on the second subnet");
    let ec2 = lab.ec2();
    let eni = ec2
        .create_network_interface()
        .subnet_id(&lab.subnets[1])
        .send()
        .await
        .expect("CreateNetworkInterface")
        .network_interface
        .expect("an ENI");
    let eni_ip = eni.private_ip_address.clone().expect("an address");
    ec2.attach_network_interface()
        .network_interface_id(eni.network_interface_id.clone().expect("an ENI id"))
        .instance_id(&lab.node.id)
        .device_index(1)
        .send()
        .await
        .expect("AttachNetworkInterface");
    // The hypervisor plugs it in within a second; the node configures it as the agent will.
    for _ in 0..50 {
        if node.run("ip", &["-br", "link"]).contains("eth1") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    node.ip(&["addr", "add", &format!("{eni_ip}/32"), "dev", "eth1"]);
    // Replies from eth1's address must leave by eth1: the VPC drops them on any other ENI.
    let gateway = lab.gateway(1);
    node.ip(&["rule", "add", "from", &eni_ip, "table", "101"]);
    node.ip(&[
        "route", "add", "default", "via", &gateway, "dev", "eth1", "onlink", "table", "101",
    ]);
    print!("{}", node.ip(&["-br", "link", "show"]));
    print!("{}", node.ip(&["-br", "addr", "show"]));

    let root = bpffs_dir("demo");
    section(
        "eniflow-agent run --interfaces eth0,eth1 (inside the node; EC2 + IMDS at 169.254.169.254)",
    );
    let files = agent::PoolFiles::new("demo-pool");
    let mut args = vec!["--interfaces".to_owned(), "eth0,eth1".to_owned()];
    args.extend(files.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (checkpoint, max_pods) = (files.checkpoint(), files.max_pods());
    let running = Agent::start_with(&node.path(), &root, &args, agent::LAB_NODE_ENV);
    for eni in ["eth0", "eth1"] {
        for dir in Dir::BOTH {
            let progs = hooks::tcx_programs(node, eni, dir);
            let progs = if progs.is_empty() {
                hooks::clsact_programs(node, eni, dir)
            } else {
                progs
            };
            println!("{eni} {:<7} programs attached: {progs:?}", dir.name());
        }
    }

    section(
        "the address pool: max pods and the warm addresses the agent assigned to the primary ENI",
    );
    println!(
        "max pods (written to {max_pods}): {}",
        std::fs::read_to_string(&max_pods)
            .unwrap_or_default()
            .trim()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let warm = loop {
        let eni = ec2
            .describe_network_interfaces()
            .network_interface_ids(&lab.node.primary_eni)
            .send()
            .await
            .expect("DescribeNetworkInterfaces");
        let addresses = eni.network_interfaces()[0].private_ip_addresses().len();
        if addresses >= 10 || std::time::Instant::now() > deadline {
            break addresses.saturating_sub(1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    println!(
        "{}: {warm} secondary addresses warm (WARM_ENI_TARGET=1 on an m5.large); checkpoint {checkpoint}",
        lab.node.primary_eni
    );

    section("traffic through eniflow's programs: ping each remote host from the node");
    for host in &lab.hosts {
        let out = node.run(
            "ping",
            &["-c", "3", "-i", "0.2", "-W", "1", &host.primary_ip],
        );
        let summary: String = out
            .lines()
            .filter(|l| l.contains("packets transmitted"))
            .collect();
        println!("{}: {summary}", host.primary_ip);
    }
    let host = &lab.hosts[1];
    let out = host
        .netns
        .run("ping", &["-c", "3", "-i", "0.2", "-W", "1", &eni_ip]);
    let summary: String = out
        .lines()
        .filter(|l| l.contains("packets transmitted"))
        .collect();
    println!("host {} -> eth1 {eni_ip}: {summary}", host.primary_ip);

    section("a pod: eniflow-cni ADD as a container runtime runs it, then ping, then DEL");
    let pod = eniflow_tests::netns::Netns::new("demo-pod");
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "eniflow",
        "type": "eniflow-cni",
        "socket": files.socket(),
        "logFile": files.path("cni.log"),
    });
    let (pod_path, log) = (pod.path(), files.path("cni.log"));
    let call = |command| eniflow_tests::cni::ShimCall {
        command,
        container: "demo-pod",
        netns: &pod_path,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=demo",
        log: &log,
    };
    let added = eniflow_tests::cni::shim(&call("ADD"), &config);
    println!("ADD printed: {}", added.json);
    print!("{}", pod.ip(&["-br", "addr", "show", "dev", "eth0"]));
    print!("{}", pod.ip(&["route", "show"]));
    let remote = &lab.hosts[0].primary_ip;
    let out = pod.run("ping", &["-c", "3", "-i", "0.2", "-W", "1", remote]);
    let summary: String = out
        .lines()
        .filter(|l| l.contains("packets transmitted"))
        .collect();
    println!("pod -> {remote}: {summary}");
    section("eniflow-agent status (the pod is running)");
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

    section("the pod is deleted");
    let deleted = eniflow_tests::cni::shim(&call("DEL"), &config);
    println!(
        "DEL: exit ok {} (prints nothing: {})",
        deleted.ok,
        deleted.json.is_null()
    );
    drop(pod);

    section("stop the agent (the programs stay attached), then eniflow-agent uninstall");
    running.stop();
    let out = agent::command(&node.path(), &root, &["uninstall"]);
    assert!(
        out.status.success(),
        "uninstall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for eni in ["eth0", "eth1"] {
        let left: usize = Dir::BOTH
            .iter()
            .map(|&dir| {
                hooks::tcx_programs(node, eni, dir).len()
                    + hooks::clsact_programs(node, eni, dir).len()
            })
            .sum();
        println!("{eni}: {left} program(s) attached after uninstall");
    }
    println!(
        "{} exists after uninstall: {}",
        root.display(),
        root.exists()
    );
    drop(lab);
    section("demo done; the lab is gone");
}

fn section(title: &str) {
    println!("\n== {title}");
}
