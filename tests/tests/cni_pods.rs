//! Pods on the lab through the real shim binary, executed as a container runtime executes a CNI
//! plugin (environment + configuration on stdin): the agent gives each pod an address from its
//! pool and wires it; pods reach a remote VPC host; repeated ADDs, double DELs and DELs while the
//! agent is down behave; bad input gets the right CNI error and leaves nothing behind.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use eniflow_common::maps;
use eniflow_tests::{
    agent, bpftool,
    cni::{address, pings, pod_args, Answer, PodNode as Node},
    dataplane::wire,
    netns::Netns,
    require_root,
};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_pool_addresses_reach_the_vpc_and_leave_nothing_behind() {
    require_root();
    let node = Node::start().await;
    let pod = Netns::new("pod");

    let added = node.cni("ADD", "c-web-0", Some(&pod), "eth0", &pod_args("web-0"));
    assert!(added.ok, "ADD failed: {}", added.json);
    let ip = address(&added);
    assert_eq!(added.json["cniVersion"], "1.0.0");
    assert_eq!(added.json["interfaces"][1]["sandbox"], pod.path());
    let host_veth = added.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        host_veth.starts_with("eni") && host_veth.len() == 14,
        "{host_veth}"
    );
    let on_primary: Vec<String> = node.lab.emulator.view()["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["id"] == node.lab.node.primary_eni.as_str())
        .flat_map(|e| {
            e["private_ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        on_primary.contains(&ip),
        "{ip} is not on the primary ENI: {on_primary:?}"
    );
    let routes = pod.ip(&["route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(pod.ip(&["neigh", "show"]).contains("PERMANENT"));
    let remote = &node.lab.hosts[0].primary_ip;
    assert!(pings(&pod, remote), "the pod at {ip} cannot reach {remote}");

    let again = node.cni("ADD", "c-web-0", Some(&pod), "eth0", &pod_args("web-0"));
    assert!(again.ok);
    assert_eq!(
        again.json, added.json,
        "a repeated ADD returns the first answer"
    );
    assert!(
        node.cni("CHECK", "c-web-0", Some(&pod), "eth0", &pod_args("web-0"))
            .ok
    );

    // What DEL must take away: the pod's map entries, its veth's attachment records and pins.
    let veth_ifindex = node.lab.node.netns.ifindex(&host_veth);
    let before = pod_remains(&node, &ip, veth_ifindex);
    assert!(
        before.len() >= 5,
        "the wired pod's entries and records are not all there: {before:?}"
    );
    for _ in 0..2 {
        let deleted = node.cni("DEL", "c-web-0", Some(&pod), "eth0", &pod_args("web-0"));
        assert!(
            deleted.ok && deleted.json.is_null(),
            "DEL: {}",
            deleted.json
        );
    }
    assert!(node.host_veths().is_empty(), "the host veth outlived DEL");
    assert!(!pod.ip(&["-j", "link", "show"]).contains("\"eth0\""));
    assert_eq!(node.allocations(), 0);
    let remains = pod_remains(&node, &ip, veth_ifindex);
    assert!(remains.is_empty(), "DEL left: {remains:?}");
    let unknown = node.cni("DEL", "never-added", Some(&pod), "eth0", "");
    assert!(unknown.ok, "DEL of an unknown container: {}", unknown.json);
    let missing = node.cni("CHECK", "c-web-0", Some(&pod), "eth0", &pod_args("web-0"));
    assert_eq!(
        (missing.ok, missing.json["code"].as_u64()),
        (false, Some(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_adds_get_distinct_addresses() {
    require_root();
    let node = Node::start().await;
    let pods: Vec<Netns> = (0..8).map(|_| Netns::new("pod")).collect();
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(n, pod)| {
                let node = &node;
                s.spawn(move || {
                    node.cni(
                        "ADD",
                        &format!("c{n}"),
                        Some(pod),
                        "eth0",
                        &pod_args(&format!("p{n}")),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addresses: Vec<String> = answers
        .iter()
        .map(|a| {
            assert!(a.ok, "ADD failed: {}", a.json);
            address(a)
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 8, "an address handed out twice");
    assert_eq!(node.allocations(), 8);
    for (n, pod) in pods.iter().enumerate() {
        assert!(
            node.cni(
                "DEL",
                &format!("c{n}"),
                Some(pod),
                "eth0",
                &pod_args(&format!("p{n}"))
            )
            .ok
        );
    }
    assert_eq!(node.allocations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_leaves_nothing() {
    require_root();
    let node = Node::start().await;
    let pod = Netns::new("pod");
    let expect = |answer: Answer, code: u64, named: &str| {
        assert!(!answer.ok, "accepted: {}", answer.json);
        assert_eq!(answer.json["code"].as_u64(), Some(code), "{}", answer.json);
        let msg = answer.json["msg"].as_str().unwrap();
        assert!(
            msg.contains(named) && !msg.contains('\n'),
            "{msg:?} does not name {named}"
        );
    };

    expect(
        node.cni_with(
            "ADD",
            "c1",
            "/run/netns/no-such-pod".into(),
            "eth0",
            "",
            &node.config(),
        ),
        4,
        "CNI_NETNS",
    );
    expect(
        node.cni_with("ADD", "", pod.path(), "eth0", "", &node.config()),
        4,
        "CNI_CONTAINERID",
    );
    let mut old = node.config();
    old["cniVersion"] = json!("0.2.0");
    expect(
        node.cni_with("ADD", "c1", pod.path(), "eth0", "", &old),
        1,
        "0.2.0",
    );
    let mut unnamed = node.config();
    unnamed.as_object_mut().unwrap().remove("name");
    expect(
        node.cni_with("ADD", "c1", pod.path(), "eth0", "", &unnamed),
        7,
        "name",
    );
    // The pod already has an eth0.
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    expect(
        node.cni("ADD", "c1", Some(&pod), "eth0", &pod_args("taken")),
        4,
        "CNI_IFNAME",
    );
    assert!(
        node.host_veths().is_empty(),
        "a refused ADD left a host veth"
    );
    assert_eq!(node.allocations(), 0, "a refused ADD kept its address");

    // Malformed JSON never reaches the agent.
    assert_eq!(not_json(&node.files.path("cni.log"))["code"], 6);

    // An agent that accepts but never answers.
    let silent = node.files.path("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let mut config = node.config();
    config["socket"] = json!(silent);
    config["timeoutSeconds"] = json!(1);
    let started = Instant::now();
    expect(
        node.cni_with("ADD", "c2", pod.path(), "eth1", "", &config),
        100,
        "did not answer within 1 s",
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Every step of ADD made to fail in turn (the agent's fault injection): the ADD fails with the
/// step's CNI code and names it, nothing of the pod is left, and the agent serves the next ADD.
/// A DEL whose veth deletion fails keeps the address until the retried DEL finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failing_add_step_unwinds_and_the_agent_keeps_serving() {
    require_root();
    let steps = [
        ("take", 5),
        ("checkpoint", 5),
        ("veth", 102),
        ("pod-address", 102),
        ("attach", 102),
        ("map-pod-stats", 102),
        ("map-veths", 102),
        ("map-pods", 102),
    ];
    let mut proven = Vec::new();
    for (step, code) in steps {
        let node = Node::start_custom(
            eniflow_tests::lab::LabSpec::default(),
            &[],
            &[("ENIFLOW_FAULTS", step)],
        )
        .await;
        let pod = Netns::new("pod");
        let failed = node.cni("ADD", "c-fault", Some(&pod), "eth0", &pod_args("fault"));
        assert!(!failed.ok, "{step}: the ADD succeeded");
        assert_eq!(failed.json["code"], code, "{step}: {}", failed.json);
        let msg = failed.json["msg"].as_str().unwrap_or("");
        assert!(
            msg.contains(&format!("injected fault at {step}")),
            "{step}: the error does not name the step: {msg}"
        );
        let left = node_remains(&node, &pod);
        assert!(left.is_empty(), "{step}: the failed ADD left {left:?}");
        // The agent keeps serving: the same ADD now goes through, and DEL leaves nothing.
        let added = node.cni("ADD", "c-fault", Some(&pod), "eth0", &pod_args("fault"));
        assert!(added.ok, "{step}: the next ADD: {}", added.json);
        let deleted = node.cni("DEL", "c-fault", Some(&pod), "eth0", &pod_args("fault"));
        assert!(deleted.ok, "{step}: {}", deleted.json);
        let left = node_remains(&node, &pod);
        assert!(left.is_empty(), "{step}: DEL left {left:?}");
        proven.push(step);
    }

    let node = Node::start_custom(
        eniflow_tests::lab::LabSpec::default(),
        &[],
        &[("ENIFLOW_FAULTS", "unwire")],
    )
    .await;
    let pod = Netns::new("pod");
    let added = node.cni("ADD", "c-fault", Some(&pod), "eth0", &pod_args("fault"));
    assert!(added.ok, "{}", added.json);
    let failed = node.cni("DEL", "c-fault", Some(&pod), "eth0", &pod_args("fault"));
    assert!(!failed.ok, "the DEL with a failing veth deletion succeeded");
    assert!(
        failed.json["msg"]
            .as_str()
            .unwrap_or("")
            .contains("injected fault at unwire"),
        "{}",
        failed.json
    );
    assert_eq!(
        node.allocations(),
        1,
        "the address went while its veth stayed"
    );
    let retried = node.cni("DEL", "c-fault", Some(&pod), "eth0", &pod_args("fault"));
    assert!(retried.ok, "{}", retried.json);
    let left = node_remains(&node, &pod);
    assert!(left.is_empty(), "the retried DEL left {left:?}");
    proven.push("unwire");
    eprintln!(
        "fault injection: {} steps failed and unwound: {proven:?}",
        proven.len()
    );
}

/// Anything of any pod on the node: allocations, host veths, the pod's eth0, pod map entries,
/// attachment records and link pins of interfaces that are not ENIs.
fn node_remains(node: &Node, pod: &Netns) -> Vec<String> {
    let mut left = Vec::new();
    if node.allocations() != 0 {
        left.push(format!("{} allocation(s)", node.allocations()));
    }
    for veth in node.host_veths() {
        left.push(format!("host veth {veth}"));
    }
    if pod.ip(&["-j", "link", "show"]).contains("\"eth0\"") {
        left.push("eth0 in the pod".into());
    }
    for map in [maps::PODS, maps::VETHS, maps::POD_STATS, maps::BRANCHES] {
        let n = bpftool::dump(&node.map(map)).len();
        if n != 0 {
            left.push(format!("{n} {map} entr(ies)"));
        }
    }
    let links: Value =
        serde_json::from_str(&node.lab.node.netns.ip(&["-j", "link", "show"])).unwrap();
    let enis: Vec<u64> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("eth")))
        .filter_map(|l| l["ifindex"].as_u64())
        .collect();
    for e in bpftool::dump(&node.map(maps::ATTACHMENTS)) {
        let f = bpftool::formatted(&e, maps::ATTACHMENTS);
        if !f["key"]["ifindex"]
            .as_u64()
            .is_some_and(|i| enis.contains(&i))
        {
            left.push(format!("attachment record {}", f["key"]));
        }
    }
    let pins = node.map("").parent().unwrap().join("links");
    for pin in std::fs::read_dir(&pins).into_iter().flatten().flatten() {
        let name = pin.file_name().to_string_lossy().into_owned();
        let ifindex = name
            .strip_prefix("if")
            .and_then(|r| r.split('_').next())
            .and_then(|i| i.parse::<u64>().ok());
        if !ifindex.is_some_and(|i| enis.contains(&i)) {
            left.push(format!("link pin {name}"));
        }
    }
    left
}

/// With no agent at all, the shim answers what the CNI spec lets a plugin answer by itself, and
/// says the agent is unreachable only for what needs it.
#[test]
fn the_shim_alone_answers_what_needs_no_agent() {
    let dir = agent::PoolFiles::new("shim-alone");
    let nowhere = dir.path("no-agent.sock");
    let config = json!({"cniVersion": "1.0.0", "name": "eniflow", "type": "eniflow-cni",
        "socket": nowhere, "logFile": dir.path("cni.log"), "timeoutSeconds": 2});
    let with = |key: &str, value: Value| {
        let mut c = config.clone();
        c[key] = value;
        c
    };
    let call = |command: &str, container: &str, netns: &str, ifname: &str, config: &Value| {
        eniflow_tests::cni::shim(
            &eniflow_tests::cni::ShimCall {
                command,
                container,
                netns,
                ifname,
                args: "",
                log: &dir.path("cni.log"),
            },
            config,
        )
    };
    let netns = "/proc/self/ns/net";
    let version = call("VERSION", "", "", "", &config);
    assert!(
        version.ok && version.json["supportedVersions"].is_array(),
        "{}",
        version.json
    );
    for (what, answer, code) in [
        (
            "an unsupported cniVersion",
            call(
                "ADD",
                "c1",
                netns,
                "eth0",
                &with("cniVersion", json!("0.1.0")),
            ),
            1,
        ),
        (
            "no cniVersion",
            call("ADD", "c1", netns, "eth0", &with("cniVersion", Value::Null)),
            7,
        ),
        (
            "no network name",
            call("ADD", "c1", netns, "eth0", &with("name", json!(""))),
            7,
        ),
        ("no CNI_NETNS", call("ADD", "c1", "", "eth0", &config), 4),
        (
            "no CNI_CONTAINERID",
            call("CHECK", "", netns, "eth0", &config),
            4,
        ),
        (
            "an ADD, which needs the agent",
            call("ADD", "c1", netns, "eth0", &config),
            100,
        ),
        (
            "a STATUS, which needs the agent",
            call("STATUS", "", "", "", &config),
            100,
        ),
    ] {
        assert!(!answer.ok, "{what}: {}", answer.json);
        assert_eq!(answer.json["code"], code, "{what}: {}", answer.json);
    }
    // Malformed: not JSON at all.
    let json = not_json(&dir.path("cni.log"));
    assert_eq!(json["code"], 6, "{json}");
    // DEL succeeds: the agent releases what is gone when it is back.
    let del = call("DEL", "c1", "", "eth0", &config);
    assert!(del.ok && del.json.is_null(), "{}", del.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_while_the_agent_is_down_succeeds_and_the_agent_catches_up() {
    require_root();
    let mut node = Node::start().await;
    let pod = Netns::new("pod");
    let added = node.cni("ADD", "c-db", Some(&pod), "eth0", &pod_args("db"));
    assert!(added.ok, "{}", added.json);
    let host_veth = added.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();

    node.agent.take().unwrap().stop();
    let refused = node.cni("ADD", "c-other", Some(&pod), "eth1", &pod_args("other"));
    assert_eq!(refused.json["code"].as_u64(), Some(100), "{}", refused.json);
    // The runtime deletes the pod (and its namespace) while the agent is away.
    let deleted = node.cni("DEL", "c-db", Some(&pod), "eth0", &pod_args("db"));
    assert!(deleted.ok && deleted.json.is_null(), "{}", deleted.json);
    drop(pod); // the veth pair goes with the pod's namespace, once the kernel has cleaned it up
    assert_eq!(node.allocations(), 1, "nothing could release it yet");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.host_veths().contains(&host_veth) {
        assert!(
            Instant::now() < deadline,
            "{host_veth} outlived its pod's namespace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    node.start_agent();
    assert_eq!(
        node.allocations(),
        0,
        "the returning agent released the gone pod's address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_grpc_health_and_neighbouring_protocol_versions() {
    use eniflow_api::v1::{cni_client::CniClient, CniRequest};
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    require_root();
    let mut node = Node::start().await;
    let channel = eniflow_api::connect(std::path::Path::new(&node.socket()))
        .await
        .expect("the agent's socket");
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "eniflow.v1.Cni".into(),
        })
        .await
        .expect("grpc.health.v1 Check")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let status = |protocol: u32| {
        let mut client = CniClient::new(channel.clone());
        let config = node.config().to_string().into_bytes();
        async move {
            client
                .status(CniRequest {
                    protocol,
                    config,
                    ..Default::default()
                })
                .await
                .expect("a reply")
                .into_inner()
        }
    };
    let current = eniflow_api::PROTOCOL;
    for served in [current, current + 1] {
        let reply = status(served).await;
        assert!(
            !reply.failed,
            "protocol {served}: {:?}",
            String::from_utf8_lossy(&reply.output)
        );
    }
    for refused in [0, current + 2] {
        let reply = status(refused).await;
        assert!(reply.failed, "protocol {refused} was served");
        let error: Value = serde_json::from_slice(&reply.output).unwrap();
        assert_eq!(error["code"], 101, "{error}");
    }
    // The socket is root's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir = std::path::Path::new(&node.socket())
        .parent()
        .unwrap()
        .to_owned();
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700, "{}", dir.display());

    // An oversized request is refused before it is read, and changes nothing.
    let before = node.allocations();
    let mut huge = node.config();
    huge["padding"] = json!("x".repeat(2 << 20));
    let refused = CniClient::new(channel.clone())
        .add(CniRequest {
            protocol: current,
            container_id: "c-huge".into(),
            netns: "/proc/self/ns/net".into(),
            ifname: "eth0".into(),
            config: huge.to_string().into_bytes(),
            ..Default::default()
        })
        .await;
    let status = refused.expect_err("a 2 MiB request was read");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert_eq!(node.allocations(), before);

    // kubelet's probe: `eniflow-agent probe` exits 0 while the agent serves, and 1, naming the
    // socket, once it is gone.
    let socket = node.socket();
    let probe = || {
        Command::new(agent::binary("eniflow-agent"))
            .args(["probe", "--timeout", "3", "--socket", &socket])
            .output()
            .expect("run eniflow-agent probe")
    };
    let serving = probe();
    assert!(
        serving.status.success(),
        "probe of a serving agent failed: {}",
        String::from_utf8_lossy(&serving.stderr)
    );
    node.agent.take().expect("the agent").kill();
    let gone = probe();
    let said = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(gone.status.code(), Some(1), "probe of a dead agent: {said}");
    assert!(said.contains(&socket), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_releases_what_the_runtime_no_longer_knows() {
    require_root();
    let node = Node::start().await;
    let kept = Netns::new("pod");
    let stale = Netns::new("pod");
    assert!(
        node.cni("ADD", "c-kept", Some(&kept), "eth0", &pod_args("kept"))
            .ok
    );
    let gone = node.cni("ADD", "c-stale", Some(&stale), "eth0", &pod_args("stale"));
    assert!(gone.ok);
    let stale_veth = gone.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut config = node.config();
    config["cniVersion"] = json!("1.1.0");
    config["cni.dev/attachments"] = json!([{ "containerID": "c-kept", "ifname": "eth0" }]);
    let gc = node.cni_with("GC", "", String::new(), "", "", &config);
    assert!(gc.ok && gc.json.is_null(), "GC: {}", gc.json);
    assert_eq!(node.allocations(), 1);
    let veths = node.host_veths();
    assert_eq!(veths.len(), 1);
    assert!(!veths.contains(&stale_veth), "GC left the stale pod's veth");
    assert!(
        node.cni("CHECK", "c-kept", Some(&kept), "eth0", &pod_args("kept"))
            .ok
    );
}

/// What the data plane still holds of the pod at `ip` whose host veth was `veth_ifindex`: its
/// pods, veths and pod_stats entries, and its veth's attachment records (one per direction);
/// and, under tcx, its link pins.
fn pod_remains(node: &Node, ip: &str, veth_ifindex: u32) -> Vec<String> {
    let mut left = Vec::new();
    let key = wire(ip);
    for map in [maps::PODS, maps::POD_STATS] {
        if bpftool::dump(&node.map(map))
            .iter()
            .any(|e| bpftool::formatted(e, map)["key"] == key)
        {
            left.push(format!("{map} entry of {ip}"));
        }
    }
    if bpftool::dump(&node.map(maps::VETHS))
        .iter()
        .any(|e| bpftool::formatted(e, maps::VETHS)["key"] == veth_ifindex)
    {
        left.push(format!("veths entry of ifindex {veth_ifindex}"));
    }
    for e in bpftool::dump(&node.map(maps::ATTACHMENTS)) {
        let f = bpftool::formatted(&e, maps::ATTACHMENTS);
        if f["key"]["ifindex"] == veth_ifindex {
            left.push(format!("attachment record {}", f["key"]));
        }
    }
    let links = node.map("").parent().unwrap().join("links");
    for pin in std::fs::read_dir(&links).into_iter().flatten().flatten() {
        let name = pin.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("if{veth_ifindex}_")) {
            left.push(format!("link pin {name}"));
        }
    }
    left
}

/// What the shim prints for an ADD whose configuration is not JSON.
fn not_json(log: &str) -> Value {
    let mut child = Command::new(agent::binary("eniflow-cni"))
        .env_clear()
        .env("ENIFLOW_CNI_LOG", log)
        .env("CNI_COMMAND", "ADD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{not json").unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).expect("a CNI error on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_address_the_node_lost_is_unwired() {
    require_root();
    let node = Node::start_custom(
        Default::default(),
        &[],
        &[
            ("ENIFLOW_RECONCILE_PERIOD", "1"),
            ("ENIFLOW_LOST_GRACE", "2"),
        ],
    )
    .await;
    let pod = Netns::new("pod");
    let add = node.cni("ADD", "c-lost", Some(&pod), "eth0", &pod_args("lost"));
    assert!(add.ok, "{}", add.json);
    let ip = address(&add);
    let veth = add.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(node.pod_entry(&ip).is_some());

    // Someone unassigns the pod's address behind eniflow's back.
    let view = node.lab.emulator.view();
    let eni = view["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["private_ips"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a == ip.as_str()))
        })
        .and_then(|e| e["id"].as_str())
        .expect("the ENI holding the pod's address")
        .to_owned();
    node.lab
        .ec2()
        .unassign_private_ip_addresses()
        .network_interface_id(&eni)
        .private_ip_addresses(&ip)
        .send()
        .await
        .expect("UnassignPrivateIpAddresses");

    // Missing past the grace: the pool forgets it, and the pod's map entry and veth go.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entry = node.pod_entry(&ip);
        let veths = node.host_veths();
        if entry.is_none() && !veths.contains(&veth) && node.allocations() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 20 s: pods entry {entry:?}, veths {veths:?}, {} allocation(s)",
            node.allocations()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The runtime's DEL, whenever it comes, finds nothing to do and succeeds.
    let del = node.cni("DEL", "c-lost", Some(&pod), "eth0", &pod_args("lost"));
    assert!(del.ok, "{}", del.json);
}
