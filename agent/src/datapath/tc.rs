//! Netlink queries and removals for the clsact path: the bpf filters on an interface, and
//! deleting exactly the filters and qdisc eniflow made.

use futures_util::TryStreamExt;
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST},
    packet_route::{
        tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
        RouteNetlinkMessage,
    },
    Handle,
};

use super::Direction;

/// A cls_bpf filter on a clsact hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    /// The program's name as the kernel reports it (`TCA_BPF_NAME`, e.g. `eni_ingress`).
    pub name: String,
    pub prog_id: u32,
}

fn parent(direction: Direction) -> TcHandle {
    TcHandle {
        major: 0xffff,
        minor: match direction {
            Direction::Ingress => TcHandle::MIN_INGRESS,
            Direction::Egress => TcHandle::MIN_EGRESS,
        },
    }
}

/// The cls_bpf filters on one clsact hook (none when there is no clsact qdisc).
pub async fn bpf_filters(
    nl: &Handle,
    ifindex: u32,
    direction: Direction,
) -> Result<Vec<BpfFilter>, rtnetlink::Error> {
    let mut request = nl.traffic_filter(ifindex as i32).get();
    request = match direction {
        Direction::Ingress => request.ingress(),
        Direction::Egress => request.egress(),
    };
    let messages: Vec<TcMessage> = match request.execute().try_collect().await {
        Ok(messages) => messages,
        // No clsact qdisc: the kernel answers EINVAL for its hooks.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EINVAL => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(messages.iter().filter_map(bpf_filter).collect())
}

fn bpf_filter(msg: &TcMessage) -> Option<BpfFilter> {
    if !msg
        .attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
    {
        return None;
    }
    let options = msg.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(o) => Some(o),
        _ => None,
    })?;
    let mut filter = BpfFilter {
        priority: (msg.header.info >> 16) as u16,
        handle: msg.header.handle.into(),
        name: String::new(),
        prog_id: 0,
    };
    for option in options {
        match option {
            TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => filter.name = name.clone(),
            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.prog_id = *id,
            _ => {}
        }
    }
    // A filter dump also lists the priority's "head" entry (handle 0) without a program.
    (filter.handle != 0).then_some(filter)
}

/// Deletes one filter by priority and handle.
pub async fn delete_filter(
    nl: &Handle,
    ifindex: u32,
    direction: Direction,
    priority: u16,
    handle: u32,
) -> Result<(), rtnetlink::Error> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = parent(direction);
    msg.header.handle = handle.into();
    // tcm_info: priority in the upper half; protocol 0 in the lower half matches any protocol.
    msg.header.info = u32::from(priority) << 16;
    ack(nl, RouteNetlinkMessage::DelTrafficFilter(msg)).await
}

/// Deletes the interface's clsact qdisc (and with it anything still attached to it).
pub async fn delete_clsact(nl: &Handle, ifindex: u32) -> Result<(), rtnetlink::Error> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    ack(nl, RouteNetlinkMessage::DelQueueDiscipline(msg)).await
}

async fn ack(nl: &Handle, message: RouteNetlinkMessage) -> Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(message);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut response = nl.clone().request(req)?;
    while let Some(msg) = futures_util::StreamExt::next(&mut response).await {
        if let NetlinkPayload::Error(e) = msg.payload {
            if e.code.is_some() {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
    }
    Ok(())
}
