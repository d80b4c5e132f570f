//! What Amazon VPC CNI leaves on a node, as eniflow recognises it: its `ip rule`s by priority and
//! exact selectors, its per-ENI and per-VLAN route tables, its `vlan.eth.<id>` devices, its
//! iptables chains and its nftables connmark table. `takeover` moves its pods onto eniflow's maps and then removes what served
//! them; `handback` writes it back for aws-node. Anything of another shape is not VPC CNI's and
//! is left alone.

pub mod chains;
pub mod handback;
pub mod nft_connmark;
pub mod takeover;

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::{
    packet_route::{
        link::{InfoData, InfoKind, InfoVlan, LinkAttribute, LinkInfo},
        route::{RouteAddress, RouteAttribute, RouteMessage},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
    Handle, IpVersion, RouteMessageBuilder,
};

/// `to <pod>/32 lookup main`: every pod.
pub const TO_POD_PRIORITY: u32 = 512;
/// `from <pod>/32 lookup <ENI table>`: pods on a secondary ENI (and standard-mode branch pods).
pub const FROM_POD_PRIORITY: u32 = 1536;
/// `iif <vlan device or host veth> lookup <VLAN table>`: strict-mode branch pods.
pub const BRANCH_PRIORITY: u32 = 10;
/// `fwmark 0x80/0x80 lookup main`: connections marked by its connmark chains leave by main.
pub const CONNMARK_PRIORITY: u32 = 1024;
pub const CONNMARK: u32 = 0x80;
/// `from <ENI primary>/32 lookup <ENI table>` (v1.20 and later).
pub const FROM_ENI_PRIORITY: u32 = 32765;
/// Where strict mode moves the `lookup local` rule (from 0), so branch rules come first.
pub const MOVED_LOCAL_PRIORITY: u32 = 20;
/// A VLAN device's table is its VLAN id + this.
pub const VLAN_TABLE_BASE: u32 = 100;
pub const VLAN_DEVICE_PREFIX: &str = "vlan.eth.";
/// Strict mode's host veth prefix for branch pods (`eni` for the rest).
pub const BRANCH_VETH_PREFIX: &str = "vlan";

pub const MAIN_TABLE: u32 = 254;
pub const LOCAL_TABLE: u32 = 255;

/// One of VPC CNI's rules, by what it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleKind {
    ToPod(Ipv4Addr),
    FromPod(Ipv4Addr, u32),
    Iif(String, u32),
    Connmark,
    FromEni(Ipv4Addr, u32),
    MovedLocal,
}

impl RuleKind {
    /// The table it looks up.
    pub fn table(&self) -> u32 {
        match self {
            RuleKind::ToPod(_) | RuleKind::Connmark => MAIN_TABLE,
            RuleKind::FromPod(_, t) | RuleKind::Iif(_, t) | RuleKind::FromEni(_, t) => *t,
            RuleKind::MovedLocal => LOCAL_TABLE,
        }
    }
}

impl std::fmt::Display for RuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleKind::ToPod(a) => write!(f, "rule {TO_POD_PRIORITY}: to {a} lookup main"),
            RuleKind::FromPod(a, t) => write!(f, "rule {FROM_POD_PRIORITY}: from {a} lookup {t}"),
            RuleKind::Iif(i, t) => write!(f, "rule {BRANCH_PRIORITY}: iif {i} lookup {t}"),
            RuleKind::Connmark => write!(
                f,
                "rule {CONNMARK_PRIORITY}: fwmark {CONNMARK:#x}/{CONNMARK:#x} lookup main"
            ),
            RuleKind::FromEni(a, t) => write!(f, "rule {FROM_ENI_PRIORITY}: from {a} lookup {t}"),
            RuleKind::MovedLocal => write!(f, "rule {MOVED_LOCAL_PRIORITY}: lookup local"),
        }
    }
}

/// A rule as the kernel holds it, and what it is if it is VPC CNI's.
#[derive(Clone, Debug)]
pub struct Rule {
    pub priority: u32,
    pub table: u32,
    pub kind: Option<RuleKind>,
    pub message: RuleMessage,
}

/// The selectors of a rule: VPC CNI's use exactly one each (none for the moved local rule).
#[derive(Default)]
struct Selectors {
    to: Option<(Ipv4Addr, u8)>,
    from: Option<(Ipv4Addr, u8)>,
    iif: Option<String>,
    fwmark: Option<(u32, u32)>,
    other: bool,
}

fn classify(priority: u32, table: u32, s: &Selectors) -> Option<RuleKind> {
    if s.other {
        return None;
    }
    let host = |p: Option<(Ipv4Addr, u8)>| p.filter(|(_, len)| *len == 32).map(|(a, _)| a);
    let kind = match (priority, s.to, s.from, &s.iif, s.fwmark) {
        (TO_POD_PRIORITY, Some(_), None, None, None) if table == MAIN_TABLE => {
            RuleKind::ToPod(host(s.to)?)
        }
        (FROM_POD_PRIORITY, None, Some(_), None, None) if table != MAIN_TABLE => {
            RuleKind::FromPod(host(s.from)?, table)
        }
        (BRANCH_PRIORITY, None, None, Some(iif), None) => RuleKind::Iif(iif.clone(), table),
        (CONNMARK_PRIORITY, None, None, None, Some((CONNMARK, CONNMARK)))
            if table == MAIN_TABLE =>
        {
            RuleKind::Connmark
        }
        (FROM_ENI_PRIORITY, None, Some(_), None, None) if table != MAIN_TABLE => {
            RuleKind::FromEni(host(s.from)?, table)
        }
        (MOVED_LOCAL_PRIORITY, None, None, None, None) if table == LOCAL_TABLE => {
            RuleKind::MovedLocal
        }
        _ => return None,
    };
    Some(kind)
}

fn v4(addr: &IpAddr) -> Option<Ipv4Addr> {
    match addr {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    }
}

impl Rule {
    fn from_message(message: RuleMessage) -> Option<Rule> {
        if message.header.action != RuleAction::ToTable {
            return None;
        }
        let mut table = u32::from(message.header.table);
        let mut priority = 0;
        let mut s = Selectors {
            // TOS and inverted rules are never VPC CNI's.
            other: message.header.tos != 0 || !message.header.flags.is_empty(),
            ..Selectors::default()
        };
        let (mut mark, mut mask) = (None, None);
        for a in &message.attributes {
            match a {
                RuleAttribute::Table(t) => table = *t,
                RuleAttribute::Priority(p) => priority = *p,
                RuleAttribute::Destination(d) => s.to = v4(d).map(|a| (a, message.header.dst_len)),
                RuleAttribute::Source(d) => s.from = v4(d).map(|a| (a, message.header.src_len)),
                RuleAttribute::Iifname(i) => s.iif = Some(i.clone()),
                RuleAttribute::FwMark(m) => mark = Some(*m),
                RuleAttribute::FwMask(m) => mask = Some(*m),
                RuleAttribute::Protocol(_) | RuleAttribute::Other(_) => {}
                // -1: not set (the kernel reports it either way).
                RuleAttribute::SuppressPrefixLen(u32::MAX)
                | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
                _ => s.other = true,
            }
        }
        if let Some(mark) = mark.filter(|m| *m != 0) {
            s.fwmark = Some((mark, mask.unwrap_or(u32::MAX)));
        }
        Some(Rule {
            priority,
            table,
            kind: classify(priority, table, &s),
            message,
        })
    }
}

/// Every IPv4 rule of the namespace.
pub async fn rules(nl: &Handle) -> Result<Vec<Rule>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut dump = nl.rule().get(IpVersion::V4).execute();
    while let Some(msg) = dump.try_next().await? {
        out.extend(Rule::from_message(msg));
    }
    Ok(out)
}

/// A route as the kernel holds it.
#[derive(Clone, Debug)]
pub struct Route {
    pub table: u32,
    /// None: the default route.
    pub destination: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub message: RouteMessage,
}

/// Every IPv4 unicast route of every table.
pub async fn routes(nl: &Handle) -> Result<Vec<Route>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut dump = nl
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(message) = dump.try_next().await? {
        let mut route = Route {
            table: u32::from(message.header.table),
            destination: None,
            gateway: None,
            oif: None,
            message: message.clone(),
        };
        for a in &message.attributes {
            match a {
                RouteAttribute::Table(t) => route.table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                    route.destination = Some((*d, message.header.destination_prefix_length))
                }
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(*g),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                _ => {}
            }
        }
        out.push(route);
    }
    Ok(out)
}

/// A `vlan.eth.<id>` device of VPC CNI's.
#[derive(Clone, Debug)]
pub struct VlanDevice {
    pub name: String,
    pub ifindex: u32,
    pub vlan: u16,
    pub parent: u32,
    pub mac: [u8; 6],
}

impl VlanDevice {
    pub fn table(&self) -> u32 {
        u32::from(self.vlan) + VLAN_TABLE_BASE
    }
}

/// The VLAN devices named as VPC CNI names them whose VLAN id matches their name.
pub async fn vlan_devices(nl: &Handle) -> Result<Vec<VlanDevice>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut dump = nl.link().get().execute();
    while let Some(msg) = dump.try_next().await? {
        let (mut name, mut vlan, mut parent, mut mac) = (None, None, None, None);
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Link(p) => parent = Some(*p),
                LinkAttribute::Address(m) if m.len() == 6 => {
                    mac = Some([m[0], m[1], m[2], m[3], m[4], m[5]])
                }
                LinkAttribute::LinkInfo(infos) => {
                    let is_vlan = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vlan)));
                    for info in infos {
                        if let (true, LinkInfo::Data(InfoData::Vlan(data))) = (is_vlan, info) {
                            vlan = data.iter().find_map(|d| match d {
                                InfoVlan::Id(id) => Some(*id),
                                _ => None,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        let (Some(name), Some(vlan), Some(parent), Some(mac)) = (name, vlan, parent, mac) else {
            continue;
        };
        if name.strip_prefix(VLAN_DEVICE_PREFIX) == Some(vlan.to_string().as_str()) {
            out.push(VlanDevice {
                name,
                ifindex: msg.header.index,
                vlan,
                parent,
                mac,
            });
        }
    }
    Ok(out)
}

/// A subnet whose gateway (its base + 1, as in EC2) is `gateway` and that holds `addr`: the
/// narrowest such (a branch ENI's subnet is not on the node; only its gateway is used).
pub fn subnet_of_gateway(addr: Ipv4Addr, gateway: Ipv4Addr) -> Option<(Ipv4Addr, u8)> {
    (1..=30u8).rev().find_map(|len| {
        let mask = u32::MAX << (32 - len);
        let base = u32::from(addr) & mask;
        (base + 1 == u32::from(gateway)).then(|| (Ipv4Addr::from(base), len))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(f: impl FnOnce(&mut Selectors)) -> Selectors {
        let mut s = Selectors::default();
        f(&mut s);
        s
    }

    #[test]
    fn rules_are_recognised_by_priority_and_exact_selectors() {
        let pod = Ipv4Addr::new(10, 0, 1, 7);
        let to = sel(|s| s.to = Some((pod, 32)));
        assert_eq!(classify(512, MAIN_TABLE, &to), Some(RuleKind::ToPod(pod)));
        // Another table, priority, prefix or one more selector: not VPC CNI's.
        assert_eq!(classify(512, 3, &to), None);
        assert_eq!(classify(513, MAIN_TABLE, &to), None);
        assert_eq!(
            classify(512, MAIN_TABLE, &sel(|s| s.to = Some((pod, 24)))),
            None
        );
        let mut more = sel(|s| s.to = Some((pod, 32)));
        more.iif = Some("eth0".into());
        assert_eq!(classify(512, MAIN_TABLE, &more), None);
        more = sel(|s| s.to = Some((pod, 32)));
        more.other = true;
        assert_eq!(classify(512, MAIN_TABLE, &more), None);
        let from = sel(|s| s.from = Some((pod, 32)));
        assert_eq!(classify(1536, 3, &from), Some(RuleKind::FromPod(pod, 3)));
        assert_eq!(classify(1536, MAIN_TABLE, &from), None);
        assert_eq!(classify(32765, 2, &from), Some(RuleKind::FromEni(pod, 2)));
        let iif = sel(|s| s.iif = Some("vlan.eth.7".into()));
        assert_eq!(
            classify(10, 107, &iif),
            Some(RuleKind::Iif("vlan.eth.7".into(), 107))
        );
        let mark = sel(|s| s.fwmark = Some((0x80, 0x80)));
        assert_eq!(classify(1024, MAIN_TABLE, &mark), Some(RuleKind::Connmark));
        assert_eq!(
            classify(1024, MAIN_TABLE, &sel(|s| s.fwmark = Some((0x40, 0x40)))),
            None
        );
        assert_eq!(
            classify(20, LOCAL_TABLE, &Selectors::default()),
            Some(RuleKind::MovedLocal)
        );
        assert_eq!(classify(0, LOCAL_TABLE, &Selectors::default()), None);
    }

    #[test]
    fn a_branch_subnet_is_the_narrowest_with_that_gateway() {
        let got = subnet_of_gateway(Ipv4Addr::new(10, 0, 1, 50), Ipv4Addr::new(10, 0, 1, 1));
        let (base, len) = got.unwrap();
        assert_eq!(base, Ipv4Addr::new(10, 0, 1, 0));
        assert_eq!(len, 26);
        assert_eq!(
            crate::addressing::gateway((base, len)),
            Ipv4Addr::new(10, 0, 1, 1)
        );
        assert_eq!(
            subnet_of_gateway(Ipv4Addr::new(10, 0, 1, 50), Ipv4Addr::new(10, 0, 2, 1)),
            None
        );
    }
}
