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
    let mut child = Command::new(agent::binary("eniflow-cni"))
        .env_clear()
        .env("ENIFLOW_CNI_LOG", node.files.path("cni.log"))
        .env("CNI_COMMAND", "ADD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{not json").unwrap();
    let out = child.wait_with_output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).expect("a CNI error on stdout");
    assert_eq!(json["code"], 6);

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
