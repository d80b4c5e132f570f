//! Wiring a pod: a veth created from inside the pod's namespace with its peer in the host's, the
//! pod's address as /32, a link route to 169.254.1.1 and the default route via it, a permanent
//! neighbour entry for 169.254.1.1 (the host veth's MAC), and on the host a /32 route to the veth.
//! Setup unwinds what it did; teardown goes on past errors and reports them together.

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use futures_util::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoKind, InfoVeth},
        neighbour::NeighbourState,
    },
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

/// The pod's next hop: link-local, answered by the host veth (as in VPC CNI).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct PlumbingError {
    pub step: String,
    pub message: String,
    /// The interface name is taken (in the pod or on the host): bad input, not a failure.
    pub taken: bool,
}

impl PlumbingError {
    fn new(step: impl Into<String>, message: impl Into<String>) -> PlumbingError {
        PlumbingError {
            step: step.into(),
            message: message.into(),
            taken: false,
        }
    }
}

fn failed(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PlumbingError {
    let step = step.into();
    move |e| PlumbingError::new(step, e.to_string())
}

fn io_failed(step: impl Into<String>) -> impl FnOnce(io::Error) -> PlumbingError {
    let step = step.into();
    move |e| PlumbingError::new(step, e.to_string())
}

/// One pod's interface.
#[derive(Clone, Debug)]
pub struct Pod {
    pub netns: PathBuf,
    pub ifname: String,
    pub host_veth: String,
    pub ipv4: Ipv4Addr,
    pub mtu: u32,
}

/// What the wiring made, for the data plane's entry and the CNI result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wired {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
}

/// Turns IPv6 off on `ifname` of the calling thread's namespace (`/proc/sys/net` is the
/// namespace's). Best effort: nothing to do on a kernel without IPv6, and where /proc/sys is
/// read-only (the agent's container) the pod keeps IPv6 and the programs drop and count what
/// it sends (`unexpected_protocol`).
fn disable_ipv6(ifname: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&path, b"1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EROFS)
                || e.kind() == io::ErrorKind::PermissionDenied =>
        {
            tracing::debug!("{path}: {e}; IPv6 stays on in the pod");
            Ok(())
        }
        other => other,
    }
}

/// A route socket in the pod's namespace (see `netlink::connect_in`).
async fn connect_in(path: &Path) -> Result<Handle, PlumbingError> {
    crate::netlink::connect_in(path)
        .await
        .map_err(io_failed("open a netlink socket in the pod's namespace"))
}

/// A link's index and MAC by name; None when there is no such link.
async fn link(nl: &Handle, name: &str) -> Result<Option<(u32, [u8; 6])>, PlumbingError> {
    let found = crate::netlink::link_by_name(nl, name)
        .await
        .map_err(failed(format!("look up {name}")))?;
    Ok(found.map(|l| (l.index, l.mac.unwrap_or_default())))
}

/// Whether a link of that name exists (errors count as "yes": nothing is released on a doubt).
pub async fn exists(nl: &Handle, name: &str) -> bool {
    !matches!(link(nl, name).await, Ok(None))
}

/// Wires the pod; on failure, removes what it made (the veth pair) before returning the error.
pub async fn add(host: &Handle, pod: &Pod) -> Result<Wired, PlumbingError> {
    let inside = connect_in(&pod.netns).await?;
    if link(&inside, &pod.ifname).await?.is_some() {
        return Err(PlumbingError {
            taken: true,
            ..PlumbingError::new(
                format!("CNI_IFNAME {} in {}", pod.ifname, pod.netns.display()),
                "an interface of that name already exists in the pod",
            )
        });
    }
    if link(host, &pod.host_veth).await?.is_some() {
        return Err(PlumbingError {
            taken: true,
            ..PlumbingError::new(
                format!("the host end {}", pod.host_veth),
                "an interface of that name already exists on the host (another pod of the same name?)",
            )
        });
    }
    let result = wire(host, &inside, pod).await;
    if result.is_err() {
        if let Ok(Some((index, _))) = link(host, &pod.host_veth).await {
            let _ = host.link().del(index).execute().await;
        }
        if let Ok(Some((index, _))) = link(&inside, &pod.ifname).await {
            let _ = inside.link().del(index).execute().await;
        }
    }
    result
}

async fn wire(host: &Handle, inside: &Handle, pod: &Pod) -> Result<Wired, PlumbingError> {
    let host_ns: OwnedFd = File::open("/proc/thread-self/ns/net")
        .map_err(io_failed("open the host's namespace"))?
        .into();
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod.host_veth.clone())
        .mtu(pod.mtu)
        .setns_by_fd(host_ns.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(pod.ifname.clone())
        .mtu(pod.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    crate::faults::inject("veth").map_err(|e| PlumbingError::new("create veth", e.to_string()))?;
    inside
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(failed(format!(
            "create veth {} / {}",
            pod.ifname, pod.host_veth
        )))?;
    drop(host_ns);

    let missing = |what: &str| {
        PlumbingError::new(format!("find {what}"), "not there after creating the veth")
    };
    let (host_index, host_mac) = link(host, &pod.host_veth)
        .await?
        .ok_or_else(|| missing(&pod.host_veth))?;
    let (pod_index, pod_mac) = link(inside, &pod.ifname)
        .await?
        .ok_or_else(|| missing(&pod.ifname))?;
    let up = |index| LinkUnspec::new_with_index(index).up().build();

    // Pod side. No IPv6 before the link is up: the pod has no IPv6 address, and the programs
    // drop what a pod sends that is neither IPv4 nor ARP (router solicitations included).
    let ifname = pod.ifname.clone();
    crate::netlink::within(&pod.netns, move || disable_ipv6(&ifname))
        .await
        .map_err(io_failed(format!("disable IPv6 on {}", pod.ifname)))?;
    if let Some((lo, _)) = link(inside, "lo").await? {
        inside
            .link()
            .set(up(lo))
            .execute()
            .await
            .map_err(failed("set lo up in the pod"))?;
    }
    inside
        .link()
        .set(up(pod_index))
        .execute()
        .await
        .map_err(failed(format!("set {} up", pod.ifname)))?;
    crate::faults::inject("pod-address")
        .map_err(|e| PlumbingError::new("add the pod's address", e.to_string()))?;
    inside
        .address()
        .add(pod_index, IpAddr::V4(pod.ipv4), 32)
        .execute()
        .await
        .map_err(failed(format!("add {}/32 to {}", pod.ipv4, pod.ifname)))?;
    let to_gateway = crate::netlink::link_route(GATEWAY, pod_index).build();
    inside
        .route()
        .add(to_gateway)
        .execute()
        .await
        .map_err(failed(format!("route {GATEWAY} dev {}", pod.ifname)))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(GATEWAY)
        .output_interface(pod_index)
        .build();
    inside
        .route()
        .add(default)
        .execute()
        .await
        .map_err(failed(format!("default via {GATEWAY}")))?;
    inside
        .neighbours()
        .add(pod_index, IpAddr::V4(GATEWAY))
        .link_layer_address(&host_mac)
        .state(NeighbourState::Permanent)
        .execute()
        .await
        .map_err(failed(format!("neighbour {GATEWAY} lladdr (host veth)")))?;

    // Host side.
    host.link()
        .set(up(host_index))
        .execute()
        .await
        .map_err(failed(format!("set {} up", pod.host_veth)))?;
    let to_pod = crate::netlink::link_route(pod.ipv4, host_index).build();
    host.route()
        .add(to_pod)
        .execute()
        .await
        .map_err(failed(format!(
            "route {}/32 dev {}",
            pod.ipv4, pod.host_veth
        )))?;
    Ok(Wired {
        host_ifindex: host_index,
        host_mac,
        pod_mac,
    })
}

/// Removes the pod's veth pair (which takes its routes and neighbour with it). A veth that is
/// already gone is not an error: DEL is idempotent.
pub async fn del(host: &Handle, host_veth: &str) -> Result<(), PlumbingError> {
    crate::faults::inject("unwire")
        .map_err(|e| PlumbingError::new(format!("delete {host_veth}"), e.to_string()))?;
    let Some((index, _)) = link(host, host_veth).await? else {
        return Ok(());
    };
    match host.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        Err(e) => Err(failed(format!("delete {host_veth}"))(e)),
    }
}

/// The pod's wiring, if it is in place: the host veth exists and the pod's interface holds the
/// address.
pub async fn check(host: &Handle, pod: &Pod) -> Result<Wired, PlumbingError> {
    let Some((host_ifindex, host_mac)) = link(host, &pod.host_veth).await? else {
        return Err(PlumbingError::new(
            format!("check {}", pod.host_veth),
            "missing on the host",
        ));
    };
    let inside = connect_in(&pod.netns).await?;
    let Some((index, pod_mac)) = link(&inside, &pod.ifname).await? else {
        return Err(PlumbingError::new(
            format!("check {}", pod.ifname),
            "missing in the pod",
        ));
    };
    let addresses: Vec<_> = inside
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(failed(format!("list the addresses of {}", pod.ifname)))?;
    let holds = addresses.iter().any(|a| {
        a.attributes.iter().any(
            |attr| matches!(attr, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == pod.ipv4),
        )
    });
    if !holds {
        return Err(PlumbingError::new(
            format!("check {}", pod.ifname),
            format!("does not hold {}", pod.ipv4),
        ));
    }
    Ok(Wired {
        host_ifindex,
        host_mac,
        pod_mac,
    })
}
