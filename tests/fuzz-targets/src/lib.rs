//! The fuzz targets: each feeds one of eniflow's parsers of untrusted input (what a runtime, a
//! pod's annotations, a file on the node, the API server, IMDS or a pod's packets can put in
//! front of the agent) and checks what the parser promises besides not panicking. The same
//! functions run under libFuzzer (`cargo xtask fuzz`, crate `fuzz/`) and, on stable, over the
//! committed corpus and every crash found so far (`tests/corpus.rs`, in CI).

use std::path::Path;

use eniflow_agent::{
    cni::{branch, request},
    instance::{listed_macs, EniAnswers},
    ipam::{checkpoint, eniconfig},
};
use eniflow_api::{cni_errors, v1::CniRequest};
use eniflow_common::packet;

/// A target: one input, checked; a failed check panics.
pub type Target = fn(&[u8]);

/// Every target by name: the name is its corpus directory and its `fuzz/` binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("cni_request", cni_request),
    ("pod_eni_annotation", pod_eni_annotation),
    ("checkpoint", checkpoint),
    ("vpc_cni_checkpoint", vpc_cni_checkpoint),
    ("eniconfig", eniconfig),
    ("imds_enis", imds_enis),
    ("packet", packet),
];

/// `data` cut at NUL bytes into at most `n` fields; missing ones are empty.
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |b| *b == 0).collect();
    out.resize(n, &[]);
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A CNI request as the shim forwards it: the network configuration (runtimeConfig and GC's
/// attachment lists included), then CNI_ARGS, CNI_IFNAME, CNI_CONTAINERID and CNI_NETNS,
/// NUL-separated. A refusal carries one of the codes the spec gives for bad input.
pub fn cni_request(data: &[u8]) {
    let f = fields(data, 5);
    let cni = CniRequest {
        protocol: eniflow_api::PROTOCOL,
        config: f[0].to_vec(),
        args: text(f[1]),
        ifname: text(f[2]),
        container_id: text(f[3]),
        netns: text(f[4]),
    };
    for needs_container in [true, false] {
        match request::parse(&cni, needs_container) {
            Ok(r) => {
                assert!(r.ifname.len() <= 15 && !r.ifname.contains('/'));
                assert!((576..=9001).contains(&r.mtu));
                assert!(!r.network.is_empty());
                if needs_container {
                    assert!(!r.container_id.is_empty() && !r.ifname.is_empty());
                }
                if let Ok(Some(b)) = branch::from_config(&r.config) {
                    assert!((1..=4094).contains(&b.vlan));
                }
                let _ = request::valid_attachments(&r.config);
            }
            Err(e) => assert!(
                [
                    cni_errors::INCOMPATIBLE_VERSION,
                    cni_errors::INVALID_ENV,
                    cni_errors::DECODE_FAILURE,
                    cni_errors::INVALID_CONFIG,
                ]
                .contains(&e.code),
                "{e}"
            ),
        }
    }
}

/// The VPC resource controller's `vpc.amazonaws.com/pod-eni` annotation, as its text, and the
/// same text reached through a request's runtimeConfig: both give the same answer.
pub fn pod_eni_annotation(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let direct = branch::parse_annotation(text);
    if let Ok(b) = &direct {
        assert!(b.eni_id.starts_with("eni-"));
        assert!((1..=4094).contains(&b.vlan));
        assert!(b.subnet.1 <= 32);
    }
    let one = |key: &str, value: serde_json::Value| {
        serde_json::Value::Object([(key.to_owned(), value)].into_iter().collect())
    };
    let config = one(
        "runtimeConfig",
        one(
            branch::POD_ANNOTATIONS,
            one(branch::ANNOTATION, text.into()),
        ),
    );
    let through = branch::from_config(&config);
    assert_eq!(
        direct.map_err(|e| e.to_string()),
        through
            .map_err(|e| e.to_string())
            .map(|b| b.expect("the annotation is there")),
    );
}

/// eniflow's checkpoint file: what it reads, it writes back the same.
pub fn checkpoint(data: &[u8]) {
    let path = Path::new("/fuzz/ipam.json");
    match checkpoint::decode(path, data) {
        Ok(c) => {
            let again = serde_json::to_vec(&c).expect("a checkpoint serialises");
            assert_eq!(checkpoint::decode(path, &again).expect("reads back"), c);
        }
        Err(e) => assert!(e.to_string().contains("/fuzz/ipam.json"), "{e}"),
    }
}

/// VPC CNI's `ipam.json`, imported when eniflow takes a node over from aws-node.
pub fn vpc_cni_checkpoint(data: &[u8]) {
    let path = Path::new("/fuzz/vpc-cni.json");
    match checkpoint::decode_vpc_cni(path, data) {
        Ok(allocations) => assert!(allocations.iter().all(|a| a.eni.is_empty())),
        Err(e) => assert!(e.to_string().contains("/fuzz/vpc-cni.json"), "{e}"),
    }
}

/// ENIConfigs (a file, or the API server's answer) and the node-label pairs that choose one.
pub fn eniconfig(data: &[u8]) {
    if let Ok(configs) = eniconfig::parse(data) {
        assert!(configs
            .iter()
            .all(|c| !c.name.is_empty() && !c.subnet.is_empty()));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(pairs) = eniconfig::parse_pairs(text) {
            assert!(pairs.keys().all(|k| !k.contains([',', '='])));
        }
    }
}

/// IMDS's answers about the node's ENIs: the `macs/` listing, then each ENI's local-ipv4s,
/// subnet-ipv4-cidr-block, device-number, vpc-ipv4-cidr-blocks and interface-id (NUL-separated;
/// every listed MAC gets the same answers).
pub fn imds_enis(data: &[u8]) {
    let f = fields(data, 6);
    let listing = text(f[0]);
    for mac in listed_macs(&listing) {
        let answers = EniAnswers {
            mac: mac.to_owned(),
            local_ipv4s: text(f[1]),
            subnet_cidr: text(f[2]),
            device_number: text(f[3]),
            vpc_cidrs: text(f[4]),
            interface_id: text(f[5]),
        };
        if let Ok(eni) = answers.parse() {
            assert!(eni.subnet.1 <= 32);
            assert!(eni.vpc_cidrs.iter().all(|c| c.1 <= 32));
        }
    }
}

/// A frame as a pod or the VPC sends it, through the tc programs' own header parser, checked
/// against etherparse wherever etherparse reads a valid IPv4 header: same addresses and
/// protocol, fragments and ICMP errors left to the stack, the same ports.
pub fn packet(data: &[u8]) {
    let ours = packet::ipv4(data);
    let _ = packet::ethernet(data);
    let _ = packet::arp(data);
    let Some(ip_bytes) = data.get(packet::ETH_HLEN..) else {
        assert_eq!(ours, None);
        return;
    };
    if data[12..14] != packet::ETH_P_IP.to_be_bytes() {
        assert_eq!(ours, None, "not IPv4");
        return;
    }
    let Ok(header) = etherparse::Ipv4HeaderSlice::from_slice(ip_bytes) else {
        return;
    };
    let l4 = &ip_bytes[usize::from(header.ihl()) * 4..];
    let fragment = header.more_fragments() || header.fragments_offset().value() != 0;
    let protocol = header.protocol().0;
    let ports = match protocol {
        _ if fragment => Some((0, 0)),
        packet::IPPROTO_TCP | packet::IPPROTO_UDP => l4.get(..4).map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        }),
        packet::IPPROTO_ICMP => match l4.first() {
            None => None,
            Some(0 | 8) => l4.get(4..6).map(|id| {
                let id = u16::from_be_bytes([id[0], id[1]]);
                (id, id)
            }),
            Some(_) => Some((0, 0)),
        },
        _ => Some((0, 0)),
    };
    let Some((sport, dport)) = ports else {
        assert_eq!(ours, None, "the transport header is cut short");
        return;
    };
    let ours = ours.expect("a valid IPv4 header is parsed");
    assert_eq!(ours.saddr.to_ne_bytes(), header.source());
    assert_eq!(ours.daddr.to_ne_bytes(), header.destination());
    assert_eq!(ours.protocol, protocol);
    assert_eq!((ours.sport, ours.dport), (sport, dport));
    let icmp_error = protocol == packet::IPPROTO_ICMP && !matches!(l4.first(), Some(0 | 8));
    assert_eq!(ours.stack_only, fragment || icmp_error);
}
