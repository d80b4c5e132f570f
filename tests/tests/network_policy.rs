//! NETWORK_POLICY_ENFORCING_MODE: the agent tells EKS's network policy agent (a stand-in on its
//! unix socket here) of each pod wired and taken apart, and an ADD the policy agent does not
//! confirm fails and leaves nothing behind.

use eniflow_common::maps;
use eniflow_tests::{
    bpftool,
    cni::{address, pod_args, Answer, PodNode as Node},
    lab::LabSpec,
    netns::Netns,
    network_policy::PolicyAgent,
    require_root,
};

fn refused_and_undone(node: &Node, answer: &Answer, named: &str) {
    assert!(!answer.ok, "accepted: {}", answer.json);
    assert_eq!(answer.json["code"], 103, "{}", answer.json);
    let msg = answer.json["msg"].as_str().unwrap();
    assert!(
        msg.contains(named),
        "the error does not name {named}: {msg}"
    );
    assert!(node.host_veths().is_empty(), "a refused ADD left a veth");
    assert_eq!(node.allocations(), 0, "a refused ADD kept its address");
    assert!(
        bpftool::dump(&node.map(maps::PODS)).is_empty(),
        "a refused ADD left its pods entry"
    );
}

async fn node_with_policy(mode: &str, socket: &str) -> Node {
    let env = [
        ("NETWORK_POLICY_ENFORCING_MODE", mode),
        ("ENIFLOW_NETWORK_POLICY_SOCKET", socket),
    ];
    Node::start_custom(LabSpec::default(), &[], &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_without_a_policy_agent_fails_the_add_and_leaves_nothing() {
    require_root();
    let files = eniflow_tests::agent::PoolFiles::new("np-absent");
    let socket = files.path("npa.sock");
    let node = node_with_policy("strict", &socket).await;
    let pod = Netns::new("pod");
    let answer = node.cni("ADD", "c-np", Some(&pod), "eth0", &pod_args("np"));
    refused_and_undone(&node, &answer, &socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_agent_hears_of_each_pod_added_and_deleted() {
    require_root();
    let files = eniflow_tests::agent::PoolFiles::new("np-standin");
    let socket = files.path("npa.sock");
    let policy = PolicyAgent::start(std::path::Path::new(&socket));
    let node = node_with_policy("standard", &socket).await;
    let pod = Netns::new("pod");
    let added = node.cni("ADD", "c-web", Some(&pod), "eth0", &pod_args("web"));
    assert!(added.ok, "{}", added.json);
    let ip = address(&added);
    assert!(node.pod_entry(&ip).is_some(), "the pod is not in the maps");
    let deleted = node.cni("DEL", "c-web", Some(&pod), "eth0", &pod_args("web"));
    assert!(deleted.ok, "{}", deleted.json);
    let pod_call = |method: &'static str, mode: &str, count: i32| {
        (method, "default".into(), "web".into(), mode.into(), count)
    };
    assert_eq!(
        policy.calls(),
        vec![
            pod_call("EnforceNpToPod", "standard", 1),
            pod_call("DeletePodNp", "", 0),
        ]
    );

    // A policy agent that answers it could not take the pod: the ADD is refused and undone.
    policy.refuse();
    let answer = node.cni("ADD", "c-web2", Some(&pod), "eth0", &pod_args("web2"));
    refused_and_undone(&node, &answer, "could not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_knob_the_policy_agent_is_never_called() {
    require_root();
    let files = eniflow_tests::agent::PoolFiles::new("np-off");
    let socket = files.path("npa.sock");
    let policy = PolicyAgent::start(std::path::Path::new(&socket));
    let node = node_with_policy("none", &socket).await;
    let pod = Netns::new("pod");
    let added = node.cni("ADD", "c-off", Some(&pod), "eth0", &pod_args("off"));
    assert!(added.ok, "{}", added.json);
    let deleted = node.cni("DEL", "c-off", Some(&pod), "eth0", &pod_args("off"));
    assert!(deleted.ok, "{}", deleted.json);
    assert!(policy.calls().is_empty(), "{:?}", policy.calls());
}

/// The policy agent's programs on the pod's veth (a stand-in attached as EKS's attaches its
/// own: priority 1, a final verdict for every packet) see every packet to and from the pod: its
/// denied port is unreachable both ways, VPC traffic eniflow delivers included (delivered
/// straight into the pod, it would skip the veth's hook), and the rest still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_agents_programs_see_every_packet_of_the_pod() {
    use std::{
        net::{TcpListener, TcpStream},
        time::Duration,
    };
    require_root();
    let files = eniflow_tests::agent::PoolFiles::new("np-veth");
    let socket = files.path("npa.sock");
    let _policy = PolicyAgent::start(std::path::Path::new(&socket));
    let node = node_with_policy("standard", &socket).await;
    let pod = Netns::new("pod");
    let added = node.cni("ADD", "c-pol", Some(&pod), "eth0", &pod_args("pol"));
    assert!(added.ok, "{}", added.json);
    let ip = address(&added);
    let host_ifindex = node.pod_entry(&ip).expect("the pod's entry")["host_ifindex"].clone();
    let links: serde_json::Value =
        serde_json::from_str(&node.lab.node.netns.ip(&["-j", "link", "show"])).unwrap();
    let veth = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifindex"] == host_ifindex)
        .and_then(|l| l["ifname"].as_str().map(str::to_owned))
        .expect("the pod's host veth");
    let _programs = eniflow_tests::dataplane::PolicyPrograms::attach(&node.lab.node.netns, &veth);

    let denied = eniflow_lab_common::POLICY_DENIED_PORT;
    let connects = |from: &Netns, to: &str, port: u16| {
        from.within(|| {
            let to = format!("{to}:{port}").parse().unwrap();
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok()
        })
    };
    let listen =
        |ns: &Netns, port: u16| ns.within(|| TcpListener::bind(("0.0.0.0", port)).unwrap());
    let _pod_open = listen(&pod, 8080);
    let _pod_denied = listen(&pod, denied);
    let host = &node.lab.hosts[0];
    assert!(connects(&host.netns, &ip, 8080), "VPC host -> pod:8080");
    assert!(
        !connects(&host.netns, &ip, denied),
        "VPC host -> pod:{denied} got past the veth's policy program"
    );
    let _host_open = listen(&host.netns, 8080);
    let _host_denied = listen(&host.netns, denied);
    assert!(
        connects(&pod, &host.primary_ip, 8080),
        "pod -> VPC host:8080"
    );
    assert!(
        !connects(&pod, &host.primary_ip, denied),
        "pod -> VPC host:{denied} got past the veth's policy program"
    );
}
