//! The agent's one home for network namespaces and route netlink: entering a namespace, opening a
//! route socket in the current namespace or in a pod's, finding a link by name or index with
//! its MAC, and the on-link /32 route every pod and gateway gets.

use std::{fs::File, io, net::Ipv4Addr, os::fd::AsRawFd, path::Path};

use futures_util::TryStreamExt;
use rtnetlink::{
    packet_route::{
        link::{LinkAttribute, LinkMessage},
        route::RouteScope,
    },
    Handle, RouteMessageBuilder,
};

/// Moves the calling thread into the network namespace at `path` (e.g. `/run/netns/node`).
///
/// Call it first thing in `main`, before a runtime spawns threads: threads created later
/// inherit the namespace, earlier ones keep theirs.
pub fn enter(path: &Path) -> io::Result<()> {
    let ns = File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", path.display()),
        )
    })?;
    setns(&ns).map_err(|e| io::Error::new(e.kind(), format!("setns {}: {e}", path.display())))
}

fn setns(ns: &File) -> io::Result<()> {
    // SAFETY: a valid fd of a namespace file; CLONE_NEWNET makes the kernel check its type.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A route netlink socket in the current network namespace.
pub fn connect() -> io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A route netlink socket opened inside the namespace at `path`; the socket stays bound to it,
/// so no later call needs setns. The namespace switch happens on a thread of its own that ends
/// right after, so no runtime thread is ever left in a pod's namespace; its answer is awaited,
/// not joined, so no runtime thread blocks on it either.
pub async fn connect_in(path: &Path) -> io::Result<Handle> {
    let runtime = tokio::runtime::Handle::current();
    let (conn, handle, _) = within(path, move || {
        let _in_runtime = runtime.enter();
        rtnetlink::new_connection()
    })
    .await?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Runs `f` inside the namespace at `path`, on a thread of its own that ends right after (see
/// `connect_in`); its answer is awaited, not joined.
pub async fn within<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = path.to_owned();
    let (answer, done) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let run = || -> io::Result<_> {
            let home = File::open("/proc/thread-self/ns/net")?;
            let target = File::open(&path)?;
            setns(&target)?;
            let made = f();
            if let Err(e) = setns(&home) {
                // A thread that cannot go home must not live on: it is about to end anyway.
                return Err(io::Error::new(e.kind(), format!("setns back home: {e}")));
            }
            made
        };
        let _ = answer.send(run());
    });
    done.await
        .map_err(|_| io::Error::other("the helper thread ended without an answer"))?
}

/// A link as netlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// None for links without an Ethernet address (lo, tunnels).
    pub mac: Option<[u8; 6]>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
        };
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(m) if m.len() == 6 => {
                    let mut mac = [0; 6];
                    mac.copy_from_slice(m);
                    link.mac = Some(mac);
                }
                _ => {}
            }
        }
        link
    }
}

/// The link named `name`; None when there is none.
pub async fn link_by_name(nl: &Handle, name: &str) -> Result<Option<Link>, rtnetlink::Error> {
    let found = nl
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

/// The MACs of both ends of veth `ifindex`.
pub struct VethMacs {
    pub host: [u8; 6],
    /// The peer's, in its own namespace (a pod's eth0, for a pod's host veth).
    pub peer: [u8; 6],
}

/// The MACs of veth `ifindex` and of its peer, the peer's read in its namespace through its
/// namespace id: exact whether or not the pod has sent anything, where the host's neighbour
/// entry for the pod may be missing or stale. None when the link is gone, has no MAC or has no
/// peer in another namespace.
pub async fn veth_macs(nl: &Handle, ifindex: u32) -> Result<Option<VethMacs>, rtnetlink::Error> {
    let Some(host) = nl
        .link()
        .get()
        .match_index(ifindex)
        .execute()
        .try_next()
        .await?
    else {
        return Ok(None);
    };
    let (mut peer, mut netns) = (None, None);
    for a in &host.attributes {
        match a {
            LinkAttribute::Link(index) => peer = Some(*index),
            LinkAttribute::LinkNetNsId(id) => netns = Some(*id),
            _ => {}
        }
    }
    let (Some(host), Some(peer), Some(netns)) = (Link::from_message(&host).mac, peer, netns) else {
        return Ok(None);
    };
    let mut request = nl.link().get().match_index(peer);
    request
        .message_mut()
        .attributes
        .push(LinkAttribute::IfNetnsId(netns));
    let found = request.execute().try_next().await?;
    Ok(found
        .and_then(|m| Link::from_message(&m).mac)
        .map(|peer| VethMacs { host, peer }))
}

/// A route to `dest`/32 straight on link `ifindex`, no gateway (in main unless given a table).
pub fn link_route(dest: Ipv4Addr, ifindex: u32) -> RouteMessageBuilder<Ipv4Addr> {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest, 32)
        .output_interface(ifindex)
        .scope(RouteScope::Link)
}

/// Every link of the socket's namespace.
pub async fn links(nl: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut dump = nl.link().get().execute();
    while let Some(msg) = dump.try_next().await? {
        out.push(Link::from_message(&msg));
    }
    Ok(out)
}

/// The ifindex of `ifname` in the calling thread's namespace.
pub fn ifindex(ifname: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: c is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// The name of the interface `ifindex` in the calling thread's namespace, if there is one.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
