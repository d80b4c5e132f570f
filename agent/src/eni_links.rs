//! Which local interfaces are the node's ENIs, and how each is made ready for pods: found by
//! MAC through IMDS (which lags EC2 by a few seconds after an attach, so the watcher retries),
//! brought up, given its primary address (the source of its ARP requests for the subnet
//! router), loose reverse-path filtering (replies to its pods arrive on it while the main
//! table's default route points at the primary ENI), and eniflow's programs.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_config::imds;
use rtnetlink::{Handle, LinkUnspec};

use crate::{
    addressing::gateway,
    datapath::{EniPort, Plane},
    instance::{read_enis, ImdsEni},
    ipam::Ipam,
    snat,
};
use eniflow_common::{ENI_ROLE_PRIMARY, ENI_ROLE_SECONDARY, ENI_ROLE_TRUNK};

/// Why one pass of the watcher did not finish (the next pass tries again).
#[derive(Debug, thiserror::Error)]
pub enum EniLinkError {
    #[error(transparent)]
    Imds(#[from] crate::instance::ImdsError),
    #[error("{step}: {source}")]
    Netlink {
        step: String,
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Sysctl(#[from] crate::install::InstallError),
    #[error(transparent)]
    Snat(#[from] snat::SnatError),
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
}

type Result<T> = std::result::Result<T, EniLinkError>;

fn netlink_failed(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> EniLinkError {
    let step = step.into();
    move |source| EniLinkError::Netlink { step, source }
}

/// How often the watcher compares the pool's ENIs with the ones the data plane has.
const TICK: Duration = Duration::from_secs(1);
/// A full re-read even when nothing seems to have changed.
const RESYNC: Duration = Duration::from_secs(30);

/// Local links with a MAC: (ifindex, name, MAC).
async fn links(nl: &Handle) -> Result<Vec<(u32, String, [u8; 6])>> {
    let links = crate::netlink::links(nl)
        .await
        .map_err(netlink_failed("list links"))?;
    Ok(links
        .into_iter()
        .filter_map(|l| Some((l.index, l.name, l.mac?)))
        .collect())
}

/// Up, primary address (secondary ENIs; the primary's comes from DHCP), loose rp_filter.
async fn prepare(nl: &Handle, ifindex: u32, ifname: &str, eni: &ImdsEni) -> Result<()> {
    nl.link()
        .set(LinkUnspec::new_with_index(ifindex).up().build())
        .execute()
        .await
        .map_err(netlink_failed(format!("set {ifname} up")))?;
    if eni.device_index != 0 {
        match nl
            .address()
            .add(ifindex, IpAddr::V4(eni.primary), 32)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            Err(e) => {
                return Err(netlink_failed(format!(
                    "add {}/32 to {ifname}",
                    eni.primary
                ))(e))
            }
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
    let described = read_enis(imds).await?;
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
    let nl = match crate::netlink::connect() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::error!("ENI watcher: cannot open a route netlink socket: {e}");
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
            .any(|i| crate::netlink::ifname(i).is_none());
        let due = vanished
            || synced
                .as_ref()
                .is_none_or(|(ids, at)| *ids != pool || at.elapsed() >= RESYNC);
        if due {
            synced = match sync(&plane, &imds, &nl, &pool, &mut snat).await {
                Ok(true) => Some((pool, Instant::now())),
                Ok(false) => None,
                Err(e) => {
                    tracing::warn!("ENI watcher: {e}");
                    None
                }
            };
        }
        tokio::time::sleep(TICK).await;
    }
}
