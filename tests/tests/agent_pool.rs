//! The agent process keeping its address pool on the lab: inside the node it finds EC2 and IMDS
//! where an EC2 node does (169.254.169.254), fills the warm pool, writes its checkpoint and the
//! node's max pods, survives SIGKILL without asking EC2 again, and refuses to start — attaching
//! nothing — when EC2 refuses it.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use eniflow_tests::{
    agent::{self, Agent, PoolFiles, LAB_NODE_ENV},
    bpffs_dir,
    lab::{api_vpc::addresses, emulator::Fault, Lab, LabSpec},
    require_root,
};

fn start(lab: &Lab, root: &Path, files: &PoolFiles, extra: &[&str]) -> Agent {
    let mut args = vec!["--interfaces".to_owned(), "eth0".to_owned()];
    args.extend(files.args());
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start_with(&lab.node.netns.path(), root, &args, LAB_NODE_ENV)
}

/// Runs `eniflow-agent run --interfaces eth0 <args>` in the node with `env`, expecting it to
/// refuse to start; returns the last line of its stderr. Nothing may be pinned or published.
fn refused(
    lab: &Lab,
    root: &Path,
    files: &PoolFiles,
    args: &[&str],
    env: &[(&str, &str)],
) -> String {
    // Under `timeout`: an agent that accepted would serve until stopped.
    let out = std::process::Command::new("timeout")
        .arg("30")
        .arg(agent::binary("eniflow-agent"))
        .arg("--netns")
        .arg(lab.node.netns.path())
        .arg("--bpffs-root")
        .arg(root)
        .args(["run", "--interfaces", "eth0"])
        .args(files.args())
        .args(args)
        .envs(LAB_NODE_ENV.iter().chain(env).copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started: {stderr}");
    assert!(!root.exists(), "a refused start pinned objects");
    assert!(
        !Path::new(&files.max_pods()).exists(),
        "a refused start published max pods"
    );
    stderr.trim().lines().last().unwrap_or_default().to_owned()
}

async fn primary_addresses(lab: &Lab) -> Vec<String> {
    let eni = lab
        .ec2()
        .describe_network_interfaces()
        .network_interface_ids(&lab.node.primary_eni)
        .send()
        .await
        .expect("DescribeNetworkInterfaces")
        .network_interfaces
        .and_then(|mut n| n.pop())
        .expect("the primary ENI");
    addresses(&eni)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fills_its_warm_pool_and_survives_a_crash_without_asking_again() {
    require_root();
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let root = bpffs_dir("agent-pool");
    let files = PoolFiles::new("agent-pool");

    let running = start(&lab, &root, &files, &[]);
    // Serving: the CNI configuration marks the node network-ready, eniflow first in the chain.
    let conflist: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files.conflist()).expect("the conflist")).unwrap();
    assert_eq!(conflist["cniVersion"], "1.0.0");
    assert_eq!(conflist["plugins"][0]["type"], "eniflow-cni");
    assert_eq!(conflist["plugins"][0]["socket"], files.socket());
    assert_eq!(conflist["plugins"][1]["type"], "portmap");
    assert_eq!(
        std::fs::read_to_string(files.max_pods()).unwrap(),
        "29\n",
        "an m5.large's max pods"
    );
    // WARM_ENI_TARGET=1: the primary ENI (10 IPv4) is filled with 9 secondary addresses.
    let deadline = Instant::now() + Duration::from_secs(20);
    while primary_addresses(&lab).await.len() < 10 {
        assert!(Instant::now() < deadline, "the warm pool was not filled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files.checkpoint()).unwrap()).unwrap();
    assert_eq!(checkpoint["version"], "eniflow-ipam/1");

    running.kill();
    let assigns = |lab: &Lab| {
        lab.emulator
            .calls()
            .get("AssignPrivateIpAddresses")
            .copied()
            .unwrap_or(0)
    };
    let before = assigns(&lab);
    // Ready means its first refill pass is over: whatever it would ask EC2 for, it has asked.
    let restarted = start(&lab, &root, &files, &["--remove-conflist-on-exit"]);
    assert_eq!(assigns(&lab), before, "the restarted agent asked EC2 again");
    assert_eq!(primary_addresses(&lab).await.len(), 10);
    restarted.stop();
    assert!(
        !Path::new(&files.conflist()).exists(),
        "the stopped agent left the node ready"
    );
    let out = agent::command(&lab.node.netns.path(), &root, &["uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_ec2_refuses_stops_with_the_reason_and_attaches_nothing() {
    require_root();
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let root = bpffs_dir("agent-pool-denied");
    let files = PoolFiles::new("agent-pool");
    lab.emulator.fault(&Fault {
        action: "DescribeNetworkInterfaces".into(),
        code: Some("UnauthorizedOperation".into()),
        status: 403,
        count: 100,
        latency_ms: 0,
        cut: false,
    });
    let last = refused(&lab, &root, &files, &[], &[]);
    assert!(
        last.contains("DescribeNetworkInterfaces") && last.contains("UnauthorizedOperation"),
        "the error does not say what EC2 refused: {last}"
    );
    assert_eq!(
        lab.emulator.calls().get("DescribeNetworkInterfaces"),
        Some(&1),
        "an authorization error is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eniconfig_subnet_in_another_zone_stops_the_agent_naming_it() {
    require_root();
    let lab = Lab::start(LabSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let elsewhere = lab
        .ec2()
        .create_subnet()
        .vpc_id(&lab.vpc_id)
        .cidr_block("10.0.200.0/24")
        .availability_zone("us-west-2b")
        .send()
        .await
        .expect("CreateSubnet")
        .subnet
        .and_then(|s| s.subnet_id)
        .unwrap();
    let root = bpffs_dir("agent-pool-eniconfig");
    let files = PoolFiles::new("agent-pool");
    let configs = files.path("eniconfigs.json");
    std::fs::write(
        &configs,
        format!(
            r#"{{"kind":"List","items":[{{"kind":"ENIConfig","metadata":{{"name":"us-west-2a"}},
                "spec":{{"subnet":"{elsewhere}"}}}}]}}"#
        ),
    )
    .unwrap();
    let custom = [
        ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
        ("ENI_CONFIG_LABEL_DEF", "topology.kubernetes.io/zone"),
    ];
    let last = refused(&lab, &root, &files, &["--eni-configs", &configs], &custom);
    assert!(
        last.contains("ENIConfig \"us-west-2a\"") && last.contains(&elsewhere),
        "the error does not name the ENIConfig and its subnet: {last}"
    );
}
