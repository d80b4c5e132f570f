//! Which local interfaces are the node's ENIs, and how each is made ready for pods: found by
//! MAC through IMDS (which lags EC2 by a few seconds after an attach, so the watcher retries),
//! brought up, given its primary address (the source of its ARP requests for the subnet
//! router), loose reverse-path filtering (replies to its pods arrive on it while the main
//! table's default route points at the primary ENI), and eniflow's programs.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aws_config::imds;
use futures_util::TryStreamExt;
use rtnetlink::{packet_route::link::LinkAttribute, Handle, LinkUnspec};

use crate::{
    datapath::{EniPort, Plane},
    ipam::Ipam,
    snat,
};
use eniflow_common::{ENI_ROLE_PRIMARY, ENI_ROLE_SECONDARY, ENI_ROLE_TRUNK};

/// How often the watcher compares the pool's ENIs with the ones the data plane has.
const TICK: Duration = Duration::from_secs(1);
/// A full re-read even when nothing seems to have changed.
const RESYNC: Duration = Duration::from_secs(30);

/// An ENI as IMDS describes it.
#[derive(Clone, Debug)]
pub struct ImdsEni {
    pub id: String,
    pub mac: [u8; 6],
    pub device_index: u32,
    pub primary: Ipv4Addr,
    pub subnet: (Ipv4Addr, u8),
    pub vpc_cidrs: Vec<(Ipv4Addr, u8)>,
}

pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = text.trim().split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((addr.parse().ok()?, len))
}

/// "0a:1b:2c:3d:4e:5f": six two-digit hex bytes, nothing else.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The subnet router: the subnet's base address + 1, as in every VPC.
pub fn gateway((base, len): (Ipv4Addr, u8)) -> Ipv4Addr {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Addr::from((u32::from(base) & mask) + 1)
}

/// Every ENI IMDS lists for this instance.
pub async fn read_imds(client: &imds::Client) -> Result<Vec<ImdsEni>> {
    let get = |path: String| async move {
        client
            .get(&path)
            .await
            .map(|v| v.as_ref().trim().to_owned())
            .with_context(|| format!("instance metadata {path}"))
    };
    let base = "/latest/meta-data/network/interfaces/macs/";
    let mut out = Vec::new();
    for line in get(base.to_owned()).await?.lines() {
        let mac_text = line.trim().trim_end_matches('/');
        if mac_text.is_empty() {
            continue;
        }
        let key = |k: &str| format!("{base}{mac_text}/{k}");
        let mac = parse_mac(mac_text).with_context(|| format!("IMDS MAC {mac_text:?}"))?;
        let primary = get(key("local-ipv4s")).await?;
        let primary = primary
            .lines()
            .next()
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("ENI {mac_text}: no primary address in local-ipv4s"))?;
        let subnet = get(key("subnet-ipv4-cidr-block")).await?;
        let vpc = get(key("vpc-ipv4-cidr-blocks")).await?;
        out.push(ImdsEni {
            id: get(key("interface-id")).await?,
            mac,
            device_index: get(key("device-number"))
                .await?
                .parse()
                .with_context(|| format!("ENI {mac_text}: device-number"))?,
            primary,
            subnet: parse_cidr(&subnet)
                .with_context(|| format!("ENI {mac_text}: subnet CIDR {subnet:?}"))?,
            vpc_cidrs: vpc.lines().filter_map(parse_cidr).collect(),
        });
    }
    Ok(out)
}

/// Local links by MAC: (ifindex, name, MAC).
async fn links(nl: &Handle) -> Result<Vec<(u32, String, [u8; 6])>> {
    let mut out = Vec::new();
    let mut dump = nl.link().get().execute();
    while let Some(msg) = dump.try_next().await.context("list links")? {
        let mut name = None;
        let mut mac = None;
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(m) if m.len() == 6 => {
                    let mut out = [0; 6];
                    out.copy_from_slice(m);
                    mac = Some(out);
                }
                _ => {}
            }
        }
        if let (Some(name), Some(mac)) = (name, mac) {
            out.push((msg.header.index, name, mac));
        }
    }
    Ok(out)
}

/// Up, primary address (secondary ENIs; the primary's comes from DHCP), loose rp_filter.
async fn prepare(nl: &Handle, ifindex: u32, ifname: &str, eni: &ImdsEni) -> Result<()> {
    nl.link()
        .set(LinkUnspec::new_with_index(ifindex).up().build())
        .execute()
        .await
        .with_context(|| format!("set {ifname} up"))?;
    if eni.device_index != 0 {
        match nl
            .address()
            .add(ifindex, IpAddr::V4(eni.primary), 32)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            Err(e) => return Err(e).with_context(|| format!("add {}/32 to {ifname}", eni.primary)),
        }
    }
    crate::install::loose_rp_filter(ifname)?;
    Ok(())
}

/// One pass: every pool ENI that IMDS lists and that has a local interface is prepared and
/// handed to the data plane. Returns whether every pool ENI was found.
async fn sync(
    plane: &Plane,
    imds: &imds::Client,
    nl: &Handle,
    pool: &BTreeSet<(String, bool)>,
    snat: &mut snat::Snat,
) -> Result<bool> {
    let described = read_imds(imds).await?;
    let local = links(nl).await?;
    let mut ports = Vec::new();
    let mut vpc_cidrs = BTreeSet::new();
    let mut primary = None;
    for eni in &described {
        vpc_cidrs.extend(eni.vpc_cidrs.iter().copied());
        if eni.device_index == 0 {
            primary = Some(eni.primary);
        }
        let Some((ifindex, ifname, _)) = local.iter().find(|(_, _, mac)| *mac == eni.mac) else {
            continue;
        };
        prepare(nl, *ifindex, ifname, eni).await?;
        let trunk = pool.iter().any(|(id, trunk)| *id == eni.id && *trunk);
        ports.push(EniPort {
            id: eni.id.clone(),
            ifindex: *ifindex,
            ifname: ifname.clone(),
            mac: eni.mac,
            primary: eni.primary,
            gateway: gateway(eni.subnet),
            role: if eni.device_index == 0 {
                ENI_ROLE_PRIMARY
            } else if trunk {
                ENI_ROLE_TRUNK
            } else {
                ENI_ROLE_SECONDARY
            },
        });
    }
    let complete = pool.iter().all(|(id, _)| ports.iter().any(|p| p.id == *id));
    let vpc_cidrs: Vec<_> = vpc_cidrs.into_iter().collect();
    if let Some(primary) = primary {
        snat.apply(primary, &vpc_cidrs)?;
    }
    plane.set_enis(ports, &vpc_cidrs).await?;
    Ok(complete)
}

/// Keeps the data plane's ENIs in step with the pool's, for as long as the agent runs.
pub async fn watch(plane: Arc<Plane>, imds: imds::Client, ipam: Arc<Ipam>, mut snat: snat::Snat) {
    let nl = match crate::datapath::tc::connect() {
        Ok(nl) => nl,
        Err(e) => {
            log::error!("ENI watcher: cannot open a route netlink socket: {e}");
            return;
        }
    };
    let mut synced: Option<(BTreeSet<(String, bool)>, Instant)> = None;
    loop {
        let pool: BTreeSet<(String, bool)> =
            ipam.enis().into_iter().map(|e| (e.id, e.trunk)).collect();
        // An ENI interface that vanished (detached outside eniflow) is noticed at once, before
        // the pool's reconcile: its table entry and pins must not outlive it.
        let vanished = plane
            .eni_ifindexes()
            .into_iter()
            .any(|i| crate::datapath::ifname(i).is_none());
        let due = vanished
            || synced
                .as_ref()
                .is_none_or(|(ids, at)| *ids != pool || at.elapsed() >= RESYNC);
        if due {
            synced = match sync(&plane, &imds, &nl, &pool, &mut snat).await {
                Ok(true) => Some((pool, Instant::now())),
                Ok(false) => None,
                Err(e) => {
                    log::warn!("ENI watcher: {e:#}");
                    None
                }
            };
        }
        tokio::time::sleep(TICK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_the_subnets_base_plus_one() {
        assert_eq!(
            gateway(parse_cidr("10.0.2.0/24").unwrap()),
            Ipv4Addr::new(10, 0, 2, 1)
        );
        assert_eq!(
            gateway(parse_cidr("10.0.2.77/20").unwrap()),
            Ipv4Addr::new(10, 0, 0, 1)
        );
    }

    #[test]
    fn macs_and_cidrs_parse_or_say_no() {
        assert_eq!(
            parse_mac("02:0a:ff:00:01:9c"),
            Some([2, 0x0a, 0xff, 0, 1, 0x9c])
        );
        assert_eq!(parse_mac("02:0a:ff:00:01"), None);
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
