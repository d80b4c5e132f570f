//! What the node holds, as JSON for operators (`GET /v1/...` on the metrics listener, and
//! `eniflow-agent status`): the ENIs and the state of each address, the pods with their
//! counters, the subnets, the settings in effect. No container id appears anywhere: with one,
//! a caller could forge a DEL (VPC CNI removed them from its introspection for that reason).

use std::{collections::BTreeMap, net::Ipv4Addr};

use eniflow_common::{DropReason, Drops, PodStats};
use serde_json::{json, Value};

use crate::{
    cni::branch::BranchPods,
    datapath::{self, DatapathError, Pins},
    ipam::{pool::AddressState, Ipam},
};

/// Where the views are read from.
pub struct Node<'a> {
    /// None when the agent runs without a pool (--ipam=false).
    pub ipam: Option<&'a Ipam>,
    pub branch_pods: Option<&'a BranchPods>,
    pub pins: &'a Pins,
    /// The agent's own settings in effect (besides the pool's knobs).
    pub settings: &'a Value,
}

const STATES: [AddressState; 4] = [
    AddressState::Assigned,
    AddressState::Warm,
    AddressState::Cooling,
    AddressState::Leaving,
];

fn state_name(state: AddressState) -> Value {
    serde_json::to_value(state).unwrap_or(Value::Null)
}

/// The pool's ENIs: each address with its state, the prefixes, and the counts by state.
pub fn enis(ipam: &Ipam) -> Value {
    let enis: Vec<Value> = ipam
        .shares()
        .iter()
        .map(|s| {
            let counts: BTreeMap<String, u32> = STATES
                .iter()
                .map(|state| {
                    (
                        state_name(*state).as_str().unwrap_or("").to_owned(),
                        s.count(*state),
                    )
                })
                .collect();
            json!({
                "id": s.eni.id,
                "device_index": s.eni.device_index,
                "network_card": s.eni.network_card,
                "subnet_id": s.eni.subnet_id,
                "primary_address": s.eni.addresses.first(),
                "trunk": s.eni.trunk,
                "for_pods": s.for_pods,
                "draining": s.draining,
                "created_by_eniflow": s.eni.ours(),
                "prefixes": s.eni.prefixes.iter().map(|p| format!("{p}/28")).collect::<Vec<_>>(),
                "addresses": s.addresses.iter().map(|(ip, state)| json!({
                    "address": ip,
                    "state": state_name(*state),
                })).collect::<Vec<_>>(),
                "counts": counts,
            })
        })
        .collect();
    json!({ "enis": enis })
}

fn drops_by_reason(drops: &Drops) -> Value {
    DropReason::ALL
        .iter()
        .map(|r| (r.name().to_owned(), Value::from(drops.get(*r))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn counters(stats: &PodStats) -> Value {
    json!({
        "sent_packets": stats.sent_packets,
        "sent_bytes": stats.sent_bytes,
        "sent_to_stack": stats.sent_to_stack,
        "received_packets": stats.received_packets,
        "received_bytes": stats.received_bytes,
        "drops": drops_by_reason(&stats.drops),
    })
}

/// The pods in the data plane (read from the pinned maps), with who they are when the agent
/// knows (pool allocations and branch pods) and their counters.
pub fn pods(node: &Node) -> Result<Value, DatapathError> {
    let stats: BTreeMap<Ipv4Addr, PodStats> =
        datapath::read_pod_stats(node.pins)?.into_iter().collect();
    let allocations: BTreeMap<Ipv4Addr, _> = node
        .ipam
        .map(|ipam| ipam.allocations())
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.ipv4, a))
        .collect();
    let branches: BTreeMap<Ipv4Addr, _> = node
        .branch_pods
        .map(|b| b.all())
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.branch.ipv4, p))
        .collect();
    let pods: Vec<Value> = datapath::read_pods(node.pins)?
        .into_iter()
        .map(|(addr, pod)| {
            let (namespace, name, eni) = match (allocations.get(&addr), branches.get(&addr)) {
                (Some(a), _) => (Some(&a.pod_namespace), Some(&a.pod_name), Some(&a.eni)),
                (None, Some(b)) => (
                    Some(&b.pod_namespace),
                    Some(&b.pod_name),
                    Some(&b.branch.eni_id),
                ),
                (None, None) => (None, None, None),
            };
            json!({
                "address": addr,
                "namespace": namespace,
                "name": name,
                "eni": eni,
                "trunk_eni": branches.get(&addr).map(|b| &b.trunk_eni),
                "vlan": (pod.vlan != 0).then_some(pod.vlan),
                "host_veth": crate::netlink::ifname(pod.host_ifindex),
                "host_ifindex": pod.host_ifindex,
                "counters": stats.get(&addr).map(counters),
            })
        })
        .collect();
    Ok(json!({ "pods": pods }))
}

/// The subnets the pool uses or has looked at: free addresses as EC2 last said, and whether the
/// pool passes them over for new ENIs now.
pub fn subnets(ipam: &Ipam) -> Value {
    json!({ "subnets": ipam.subnets() })
}

/// The settings in effect: the pool's knobs by VPC CNI's names (defaults applied), what the
/// node can hold, and the agent's own settings.
pub fn config(node: &Node) -> Value {
    let pool = node.ipam.map(|ipam| {
        let capacity = ipam.capacity();
        json!({
            "knobs": ipam.config().knobs.effective(),
            "max_enis": ipam.max_enis(),
            "addresses_per_eni": capacity.per_eni,
            "max_pods": capacity.max_pods,
        })
    });
    json!({ "pool": pool, "agent": node.settings })
}

/// The summary `eniflow-agent status` prints: the pool's counts, EC2's answers, the last errors
/// and the pods that drop the most.
pub fn status(node: &Node) -> Result<Value, DatapathError> {
    let pool = node.ipam.map(|ipam| {
        let shares = ipam.shares();
        let for_pods: Vec<_> = shares.iter().filter(|s| s.for_pods).collect();
        let counts: BTreeMap<String, u32> = STATES
            .iter()
            .map(|state| {
                (
                    state_name(*state).as_str().unwrap_or("").to_owned(),
                    for_pods.iter().map(|s| s.count(*state)).sum(),
                )
            })
            .collect();
        let ec2: Vec<Value> = ipam
            .ec2()
            .calls()
            .into_iter()
            .map(|((action, outcome), n)| json!({ "action": action, "outcome": outcome, "calls": n }))
            .collect();
        json!({
            "enis": shares.len(),
            "addresses": counts,
            "max_pods": ipam.capacity().max_pods,
            "ec2_calls": ec2,
        })
    });
    let mut droppers: Vec<(Ipv4Addr, PodStats)> = datapath::read_pod_stats(node.pins)?
        .into_iter()
        .filter(|(_, s)| s.drops.total() > 0)
        .collect();
    droppers.sort_by_key(|(addr, s)| (std::cmp::Reverse(s.drops.total()), *addr));
    droppers.truncate(5);
    Ok(json!({
        "pool": pool,
        "last_errors": crate::metrics::get().last_errors(),
        "top_droppers": droppers.iter().map(|(addr, s)| json!({
            "address": addr,
            "drops": drops_by_reason(&s.drops),
        })).collect::<Vec<_>>(),
    }))
}
