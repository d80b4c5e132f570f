//! The agent's metrics as an operator's Prometheus sees them, and its introspection views: a real Prometheus in the lab
//! node's namespace scrapes the agent, and its answers are checked against what the test did
//! and against the emulator's view of the node.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use eniflow_agent::ec2;
use eniflow_tests::{
    cni::{pod_args, PodNode as Node},
    lab::{emulator::Fault, Lab, LabSpec, SubnetSpec},
    netns::Netns,
    prometheus::{self, Prometheus},
    require_root,
};
use serde_json::Value;

/// Pod addresses on the node's ENIs (not trunks), as EC2 has them: secondaries and /28s.
fn addresses_in_ec2(node: &Node) -> f64 {
    attached_enis(node)
        .iter()
        .filter(|e| e["interface_type"] != "trunk")
        .map(|e| {
            let secondaries = e["private_ips"]
                .as_array()
                .map_or(0, |a| a.len().saturating_sub(1));
            let prefixes = e["prefixes"].as_array().map_or(0, Vec::len);
            (secondaries + 16 * prefixes) as f64
        })
        .sum()
}

fn add(node: &Node, name: &str) -> (Netns, bool) {
    let netns = Netns::new("pod");
    let ok = node
        .cni(
            "ADD",
            &format!("c-{name}"),
            Some(&netns),
            "eth0",
            &pod_args(name),
        )
        .ok;
    (netns, ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_cni_counts_and_the_pool_as_ec2_has_it() {
    require_root();
    let node = Node::start().await;
    let node_ns = &node.lab.node.netns;
    let prom = Prometheus::scraping_agent_in(node_ns);
    let pods: Vec<_> = (0..3).map(|i| add(&node, &format!("m-{i}"))).collect();
    assert!(pods.iter().all(|(_, ok)| *ok), "every ADD succeeded");
    for (i, (netns, _)) in pods.iter().enumerate().take(2) {
        let name = format!("m-{i}");
        let del = node.cni(
            "DEL",
            &format!("c-{name}"),
            Some(netns),
            "eth0",
            &pod_args(&name),
        );
        assert!(del.ok, "{}", del.json);
    }

    prom.wait_for("sum(eniflow_cni_add_duration_seconds_count)", || 3.0);
    prom.wait_for(
        r#"eniflow_cni_add_duration_seconds_count{result="ok",code="0"}"#,
        || 3.0,
    );
    prom.wait_for("awscni_add_ip_req_count", || 3.0);
    // Each step of every ADD is timed.
    for step in eniflow_agent::metrics::AddStep::ALL {
        let series = format!(
            r#"eniflow_cni_add_step_duration_seconds_count{{step="{}"}}"#,
            step.name()
        );
        prom.wait_for(&series, || 3.0);
    }
    prom.wait_for("sum(eniflow_cni_del_duration_seconds_count)", || 2.0);
    prom.wait_for(r#"awscni_del_ip_req_count{reason="PodDeleted"}"#, || 2.0);
    // The pool as EC2 has it (the refill loop may still be moving it: both are read again
    // until they agree).
    prom.wait_for("awscni_total_ip_addresses", || addresses_in_ec2(&node));
    prom.wait_for("awscni_assigned_ip_addresses", || 1.0);
    prom.wait_for(r#"eniflow_pool_addresses{state="assigned"}"#, || 1.0);
    prom.wait_for(r#"eniflow_pool_addresses{state="cooling"}"#, || 2.0);
    prom.wait_for("sum(eniflow_pool_addresses)", || addresses_in_ec2(&node));
    prom.wait_for("sum(eniflow_eni_addresses)", || addresses_in_ec2(&node));
    prom.wait_for("awscni_eni_allocated", || attached_enis(&node).len() as f64);
    // EC2 calls, counted by the agent, against the emulator's own count.
    let described = node.lab.emulator.calls()["DescribeNetworkInterfaces"] as f64;
    assert!(described > 0.0);
    prom.wait_for(
        r#"awscni_ec2api_req_count{fn="DescribeNetworkInterfaces"}"#,
        || node.lab.emulator.calls()["DescribeNetworkInterfaces"] as f64,
    );
    prom.wait_for(
        r#"eniflow_ec2_calls_total{action="DescribeInstanceTypes",outcome="ok"}"#,
        || 1.0,
    );
    // Drops come from the kernel at scrape time: one series per hook and reason.
    let drops = prom.query("eniflow_drops_total");
    let series = eniflow_common::HOOKS as usize * eniflow_common::DropReason::ALL.len();
    assert_eq!(drops.len(), series, "{drops:?}");
    assert!(drops.iter().all(|(_, v)| *v == 0.0), "{drops:?}");
    assert!(prom.value("sum(eniflow_hook_packets_total)").unwrap_or(0.0) > 0.0);

    // promtool parses the exposition; its only complaints are about VPC CNI's own names (kept
    // as they are so dashboards carry over), none about eniflow's.
    let exposition = prometheus::scrape_agent(node_ns);
    let (code, said) = prometheus::promtool_check(&exposition);
    assert!(
        code == 0 || code == 3,
        "promtool check metrics ({code}):\n{said}"
    );
    let complaints: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        complaints.iter().all(|l| l.starts_with("awscni_")),
        "promtool check metrics:\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_a_full_subnet_show_in_the_ec2_and_pool_counters() {
    require_root();
    // One spare address: the second ADD after the subnet fills finds the pool empty.
    let node = Node::start_custom(
        LabSpec::default(),
        &[],
        &[("WARM_IP_TARGET", "1"), ("WARM_ENI_TARGET", "0")],
    )
    .await;
    let node_ns = &node.lab.node.netns;
    let prom = Prometheus::scraping_agent_in(node_ns);

    // Throttled through every SDK attempt: the call fails with EC2's code.
    node.lab.emulator.fault(&Fault {
        action: "AssignPrivateIpAddresses".into(),
        code: Some("RequestLimitExceeded".into()),
        status: 503,
        count: 5,
        latency_ms: 0,
        cut: false,
    });
    let (_first, ok) = add(&node, "t-0");
    assert!(ok, "the spare address serves the ADD while EC2 throttles");
    prom.wait_for(
        r#"eniflow_ec2_calls_total{action="AssignPrivateIpAddresses",outcome="RequestLimitExceeded"}"#,
        || 1.0,
    );
    prom.wait_for(
        r#"awscni_aws_api_error_count{api="AssignPrivateIpAddresses",error="RequestLimitExceeded"}"#,
        || 1.0,
    );
    prom.wait_for(
        r#"awscni_ec2api_error_count{fn="AssignPrivateIpAddresses"}"#,
        || 1.0,
    );
    // Every attempt the SDK made, its retries included, as the emulator received them.
    prom.wait_for(
        r#"eniflow_ec2_attempts_total{action="AssignPrivateIpAddresses",status="503"}"#,
        || 5.0,
    );
    prom.wait_for(
        r#"sum(eniflow_ec2_attempts_total{action="AssignPrivateIpAddresses"})"#,
        || node.lab.emulator.calls()["AssignPrivateIpAddresses"] as f64,
    );
    assert_eq!(prom.value("awscni_no_available_ip_addresses"), Some(0.0));

    // The subnet full: EC2 gives no address and no ENI; the pool runs dry.
    for action in ["AssignPrivateIpAddresses", "CreateNetworkInterface"] {
        node.lab.emulator.fault(&Fault {
            action: action.into(),
            code: Some("InsufficientFreeAddressesInSubnet".into()),
            status: 400,
            count: 1000,
            latency_ms: 0,
            cut: false,
        });
    }
    let mut refused = 0;
    let mut pods = Vec::new();
    for i in 1..6 {
        let (netns, ok) = add(&node, &format!("t-{i}"));
        if !ok {
            refused += 1;
        }
        pods.push(netns);
    }
    assert!(refused > 0, "the pool never ran dry");
    prom.wait_for("awscni_no_available_ip_addresses", || f64::from(refused));
    prom.wait_for(
        r#"eniflow_cni_add_duration_seconds_count{result="error",code="11"}"#,
        || f64::from(refused),
    );
    node.lab.emulator.clear_faults();
}

/// The ENIs attached to the node, as the emulator's view has them.
fn attached_enis(node: &Node) -> Vec<Value> {
    let view = node.lab.emulator.view();
    view["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["instance_id"] == node.lab.node.id.as_str() && !e["device_index"].is_null())
        .cloned()
        .collect()
}

/// The node's attached ENIs in EC2 as (id, subnet id).
fn node_enis(node: &Node) -> Vec<(String, String)> {
    attached_enis(node)
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("id"), s("subnet_id"))
        })
        .collect()
}

/// An ENI as a crashed agent of eniflow's leaves it: detached, tagged, created an hour ago.
async fn leaked_eni(lab: &Lab) -> String {
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::NetworkInterface)
        .tags(
            Tag::builder()
                .key(ec2::tags::CREATED_AT)
                .value(an_hour_ago.to_string())
                .build(),
        )
        .build();
    lab.ec2()
        .create_network_interface()
        .subnet_id(&lab.subnets[0])
        .set_groups(Some(lab.security_groups.clone()))
        .tag_specifications(tags)
        .send()
        .await
        .expect("CreateNetworkInterface")
        .network_interface
        .and_then(|n| n.network_interface_id)
        .expect("an ENI id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_sweep_and_subnet_discovery_show_in_their_counters() {
    require_root();
    // A third subnet, tagged for pods and twice as large: subnet discovery puts new ENIs there.
    let mut spec = LabSpec {
        hosts: false,
        ..LabSpec::default()
    };
    spec.subnets.push(SubnetSpec {
        cidr: "10.0.4.0/23".into(),
        az: "us-west-2a".into(),
        tags: vec![("kubernetes.io/role/cni".into(), "1".into())],
    });
    let lab = Lab::start(spec).await.unwrap_or_else(|e| panic!("{e}"));
    let leaked = leaked_eni(&lab).await;
    // More warm addresses than the primary ENI holds: a second ENI from the start.
    let node = Node::on_lab(lab, &[], &[("WARM_IP_TARGET", "12")]).await;
    let prom = Prometheus::scraping_agent_in(&node.lab.node.netns);

    prom.wait_for("eniflow_leaked_enis_deleted_total", || 1.0);
    let left: Vec<String> = node.lab.emulator.view()["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert!(!left.contains(&leaked), "{leaked} is still in EC2");

    let elsewhere = || {
        let own = &node.lab.subnets[0];
        node_enis(&node).iter().filter(|(_, s)| s != own).count() as f64
    };
    prom.wait_for("eniflow_enis_in_other_subnets_total", elsewhere);
    assert!(elsewhere() >= 1.0, "{:?}", node_enis(&node));
    assert_eq!(
        prom.value(r#"eniflow_subnet_pauses_total{shortage="addresses"}"#),
        Some(0.0)
    );
}

/// A lab without remote hosts (the pool's counters need none).
async fn lab_without_hosts() -> Lab {
    Lab::start(LabSpec {
        hosts: false,
        ..LabSpec::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_out_of_prefixes_shows_as_paused() {
    require_root();
    let lab = lab_without_hosts().await;
    // The node's subnet has no free /28 for the first prefix asked for.
    lab.emulator.fault(&Fault {
        action: "AssignPrivateIpAddresses".into(),
        code: Some("InsufficientCidrBlocks".into()),
        status: 400,
        count: 1,
        latency_ms: 0,
        cut: false,
    });
    let node = Node::on_lab(lab, &[], &[("ENABLE_PREFIX_DELEGATION", "true")]).await;
    let prom = Prometheus::scraping_agent_in(&node.lab.node.netns);
    prom.wait_for(
        r#"eniflow_subnet_pauses_total{shortage="prefixes"}"#,
        || 1.0,
    );
    prom.wait_for(r#"eniflow_paused_subnets{shortage="prefixes"}"#, || 1.0);
    prom.wait_for(r#"eniflow_paused_subnets{shortage="addresses"}"#, || 0.0);
    let prefixes: usize = node.lab.emulator.view()["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["instance_id"] == node.lab.node.id.as_str())
        .map(|e| e["prefixes"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(prefixes, 0, "single addresses while the subnet has no /28");
    assert!(addresses_in_ec2(&node) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_given_back_are_counted() {
    require_root();
    let lab = lab_without_hosts().await;
    let node = Node::on_lab(
        lab,
        &[],
        &[
            ("WARM_IP_TARGET", "2"),
            ("WARM_ENI_TARGET", "0"),
            ("IP_COOLDOWN_PERIOD", "0"),
        ],
    )
    .await;
    let prom = Prometheus::scraping_agent_in(&node.lab.node.netns);

    // Five pods (the pool grows as they come), then none: the pool gives back what is above
    // its two warm addresses.
    let mut pods = Vec::new();
    for i in 0..5 {
        let name = format!("g-{i}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let netns = loop {
            let (netns, ok) = add(&node, &name);
            if ok {
                break netns;
            }
            assert!(Instant::now() < deadline, "ADD {name} kept failing");
            std::thread::sleep(Duration::from_millis(200));
        };
        pods.push((name, netns));
    }
    prom.wait_for(r#"eniflow_pool_addresses{state="warm"}"#, || 2.0);
    prom.wait_for("awscni_total_ip_addresses", || addresses_in_ec2(&node));
    let peak = addresses_in_ec2(&node);
    assert_eq!(
        prom.value(r#"eniflow_addresses_given_back_total{block="address"}"#),
        Some(0.0)
    );
    for (name, netns) in &pods {
        let del = node.cni(
            "DEL",
            &format!("c-{name}"),
            Some(netns),
            "eth0",
            &pod_args(name),
        );
        assert!(del.ok, "{}", del.json);
    }
    // Give-backs are paced (one release every 30 s): wait for the pool to reach its target.
    let deadline = Instant::now() + Duration::from_secs(90);
    while addresses_in_ec2(&node) > 2.0 {
        let kept = addresses_in_ec2(&node);
        assert!(Instant::now() < deadline, "the pool kept {kept} addresses");
        std::thread::sleep(Duration::from_millis(500));
    }
    prom.wait_for(
        r#"eniflow_addresses_given_back_total{block="address"}"#,
        || peak - addresses_in_ec2(&node),
    );
    assert_eq!(peak - addresses_in_ec2(&node), 5.0);
    assert_eq!(
        prom.value(r#"eniflow_addresses_given_back_total{block="prefix"}"#),
        Some(0.0)
    );
}

/// The node's ENIs as EC2 has them: id → (device index, secondary addresses, prefixes).
fn enis_in_ec2(node: &Node) -> BTreeMap<String, (u64, BTreeSet<String>, BTreeSet<String>)> {
    attached_enis(node)
        .iter()
        .map(|e| {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect()
            };
            let ips = strings(&e["private_ips"]);
            (
                e["id"].as_str().unwrap().to_owned(),
                (
                    e["device_index"].as_u64().unwrap(),
                    ips.into_iter().skip(1).collect(),
                    strings(&e["prefixes"]).into_iter().collect(),
                ),
            )
        })
        .collect()
}

fn view(node: &Node, path: &str) -> Value {
    let (status, body) = prometheus::get(&node.lab.node.netns, prometheus::AGENT_METRICS, path)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_matches_ec2_and_the_checkpoint_names_no_container_and_status_works_stopped()
{
    require_root();
    let node = Node::start().await;
    let (_a, ok_a) = add(&node, "intro-a");
    let (_b, ok_b) = add(&node, "intro-b");
    assert!(ok_a && ok_b);

    // ENIs: what EC2 has, address for address; the pods' addresses are the assigned ones.
    let checkpoint: Value =
        serde_json::from_str(&std::fs::read_to_string(node.files.checkpoint()).unwrap()).unwrap();
    let held: BTreeSet<String> = checkpoint["allocations"]
        .as_array()
        .unwrap_or_else(|| panic!("no allocations in the checkpoint: {checkpoint}"))
        .iter()
        .map(|a| a["ipv4"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(held.len(), 2, "{checkpoint}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let enis = view(&node, "/v1/enis");
        let mut seen = BTreeMap::new();
        let mut assigned = BTreeSet::new();
        for e in enis["enis"].as_array().unwrap() {
            let addresses: Vec<&Value> = e["addresses"].as_array().unwrap().iter().collect();
            let secondaries: BTreeSet<String> = addresses
                .iter()
                .map(|a| a["address"].as_str().unwrap().to_owned())
                .filter(|a| {
                    !e["prefixes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| in_prefix(a, p))
                })
                .collect();
            assigned.extend(
                addresses
                    .iter()
                    .filter(|a| a["state"] == "assigned")
                    .map(|a| a["address"].as_str().unwrap().to_owned()),
            );
            let prefixes = e["prefixes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned())
                .collect();
            seen.insert(
                e["id"].as_str().unwrap().to_owned(),
                (e["device_index"].as_u64().unwrap(), secondaries, prefixes),
            );
        }
        if seen == enis_in_ec2(&node) && assigned == held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/v1/enis {seen:?} (assigned {assigned:?}) vs EC2 {:?} (checkpoint {held:?})",
            enis_in_ec2(&node)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Pods: each one named, on the ENI EC2 put its address on, with its veth and counters.
    let pods = view(&node, "/v1/pods");
    let ec2 = enis_in_ec2(&node);
    for name in ["intro-a", "intro-b"] {
        let pod = pods["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in /v1/pods: {pods}"));
        let addr = pod["address"].as_str().unwrap();
        assert!(held.contains(addr), "{pod}");
        let eni = pod["eni"].as_str().unwrap();
        assert!(
            ec2[eni].1.contains(addr),
            "{addr} is not on {eni} in EC2: {pod}"
        );
        assert!(
            pod["host_veth"].as_str().unwrap().starts_with("eni"),
            "{pod}"
        );
        assert_eq!(pod["counters"]["drops"]["spoofed_source"], 0, "{pod}");
    }
    let config = view(&node, "/v1/config");
    assert_eq!(config["pool"]["knobs"]["WARM_ENI_TARGET"], 1, "{config}");
    assert_eq!(
        config["pool"]["knobs"]["IP_COOLDOWN_PERIOD"], 120,
        "{config}"
    );
    let subnets = view(&node, "/v1/subnets");
    assert!(
        subnets["subnets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == node.lab.subnets[node.lab.spec.node_subnet].as_str()),
        "{subnets}"
    );

    // Nothing served names a container: with one, a caller could forge a DEL.
    for path in [
        "/v1/enis",
        "/v1/pods",
        "/v1/subnets",
        "/v1/config",
        "/v1/status",
        "/metrics",
    ] {
        let (_, body) = prometheus::get(&node.lab.node.netns, prometheus::AGENT_METRICS, path)
            .unwrap_or_else(|e| panic!("{e}"));
        for container in ["c-intro-a", "c-intro-b"] {
            assert!(
                !body.contains(container),
                "{path} names {container}:\n{body}"
            );
        }
    }

    // status: the agent's view while it runs, the pinned maps once it has stopped.
    let running = node.agent_command(&["status"]);
    let said = String::from_utf8_lossy(&running.stdout).into_owned();
    assert!(
        running.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&running.stderr)
    );
    assert!(
        said.contains("agent: answering") && said.contains("pool: "),
        "{said}"
    );
    let mut node = node;
    node.agent.take().unwrap().stop();
    let stopped = node.agent_command(&["status"]);
    let said = String::from_utf8_lossy(&stopped.stdout).into_owned();
    assert!(
        stopped.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    assert!(said.contains("agent: not answering"), "{said}");
    for addr in &held {
        assert!(
            said.contains(addr.as_str()),
            "{addr} missing from status:\n{said}"
        );
    }
}

/// Whether address `a` lies in the /28 `prefix` ("10.0.1.16/28").
fn in_prefix(a: &str, prefix: &Value) -> bool {
    let base: std::net::Ipv4Addr = prefix
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let a: std::net::Ipv4Addr = a.parse().unwrap();
    u32::from(a) & !15 == u32::from(base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_with_a_span_per_cni_request() {
    require_root();
    let mut node = Node::start().await;
    node.agent.take().unwrap().stop();
    let log_path = std::path::PathBuf::from(node.files.path("agent.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    node.start_agent_logging(
        &[("ENIFLOW_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
        log.into(),
    );
    let (netns, ok) = add(&node, "logged");
    assert!(ok);
    // A namespace path that is a plain file: the shim passes it on, the agent refuses it.
    let not_a_netns = node.files.path("not-a-netns");
    std::fs::write(&not_a_netns, b"").unwrap();
    let refused = node.cni_with(
        "ADD",
        "c-logged-2",
        not_a_netns,
        "eth0",
        &pod_args("logged-2"),
        &node.config(),
    );
    assert!(!refused.ok, "{}", refused.json);
    drop(netns);
    node.agent.take().unwrap().stop();

    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}"))
        })
        .collect();
    assert!(lines.len() > 3, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string()),
        "{text}"
    );
    // Each request's span closes with what it was and how it ended.
    let closed = |container: &str| {
        lines
            .iter()
            .find(|l| {
                l["span"]["name"] == "cni"
                    && l["span"]["container"] == container
                    && l["fields"]["message"] == "close"
            })
            .unwrap_or_else(|| panic!("no closed span of {container}:\n{text}"))
            .clone()
    };
    let ok_span = closed("c-logged")["span"].clone();
    assert_eq!(ok_span["command"], "Add", "{ok_span}");
    assert_eq!(ok_span["pod"], "default/logged", "{ok_span}");
    assert_eq!(ok_span["result"], "ok", "{ok_span}");
    let refused_span = closed("c-logged-2")["span"].clone();
    assert!(
        refused_span["result"]
            .as_str()
            .unwrap()
            .starts_with("error "),
        "{refused_span}"
    );
}
