//! A lab node wired as aws-node (Amazon VPC CNI 1.18–1.22 with iptables connmark chains, or 1.23
//! with its nftables connmark table; strict security-group mode) wires it, before eniflow starts there: pods on the primary ENI, on a
//! secondary ENI and on a branch ENI, with VPC CNI's veth names, pod side, host routes, per-pod
//! `ip rule`s, per-ENI tables, the branch pod's VLAN device, table and rules, its node rules
//! and chains, and `/var/run/aws-node/ipam.json`. Written from VPC CNI's behaviour
//! (`../shared/notes/reference-vpc-cni.md` and its sources), not from eniflow's code.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::NetworkInterface;
use serde_json::{json, Value};

use crate::{cni::PodNode, lab::Lab, netns::Netns};

/// Where a pod's address comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Primary,
    Secondary,
    Branch { vlan: u16 },
}

/// A pod aws-node wired.
pub struct Pod {
    pub name: String,
    pub container: String,
    pub netns: Netns,
    pub ip: String,
    pub host_veth: String,
    pub kind: Kind,
}

/// VPC CNI's host veth name: prefix + the first 11 hex digits of sha1("namespace.name").
pub fn veth_name(prefix: &str, namespace: &str, name: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(format!("{namespace}.{name}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

async fn describe(lab: &Lab, eni: &str) -> NetworkInterface {
    lab.ec2()
        .describe_network_interfaces()
        .network_interface_ids(eni)
        .send()
        .await
        .expect("DescribeNetworkInterfaces")
        .network_interfaces()[0]
        .clone()
}

fn secondary_addresses(eni: &NetworkInterface) -> Vec<String> {
    eni.private_ip_addresses()
        .iter()
        .filter(|a| a.primary() != Some(true))
        .filter_map(|a| a.private_ip_address().map(str::to_owned))
        .collect()
}

fn wait_for_link(node: &Netns, ifname: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while try_link(node, ifname).is_none() {
        assert!(
            Instant::now() < deadline,
            "{ifname} never appeared on the node"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn subnet_of(lab: &Lab) -> (String, String, u8) {
    let cidr = &lab.spec.subnets[lab.spec.node_subnet].cidr;
    let (_, len) = cidr.split_once('/').unwrap();
    (
        cidr.clone(),
        lab.gateway(lab.spec.node_subnet),
        len.parse().unwrap(),
    )
}

/// `ip -n <ns> <line>`, the line split at spaces (no argument here has one).
fn ip(ns: &Netns, line: &str) {
    ns.ip(&line.split_whitespace().collect::<Vec<_>>());
}

/// VPC CNI's iptables rules, as iptables-restore reads them: its SNAT chain, its connmark chain
/// unless 1.23 put that in nftables (`nft_connmark`), and the mangle rules that keep the
/// connmark.
fn chains(primary: &str, vpc: &str, nft_connmark: bool) -> String {
    let connmark = if nft_connmark {
        String::new()
    } else {
        format!(
            r#":AWS-CONNMARK-CHAIN-0 - [0:0]
-A PREROUTING -i eni+ -m comment --comment "AWS, outbound connections" -j AWS-CONNMARK-CHAIN-0
-A PREROUTING -m comment --comment "AWS, CONNMARK" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80
-A AWS-CONNMARK-CHAIN-0 -d {vpc} -m comment --comment "AWS CONNMARK CHAIN, VPC CIDR" -j RETURN
-A AWS-CONNMARK-CHAIN-0 -m comment --comment "AWS, CONNMARK" -j CONNMARK --set-xmark 0x80/0x80
"#
        )
    };
    format!(
        r#"*nat
:AWS-SNAT-CHAIN-0 - [0:0]
-A POSTROUTING -m comment --comment "AWS SNAT CHAIN" -j AWS-SNAT-CHAIN-0
-A AWS-SNAT-CHAIN-0 -d {vpc} -m comment --comment "AWS SNAT CHAIN" -j RETURN
-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment "AWS, SNAT" -m addrtype ! --dst-type LOCAL -j SNAT --to-source {primary} --random-fully
{connmark}COMMIT
*mangle
-A PREROUTING -i eth0 -m comment --comment "AWS, primary ENI" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80
-A PREROUTING -i eni+ -m comment --comment "AWS, primary ENI" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80
-A PREROUTING -i vlan+ -m comment --comment "AWS, primary ENI" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80
COMMIT
"#
    )
}

/// VPC CNI 1.23's connmark table on hosts whose iptables is the nftables backend, as `nft -f`
/// reads it (VPC CNI writes the same over netlink). A node left `inconsistent` also has a chain
/// of someone else's in it.
fn nft_connmark(vpc: &str, inconsistent: bool) -> String {
    let foreign = if inconsistent {
        "    chain someone-elses {\n    }\n"
    } else {
        ""
    };
    format!(
        r#"table ip aws-cni {{
    chain nat-prerouting {{
        type nat hook prerouting priority -90; policy accept;
        fib daddr type local return
        iifname "eni*" counter jump snat-mark
        counter meta mark set ct mark and 0x80
    }}
    chain snat-mark {{
        counter ip daddr {vpc} return
        counter ct mark set ct mark or 0x80
    }}
{foreign}}}
"#
    )
}

/// Which VPC CNI wired the node, and how consistently.
#[derive(Clone, Copy, Default)]
pub struct Wiring {
    /// VPC CNI 1.23 on an nftables host: its connmark rules in `table ip aws-cni`, not in
    /// `AWS-CONNMARK-CHAIN-0`.
    pub nft_connmark: bool,
    /// VPC CNI's state also holds a rule for an address no pod has (`STRAY_RULE_ADDRESS`), a
    /// checkpoint entry, with its rule, whose veth is gone, and (with `nft_connmark`) a chain
    /// in its table that is not its own.
    pub inconsistent: bool,
}

/// What aws-node's ipamd sets up for the node: forwarding, its connmark rule, strict mode's
/// move of the local rule, and its SNAT and connmark chains (or table).
fn node_wiring(lab: &Lab, wiring: Wiring) {
    let node = &lab.node.netns;
    node.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    node.run("sysctl", &["-qw", "net.ipv4.conf.eth0.rp_filter=2"]);
    ip(node, "rule add fwmark 0x80/0x80 lookup main priority 1024");
    ip(node, "rule add priority 20 lookup local");
    ip(node, "rule del priority 0 lookup local");
    let vpc = &lab.spec.vpc_cidrs[0];
    let rules = chains(&lab.node.primary_ip, vpc, wiring.nft_connmark);
    let path = std::env::temp_dir().join(crate::unique_name("aws-chains"));
    std::fs::write(&path, rules).unwrap();
    node.run(
        "iptables-restore",
        &["--noflush", &path.display().to_string()],
    );
    if wiring.nft_connmark {
        std::fs::write(&path, nft_connmark(vpc, wiring.inconsistent)).unwrap();
        node.run("nft", &["-f", &path.display().to_string()]);
    }
    let _ = std::fs::remove_file(&path);
}

/// A non-primary ENI at `device` as ipamd sets it up: its address with the subnet's prefix,
/// the kernel's prefix route moved to table device + 1 as a gateway route and a default route,
/// and (not on the trunk) the `from <ENI address>` rule.
fn eni_wiring(lab: &Lab, device: u32, address: &str, trunk: bool) {
    let node = &lab.node.netns;
    let (eth, table) = (format!("eth{device}"), device + 1);
    let (cidr, gw, len) = subnet_of(lab);
    wait_for_link(node, &eth);
    node.run(
        "sysctl",
        &["-qw", &format!("net.ipv4.conf.{eth}.rp_filter=2")],
    );
    ip(node, &format!("link set {eth} up"));
    ip(node, &format!("addr add {address}/{len} dev {eth}"));
    ip(node, &format!("route del {cidr} dev {eth} table main"));
    ip(
        node,
        &format!("route replace {gw}/32 dev {eth} scope link table {table}"),
    );
    ip(
        node,
        &format!("route replace default via {gw} dev {eth} table {table}"),
    );
    if !trunk {
        ip(
            node,
            &format!("rule add from {address} lookup {table} priority 32765"),
        );
    }
}

/// VPC CNI's pod side of a veth pair (`host_veth` on `node`, eth0 in `pod`): the pod's address
/// as /32, the link route to 169.254.1.1 and the default route by it, and a permanent
/// neighbour entry for 169.254.1.1 with the host veth's MAC.
pub fn veth_and_pod_side(node: &Netns, pod: &Netns, host_veth: &str, addr: &str) {
    node.add_veth(host_veth, pod, "eth0");
    ip(node, &format!("link set {host_veth} up"));
    let links: Value =
        serde_json::from_str(&node.ip(&["-j", "link", "show", "dev", host_veth])).unwrap();
    let host_mac = links[0]["address"].as_str().unwrap().to_owned();
    ip(pod, "link set eth0 up");
    ip(pod, "route replace 169.254.1.1/32 dev eth0 scope link");
    ip(pod, "route add default via 169.254.1.1 dev eth0");
    ip(pod, &format!("addr add {addr}/32 dev eth0"));
    ip(
        pod,
        &format!("neigh add 169.254.1.1 lladdr {host_mac} dev eth0 nud permanent"),
    );
}

/// Whether the kernel makes VLAN devices (VPC CNI's branch pods need them).
pub fn vlan_devices_supported(node: &Netns) -> bool {
    let probe = "eflvlanprobe";
    let made = crate::sh::try_ip(&[
        "-n",
        node.name(),
        "link",
        "add",
        "link",
        "lo",
        "name",
        probe,
        "type",
        "vlan",
        "id",
        "9",
    ])
    .is_some();
    if made {
        ip(node, &format!("link del {probe}"));
    }
    made
}

/// A pod on an address of the pool: the host route and rules 512 (and 1536 off the primary).
fn pool_pod(lab: &Lab, pod: &Pod, table: Option<u32>) {
    let node = &lab.node.netns;
    let (addr, veth) = (&pod.ip, &pod.host_veth);
    veth_and_pod_side(node, &pod.netns, veth, addr);
    ip(
        node,
        &format!("route replace {addr}/32 dev {veth} scope link"),
    );
    ip(
        node,
        &format!("rule add to {addr}/32 lookup main priority 512"),
    );
    if let Some(table) = table {
        ip(
            node,
            &format!("rule add from {addr}/32 lookup {table} priority 1536"),
        );
    }
}

/// A strict-mode branch pod: `vlan.eth.<vlan>` on the trunk with the branch ENI's MAC, table
/// vlan + 100, the pod's route there, `iif` rules for the device and the veth.
fn branch_pod(lab: &Lab, pod: &Pod, trunk_eth: &str, vlan: u16, mac: &str) {
    let node = &lab.node.netns;
    let (addr, veth) = (&pod.ip, &pod.host_veth);
    let (device, table) = (format!("vlan.eth.{vlan}"), u32::from(vlan) + 100);
    let (_, gw, _) = subnet_of(lab);
    ip(
        node,
        &format!("link add link {trunk_eth} name {device} address {mac} type vlan id {vlan}"),
    );
    ip(node, &format!("link set {device} up"));
    ip(
        node,
        &format!("route replace {gw}/32 dev {device} scope link table {table}"),
    );
    ip(
        node,
        &format!("route replace default via {gw} dev {device} table {table}"),
    );
    veth_and_pod_side(node, &pod.netns, veth, addr);
    ip(
        node,
        &format!("route replace {addr}/32 dev {veth} scope link table {table}"),
    );
    ip(
        node,
        &format!("rule add iif {device} lookup {table} priority 10"),
    );
    ip(
        node,
        &format!("rule add iif {veth} lookup {table} priority 10"),
    );
}

/// VPC CNI's checkpoint of the pool's pods (branch pods are not in it).
pub fn checkpoint(pods: &[&Pod]) -> Value {
    let allocations: Vec<Value> = pods
        .iter()
        .filter(|p| !matches!(p.kind, Kind::Branch { .. }))
        .map(|p| {
            json!({
                "networkName": "aws-cni",
                "containerID": p.container,
                "ifName": "eth0",
                "ipv4": p.ip,
                "allocationTimestamp": 1_733_000_000_000_000_000u64,
                "metadata": {"k8sPodNamespace": "default", "k8sPodName": p.name, "interfacesCount": 1},
            })
        })
        .collect();
    json!({"version": "vpc-cni-ipam/1", "allocations": allocations})
}

/// The lab node as aws-node left it, with eniflow not yet started.
pub struct VpcCniNode {
    pub node: PodNode,
    pub pods: Vec<Pod>,
    /// The address of the checkpoint entry without a veth (inconsistent nodes).
    pub ghost_ip: String,
}

impl VpcCniNode {
    /// EC2 as ipamd and the resource controller left it (two secondary addresses on the
    /// primary ENI, a secondary ENI with two, a trunk and one branch ENI on VLAN 5), then the
    /// node and one pod of each kind wired VPC CNI's way.
    ///
    pub async fn start(
        lab: Lab,
        extra: &[&str],
        env: &[(&str, &str)],
        wiring: Wiring,
    ) -> VpcCniNode {
        let ec2 = lab.ec2();
        ec2.assign_private_ip_addresses()
            .network_interface_id(&lab.node.primary_eni)
            .secondary_private_ip_address_count(2)
            .send()
            .await
            .expect("AssignPrivateIpAddresses");
        let on_primary = secondary_addresses(&describe(&lab, &lab.node.primary_eni).await);
        let subnet = &lab.subnets[lab.spec.node_subnet];
        let secondary = ec2
            .create_network_interface()
            .subnet_id(subnet)
            .groups(&lab.security_groups[0])
            .description(format!("aws-K8S-{}", lab.node.id))
            .secondary_private_ip_address_count(2)
            .send()
            .await
            .expect("CreateNetworkInterface")
            .network_interface
            .and_then(|n| n.network_interface_id)
            .expect("an ENI id");
        ec2.attach_network_interface()
            .network_interface_id(&secondary)
            .instance_id(&lab.node.id)
            .device_index(1)
            .send()
            .await
            .expect("AttachNetworkInterface");
        let described = describe(&lab, &secondary).await;
        let on_secondary = secondary_addresses(&described);
        let secondary_primary = described.private_ip_address().unwrap().to_owned();
        let trunk = lab.create_trunk_eni(&lab.node).await;
        let trunk_primary = describe(&lab, &trunk)
            .await
            .private_ip_address()
            .unwrap()
            .to_owned();
        let vlan = 5u16;
        let branch = lab
            .create_branch_eni(&trunk, i32::from(vlan), &lab.security_groups)
            .await;
        let branch_eni = describe(&lab, &branch).await;

        node_wiring(&lab, wiring);
        eni_wiring(&lab, 1, &secondary_primary, false);
        eni_wiring(&lab, 2, &trunk_primary, true);
        let pod = |name: &str, ip: &str, kind: Kind| {
            let prefix = if matches!(kind, Kind::Branch { .. }) {
                "vlan"
            } else {
                "eni"
            };
            Pod {
                name: name.to_owned(),
                container: format!("aws-{name}"),
                netns: Netns::new("vpccni"),
                ip: ip.to_owned(),
                host_veth: veth_name(prefix, "default", name),
                kind,
            }
        };
        let mut pods = vec![
            pod("on-primary", &on_primary[0], Kind::Primary),
            pod("on-secondary", &on_secondary[0], Kind::Secondary),
        ];
        pool_pod(&lab, &pods[0], None);
        pool_pod(&lab, &pods[1], Some(2));
        if vlan_devices_supported(&lab.node.netns) {
            let branch = pod(
                "on-branch",
                branch_eni.private_ip_address().unwrap(),
                Kind::Branch { vlan },
            );
            branch_pod(
                &lab,
                &branch,
                "eth2",
                vlan,
                branch_eni.mac_address().unwrap(),
            );
            pods.push(branch);
        } else {
            eprintln!(
                "this kernel has no 802.1Q devices (CONFIG_VLAN_8021Q): VPC CNI's branch pod (a vlan.eth.<id> device) cannot be wired here, so the node has none"
            );
        }
        let ghost = pod("ghost", &on_primary[1], Kind::Primary);
        let mut recorded: Vec<&Pod> = pods.iter().collect();
        if wiring.inconsistent {
            let node = &lab.node.netns;
            for addr in [STRAY_RULE_ADDRESS, ghost.ip.as_str()] {
                ip(
                    node,
                    &format!("rule add to {addr}/32 lookup main priority 512"),
                );
            }
            recorded.push(&ghost);
        }
        let node = PodNode::prepare(lab, extra, env);
        // Where the agent's `--vpc-cni-checkpoint` points (`PoolFiles::args`).
        let checkpoint = node.files.path("aws-node-ipam.json");
        std::fs::write(checkpoint, format!("{}\n", self::checkpoint(&recorded))).unwrap();
        // aws-node's conflist, which sorts before eniflow's.
        std::fs::create_dir_all(node.files.cni_conf_dir()).unwrap();
        let conflist = json!({"cniVersion": "0.4.0", "name": "aws-cni", "disableCheck": true,
            "plugins": [{"type": "aws-cni", "vethPrefix": "eni", "mtu": "9001"},
                        {"type": "egress-cni"}, {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]});
        std::fs::write(aws_conflist(&node), format!("{conflist:#}\n")).unwrap();
        VpcCniNode {
            ghost_ip: ghost.ip.clone(),
            node,
            pods,
        }
    }

    pub fn pod(&self, kind: fn(&Kind) -> bool) -> &Pod {
        self.pods
            .iter()
            .find(|p| kind(&p.kind))
            .expect("a pod of that kind")
    }
}

/// Where aws-node's conflist is on the node.
pub fn aws_conflist(node: &PodNode) -> String {
    format!("{}/10-aws.conflist", node.files.cni_conf_dir())
}

/// The link `ifname` of `node`, if it is there.
pub fn try_link(node: &Netns, ifname: &str) -> Option<String> {
    crate::sh::try_ip(&["-n", node.name(), "link", "show", ifname])
}

/// An address of the node's subnet that no pod has, in a rule of VPC CNI's shape.
pub const STRAY_RULE_ADDRESS: &str = "10.0.1.250";

/// `ip rule` of the node as (priority, the rest) lines.
pub fn rules(node: &Netns) -> Vec<String> {
    node.ip(&["rule", "show"])
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A node's rules are the kernel's defaults: local at 0, main at 32766, default at 32767.
pub const DEFAULT_RULES: [&str; 3] = [
    "0:\tfrom all lookup local",
    "32766:\tfrom all lookup main",
    "32767:\tfrom all lookup default",
];

/// A TCP echo server on a remote host: each connection gets back what it sends.
pub fn echo_server(host: &Netns, addr: &str) -> std::net::SocketAddr {
    let addr: std::net::Ipv4Addr = addr.parse().unwrap();
    let listener = host.within(|| std::net::TcpListener::bind((addr, 0)).expect("bind"));
    let bound = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut line = String::new();
                use std::io::{BufRead, Write};
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if writer.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    bound
}

/// A long-lived connection from a pod (its socket lives in the pod's namespace).
pub struct Connection {
    stream: std::net::TcpStream,
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl Connection {
    pub fn open(pod: &Netns, to: std::net::SocketAddr) -> Connection {
        let stream = pod.within(|| {
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect")
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let reader = std::io::BufReader::new(stream.try_clone().unwrap());
        Connection { stream, reader }
    }

    /// Whether a line sent comes back on the same connection.
    pub fn echoes(&mut self, text: &str) -> bool {
        use std::io::{BufRead, Write};
        if self
            .stream
            .write_all(format!("{text}\n").as_bytes())
            .is_err()
        {
            return false;
        }
        let mut line = String::new();
        self.reader.read_line(&mut line).is_ok() && line.trim_end() == text
    }
}

/// Pings every 10 ms from a pod, for `count` pings, in the background.
pub struct Pinger(std::process::Child);

impl Pinger {
    pub fn start(pod: &Netns, to: &str, count: u32) -> Pinger {
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", pod.path()))
            .args([
                "ping",
                "-q",
                "-n",
                "-i",
                "0.01",
                "-W",
                "1",
                "-c",
                &count.to_string(),
                to,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ping");
        Pinger(child)
    }

    /// (sent, answered) once it is done.
    pub fn finish(self) -> (u32, u32) {
        let out = self.0.wait_with_output().expect("ping ran");
        let text = String::from_utf8_lossy(&out.stdout);
        let summary = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
        let number = |word: &str| -> u32 {
            let words: Vec<&str> = summary
                .split([' ', ','])
                .filter(|w| !w.is_empty())
                .collect();
            let at = words.iter().position(|w| w.starts_with(word)).unwrap();
            words[at - 1].parse().unwrap()
        };
        (number("packets"), number("received"))
    }
}
