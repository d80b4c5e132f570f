//! cnitool, the CNI project's reference client, driving eniflow as the first plugin of a chain
//! with the reference portmap, bandwidth and tuning plugins (Debian's): each of them accepts the
//! result eniflow hands on and does its part; CHECK passes; DEL removes everything.

use std::process::Command;

use eniflow_tests::{
    agent,
    cni::{cnitool, PodNode},
    netns::Netns,
    require_root,
};
use serde_json::{json, Value};

/// Runs `cnitool <command> <network> <pod netns>` in the node's namespace (where a runtime runs
/// the plugins), returning its stdout.
fn run(
    node: &PodNode,
    confdir: &str,
    command: &str,
    network: &str,
    pod: &Netns,
) -> Result<String, String> {
    let plugins = agent::binary("eniflow-cni");
    let cni_path = format!("{}:/usr/lib/cni", plugins.parent().unwrap().display());
    let caps = json!({
        "portMappings": [{ "hostPort": 18080, "containerPort": 80, "protocol": "tcp" }],
        "bandwidth": { "ingressRate": 8_000_000, "ingressBurst": 1_000_000, "egressRate": 8_000_000, "egressBurst": 1_000_000 },
    });
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            node.lab.node.netns.name(),
            &cnitool(),
            command,
            network,
        ])
        .arg(pod.path())
        .env("NETCONFPATH", confdir)
        .env("CNI_PATH", cni_path)
        .env("CAP_ARGS", caps.to_string())
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=tool",
        )
        .output()
        .expect("run cnitool");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn write_network(dir: &str, name: &str, plugins: Value) {
    let conf = json!({ "cniVersion": "1.0.0", "name": name, "plugins": plugins });
    std::fs::write(format!("{dir}/{name}.conflist"), conf.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cnitool_runs_eniflow_first_in_a_chain_with_portmap_bandwidth_and_tuning() {
    require_root();
    let node = PodNode::start().await;
    let confdir = node.files.path("net.d");
    std::fs::create_dir_all(&confdir).unwrap();
    let eniflow = json!({ "type": "eniflow-cni", "socket": node.socket(), "logFile": node.files.path("cni.log") });
    let tuning = json!({ "type": "tuning", "sysctl": { "net.core.somaxconn": "512" } });
    write_network(
        &confdir,
        "eniflow-chain",
        json!([
            eniflow,
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "bandwidth", "capabilities": { "bandwidth": true } },
            tuning,
        ]),
    );
    // Debian's portmap (1.1.1) fails CHECK on its own (real-clients.md): CHECK runs without it.
    write_network(&confdir, "eniflow-check", json!([eniflow, tuning]));

    let pod = Netns::new("pod");
    let result: Value = serde_json::from_str(
        &run(&node, &confdir, "add", "eniflow-chain", &pod)
            .unwrap_or_else(|e| panic!("cnitool add: {e}")),
    )
    .expect("cnitool prints the chain's result");
    let ip = result["ips"][0]["address"]
        .as_str()
        .expect("an address")
        .to_owned();
    let host_veth = result["interfaces"][0]["name"].as_str().unwrap().to_owned();
    assert!(ip.ends_with("/32"), "{result}");

    // Each plugin did its part on what eniflow made.
    let somaxconn = pod.run("sysctl", &["-n", "net.core.somaxconn"]);
    assert_eq!(somaxconn.trim(), "512", "tuning");
    let qdiscs = node
        .lab
        .node
        .netns
        .run("tc", &["qdisc", "show", "dev", &host_veth]);
    assert!(
        qdiscs.contains("tbf"),
        "bandwidth shaped nothing on {host_veth}: {qdiscs}"
    );
    let nat = node.lab.node.netns.run("iptables", &["-t", "nat", "-S"]);
    assert!(
        nat.contains("18080"),
        "portmap added no DNAT for 18080:\n{nat}"
    );
    assert!(node.allocations() == 1);

    run(&node, &confdir, "del", "eniflow-chain", &pod)
        .unwrap_or_else(|e| panic!("cnitool del: {e}"));
    assert!(node.host_veths().is_empty(), "DEL left the veth");
    let nat = node.lab.node.netns.run("iptables", &["-t", "nat", "-S"]);
    assert!(!nat.contains("18080"), "DEL left portmap's rules:\n{nat}");
    assert_eq!(node.allocations(), 0);

    let other = Netns::new("pod");
    run(&node, &confdir, "add", "eniflow-check", &other)
        .unwrap_or_else(|e| panic!("cnitool add: {e}"));
    run(&node, &confdir, "check", "eniflow-check", &other)
        .unwrap_or_else(|e| panic!("cnitool check: {e}"));
    // A pod whose interface vanished fails eniflow's own CHECK (asked directly: through the
    // chain, tuning's CHECK would fail it too). The container is the one cnitool added.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(node.files.checkpoint()).unwrap()).unwrap();
    let container = saved["allocations"][0]["owner"]["container_id"]
        .as_str()
        .expect("cnitool's container in the checkpoint")
        .to_owned();
    let mut config = node.config();
    config["name"] = json!("eniflow-check");
    config["cniVersion"] = json!("1.0.0");
    let check = |netns: &Netns| {
        node.cni_with(
            "CHECK",
            &container,
            netns.path(),
            "eth0",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=tool",
            &config,
        )
    };
    let before = check(&other);
    assert!(before.ok, "eniflow's CHECK of a whole pod: {}", before.json);
    other.ip(&["link", "del", "eth0"]);
    let after = check(&other);
    assert!(!after.ok, "eniflow's CHECK passed without eth0");
    // Deleting eth0 took its veth peer with it: eniflow says which end is missing.
    assert_eq!(
        after.json["code"],
        eniflow_api::cni_errors::PLUMBING_FAILED,
        "{}",
        after.json
    );
    assert!(
        after.json["msg"].as_str().unwrap_or("").contains("missing"),
        "the error names what is missing: {}",
        after.json
    );
    run(&node, &confdir, "del", "eniflow-check", &other)
        .unwrap_or_else(|e| panic!("cnitool del: {e}"));
    assert_eq!(node.allocations(), 0);
    eniflow_tests::cni::remove_cni_cache_if_empty();
}
