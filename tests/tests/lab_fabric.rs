//! The lab itself: specs EC2 would refuse are refused by field, the hypervisor follows ENI
//! attach/detach, the fabric delivers an address only through the ENI that owns it and drops
//! spoofed sources, hosts and nodes reach each other, and nothing outlives the lab.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use eniflow_tests::{
    lab::{Lab, LabSpec, SubnetSpec},
    netns::{receive, Netns},
    require_root,
};

fn addr(text: &str) -> Ipv4Addr {
    text.parse().expect("an IPv4 address")
}

fn has_link(ns: &Netns, ifname: &str) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-j", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["address"].as_str().map(str::to_owned)
}

/// Waits up to a second (the hypervisor's promise) for `f` to hold.
fn within_a_second(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !f() {
        assert!(Instant::now() < deadline, "not within a second: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_naming_the_field() {
    let cases: Vec<(LabSpec, &str)> = vec![
        (
            LabSpec {
                vpc_cidrs: vec!["10.0.0.0/16".into(), "10.0.128.0/20".into()],
                ..Default::default()
            },
            "vpc_cidrs[1]",
        ),
        (
            LabSpec {
                subnets: vec![
                    SubnetSpec {
                        cidr: "10.0.1.0/24".into(),
                        az: "us-west-2a".into(),
                        tags: vec![],
                    },
                    SubnetSpec {
                        cidr: "10.9.1.0/24".into(),
                        az: "us-west-2a".into(),
                        tags: vec![],
                    },
                ],
                ..Default::default()
            },
            "subnets[1].cidr",
        ),
        (
            LabSpec {
                subnets: vec![
                    SubnetSpec {
                        cidr: "10.0.1.0/24".into(),
                        az: "us-west-2a".into(),
                        tags: vec![],
                    },
                    SubnetSpec {
                        cidr: "10.0.1.128/25".into(),
                        az: "us-west-2a".into(),
                        tags: vec![],
                    },
                ],
                ..Default::default()
            },
            "subnets[1].cidr",
        ),
        (
            LabSpec {
                subnets: vec![SubnetSpec {
                    cidr: "10.0.1.0/24".into(),
                    az: "eu-west-1a".into(),
                    tags: vec![],
                }],
                ..Default::default()
            },
            "subnets[0].az",
        ),
        (
            LabSpec {
                node_subnet: 5,
                ..Default::default()
            },
            "node_subnet",
        ),
    ];
    for (spec, field) in cases {
        let err = spec.validate().expect_err(field);
        assert_eq!(err.field, field, "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    require_root();
    let spec = LabSpec {
        instance_type: "m9.huge".into(),
        hosts: false,
        ..Default::default()
    };
    let err = Lab::start(spec)
        .await
        .err()
        .expect("an unknown instance type was accepted");
    assert_eq!(err.field, "instance_type", "{err}");
    assert!(err.message.contains("m9.huge"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisor_plugs_enis_in_on_attach_and_out_on_detach() {
    require_root();
    let lab = Lab::start(LabSpec {
        hosts: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let ec2 = lab.ec2();
    assert!(
        has_link(&lab.node.netns, "eth0").is_some(),
        "the primary ENI is not plugged in"
    );
    let eni = ec2
        .create_network_interface()
        .subnet_id(&lab.subnets[1])
        .send()
        .await
        .unwrap()
        .network_interface
        .unwrap();
    let (eni_id, mac) = (eni.network_interface_id.unwrap(), eni.mac_address.unwrap());
    let attachment = ec2
        .attach_network_interface()
        .network_interface_id(&eni_id)
        .instance_id(&lab.node.id)
        .device_index(1)
        .send()
        .await
        .unwrap()
        .attachment_id
        .unwrap();
    within_a_second("eth1 appears with the ENI's MAC", || {
        has_link(&lab.node.netns, "eth1").as_deref() == Some(mac.as_str())
    });
    ec2.detach_network_interface()
        .attachment_id(attachment)
        .send()
        .await
        .unwrap();
    within_a_second("eth1 disappears", || {
        has_link(&lab.node.netns, "eth1").is_none()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fabric_delivers_an_address_only_through_its_eni_and_drops_spoofed_sources() {
    require_root();
    let lab = Lab::start(LabSpec::default()).await.unwrap();
    let ec2 = lab.ec2();
    let node = &lab.node.netns;
    let host = &lab.hosts[0];
    // ENI B, second in the node's subnet, with its own address on eth1.
    let b = ec2
        .create_network_interface()
        .subnet_id(&lab.subnets[0])
        .send()
        .await
        .unwrap()
        .network_interface
        .unwrap();
    let b_ip = b.private_ip_address.clone().unwrap();
    ec2.attach_network_interface()
        .network_interface_id(b.network_interface_id.unwrap())
        .instance_id(&lab.node.id)
        .device_index(1)
        .send()
        .await
        .unwrap();
    within_a_second("eth1 plugged in", || has_link(node, "eth1").is_some());
    node.ip(&["addr", "add", &format!("{b_ip}/32"), "dev", "eth1"]);

    // A secondary address X on ENI A (the primary ENI), answered by the node.
    let assigned = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&lab.node.primary_eni)
        .secondary_private_ip_address_count(1)
        .send()
        .await
        .unwrap();
    let x = addr(
        assigned.assigned_private_ip_addresses()[0]
            .private_ip_address()
            .unwrap(),
    );
    node.ip(&["addr", "add", &format!("{x}/32"), "dev", "lo"]);

    // host -> X arrives, through eth0 (A) and not eth1 (B).
    let at_node = node.udp_socket(x);
    let (eth0, eth1) = (node.rx_packets("eth0"), node.rx_packets("eth1"));
    host.netns
        .send_udp(addr(&host.primary_ip), at_node.local_addr().unwrap(), 20);
    assert_eq!(
        receive(&at_node, 20).len(),
        20,
        "X is not reachable from the host"
    );
    assert!(
        node.rx_packets("eth0") >= eth0 + 20,
        "X's packets did not come through ENI A"
    );
    assert!(
        node.rx_packets("eth1") < eth1 + 20,
        "X's packets came through ENI B"
    );

    // X -> host through A arrives; through B (whose address X is not) it is dropped.
    let gateway = lab.gateway(0);
    node.run("ping", &["-c", "1", "-W", "1", "-I", "eth1", &gateway]);
    let at_host = host.netns.udp_socket(addr(&host.primary_ip));
    let to_host: SocketAddr = at_host.local_addr().unwrap();
    node.send_udp(x, to_host, 5);
    assert_eq!(
        receive(&at_host, 5).len(),
        5,
        "X -> host via ENI A was not delivered"
    );
    node.ip(&[
        "route",
        "add",
        &format!("{}/32", host.primary_ip),
        "via",
        &gateway,
        "dev",
        "eth1",
        "onlink",
        "src",
        &x.to_string(),
    ]);
    node.send_udp(x, to_host, 5);
    assert_eq!(
        receive(&at_host, 5).len(),
        0,
        "a packet leaving ENI B with ENI A's address was delivered"
    );
    // B's own address through B is fine: the drop above is the source check, not the path.
    node.send_udp(addr(&b_ip), to_host, 5);
    assert_eq!(
        receive(&at_host, 5).len(),
        5,
        "ENI B's own address via ENI B was not delivered"
    );

    // After unassign, X is unreachable (the node still holds it: only the fabric decides).
    ec2.unassign_private_ip_addresses()
        .network_interface_id(&lab.node.primary_eni)
        .private_ip_addresses(x.to_string())
        .send()
        .await
        .unwrap();
    host.netns
        .send_udp(addr(&host.primary_ip), at_node.local_addr().unwrap(), 5);
    assert_eq!(
        receive(&at_node, 5).len(),
        0,
        "an unassigned address is still delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_nodes_reach_each_other_across_subnets() {
    require_root();
    let lab = Lab::start(LabSpec {
        second_node: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let second = lab.second_node.as_ref().unwrap();
    for host in &lab.hosts {
        lab.node
            .netns
            .run("ping", &["-c", "1", "-W", "2", &host.primary_ip]);
        host.netns
            .run("ping", &["-c", "1", "-W", "2", &lab.node.primary_ip]);
    }
    lab.node
        .netns
        .run("ping", &["-c", "1", "-W", "2", &second.primary_ip]);
    second
        .netns
        .run("ping", &["-c", "1", "-W", "2", &lab.hosts[1].primary_ip]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outlives_the_lab() {
    require_root();
    // What a crashed run would have left: a namespace of a process that no longer exists.
    let stale = "efllab-999999999-0";
    let _ = std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .status();
    assert!(
        Path::new("/run/netns").join(stale).exists(),
        "the stale namespace was not planted"
    );
    let lab = Lab::start(LabSpec {
        second_node: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        !Path::new("/run/netns").join(stale).exists(),
        "a crashed run's namespace was not swept"
    );
    // A trunk with a branch: the fabric pins its trunk-port programs and maps.
    let trunk = lab.create_trunk_eni(&lab.node).await;
    lab.create_branch_eni(&trunk, 9, &lab.security_groups).await;
    let fabric_pins = Path::new("/sys/fs/bpf").join(lab.fabric.name());
    let pinned = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    within_a_second("the fabric pins its trunk port's objects", || {
        pinned(&fabric_pins) > 0
    });
    let mut names = vec![
        lab.fabric.name().to_owned(),
        lab.node.netns.name().to_owned(),
    ];
    names.extend(lab.hosts.iter().map(|h| h.netns.name().to_owned()));
    names.extend(lab.second_node.iter().map(|n| n.netns.name().to_owned()));
    let pid = lab.emulator.pid();
    drop(lab);
    for name in names {
        assert!(
            !Path::new("/run/netns").join(&name).exists(),
            "namespace {name} outlived the lab"
        );
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the emulator (pid {pid}) outlived the lab"
    );
    assert!(
        !fabric_pins.exists(),
        "the fabric's pins {} outlived the lab",
        fabric_pins.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunk_port_steers_vlans_to_branch_enis() {
    require_root();
    let lab = Lab::start(LabSpec::default()).await.unwrap();
    let node = &lab.node.netns;
    let host = &lab.hosts[0];
    let host_ip = addr(&host.primary_ip);
    let trunk = lab.create_trunk_eni(&lab.node).await;
    within_a_second("the trunk ENI is plugged in as eth1", || {
        has_link(node, "eth1").is_some()
    });
    let branch = lab.create_branch_eni(&trunk, 7, &lab.security_groups).await;
    let annotation: serde_json::Value =
        serde_json::from_str(&lab.pod_eni_annotation(&[&branch])).unwrap();
    assert_eq!(annotation[0]["eniId"], branch.as_str());
    assert_eq!(annotation[0]["vlanId"], 7);
    let branch_ip = addr(annotation[0]["privateIp"].as_str().unwrap());
    let branch_mac = annotation[0]["ifAddress"].as_str().unwrap().to_owned();

    // The fabric port's MAC, learned as the gateway's on the trunk (untagged, the trunk's own).
    let view = lab.view();
    let trunk_eni = view["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == trunk.as_str())
        .unwrap();
    let trunk_ip = addr(trunk_eni["private_ips"][0].as_str().unwrap());
    let gateway = lab.gateway(0);
    node.ip(&["addr", "add", &format!("{trunk_ip}/32"), "dev", "eth1"]);
    node.run("ping", &["-c", "1", "-W", "1", "-I", "eth1", &gateway]);
    let neighbours: serde_json::Value =
        serde_json::from_str(&node.ip(&["-j", "neigh", "show", "dev", "eth1"])).unwrap();
    let gateway_mac = neighbours
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["dst"] == gateway.as_str())
        .and_then(|n| n["lladdr"].as_str())
        .expect("the gateway's MAC on the trunk")
        .to_owned();

    let at_host = host.netns.udp_socket(host_ip);
    let port = at_host.local_addr().unwrap().port();
    let frame = |vlan: Option<u16>, src: Ipv4Addr| {
        eniflow_tests::raw::UdpFrame {
            dst_mac: eniflow_tests::raw::mac(&gateway_mac),
            src_mac: eniflow_tests::raw::mac(&branch_mac),
            vlan,
            src,
            dst: host_ip,
            src_port: 4000,
            dst_port: port,
            payload: b"from a branch pod".to_vec(),
        }
        .bytes()
    };
    let eth1 = node.ifindex("eth1");
    node.within(|| eniflow_tests::raw::send(eth1, &frame(Some(7), branch_ip)));
    let got = receive(&at_host, 1);
    assert_eq!(
        got.len(),
        1,
        "a frame tagged 7 from the branch ENI's address did not arrive"
    );
    assert_eq!(got[0].ip(), branch_ip);
    for (vlan, src, what) in [
        (Some(8), branch_ip, "the branch address on another VLAN"),
        (
            Some(7),
            trunk_ip,
            "the trunk's address tagged with the branch's VLAN",
        ),
        (None, branch_ip, "the branch address untagged"),
    ] {
        node.within(|| eniflow_tests::raw::send(eth1, &frame(vlan, src)));
        assert!(
            receive(&at_host, 1).is_empty(),
            "the fabric delivered {what}"
        );
    }

    // Toward the branch address: tagged 7, addressed to the branch ENI's MAC.
    let mut capture = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node.name()))
        .args([
            "timeout",
            "10",
            "tcpdump",
            "-i",
            "eth1",
            "-e",
            "-nn",
            "-l",
            "-c",
            "1",
            "udp and vlan 7",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let mut stderr = std::io::BufReader::new(capture.stderr.take().unwrap());
    // tcpdump says "listening on" once its capture is open; other lines may come first.
    let mut said = String::new();
    while !said.contains("listening on") {
        let n = std::io::BufRead::read_line(&mut stderr, &mut said).unwrap();
        assert!(n > 0, "tcpdump exited: {said}");
    }
    host.netns
        .send_udp(host_ip, SocketAddr::from((branch_ip, 4000)), 3);
    let out = capture.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("vlan 7"),
        "no frame tagged 7 reached the trunk: {seen:?}"
    );
    assert!(
        seen.contains(&format!("> {branch_mac}")),
        "the frame was not addressed to the branch ENI: {seen}"
    );
}
