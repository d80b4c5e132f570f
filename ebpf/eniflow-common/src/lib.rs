//! Map key and value types shared by eniflow's tc programs and its agent.
//!
//! IPv4 addresses are `[u8; 4]` as on the wire, so `bpftool map dump` prints them as
//! `[10,0,1,6]`. Every struct is `#[repr(C)]` and padding-free (explicit `_pad` fields) so the kernel, the agent
//! and `bpftool` (through BTF) all see the same layout. No enums or `Option`s: not every bit
//! pattern would be valid.
#![cfg_attr(not(test), no_std)]

pub mod packet;

/// Pinned objects live under `<bpffs root>/<PIN_VERSION>/`; a layout change bumps it.
pub const PIN_VERSION: &str = "v2";

/// Pods one node's maps hold (pods, veths, per-pod counters, branch pods). The agent refuses a
/// node whose max pods is larger, naming both.
pub const MAX_PODS: u32 = 4096;
/// ENIs in the ENI table.
pub const MAX_ENIS: u32 = 64;
/// tc hooks eniflow attaches to and counts: both directions of every pod veth and every ENI.
pub const MAX_HOOKS: u32 = 2 * (MAX_PODS + MAX_ENIS);

/// Names of the maps as they appear in the object file, in bpftool and under `maps/`.
pub mod maps {
    /// Per-interface, per-direction packet and byte counters (`IfaceKey` → `IfaceStats`).
    pub const IFACE_STATS: &str = "iface_stats";
    /// What the agent attached where (`IfaceKey` → `Attachment`), so uninstall removes exactly that.
    pub const ATTACHMENTS: &str = "attachments";
    /// Pods by IPv4 address (`[u8; 4]`, as on the wire → `Pod`): where their packets go.
    pub const PODS: &str = "pods";
    /// Host veths by ifindex (`u32` → `Veth`): whose veth it is, for source validation.
    pub const VETHS: &str = "veths";
    /// The node's ENIs by ifindex (`u32` → `Eni`).
    pub const ENIS: &str = "enis";
    /// Destinations by longest prefix (`Key<[u8; 4]>`, address in network order → `Destination`): the VPC's CIDRs, and the
    /// node's own addresses inside them.
    pub const DESTINATIONS: &str = "destinations";
    /// Per-pod counters, per CPU (`[u8; 4]` pod address → `PodStats`).
    pub const POD_STATS: &str = "pod_stats";
    /// Pod ports with a flow the kernel stack handles (NAT), LRU (`FlowKey` → last seen, ns).
    pub const STACK_FLOWS: &str = "stack_flows";
    /// How many new `stack_flows` marks each pod may still add, LRU (`[u8; 4]` pod address →
    /// `FlowBudget`): written by the programs, removed by the agent with the pod.
    pub const FLOW_BUDGETS: &str = "flow_budgets";
    /// Security-group pods by (trunk ENI ifindex, VLAN id) (`TrunkVlan` → `BranchPort`).
    pub const BRANCHES: &str = "branches";
    /// Settings the programs read (index 0 → `Config`).
    pub const CONFIG: &str = "config";
    /// Drops by hook, per CPU (`HOOK_*` index → `Drops`), whether or not a pod is known.
    pub const HOOK_DROPS: &str = "hook_drops";
    /// Dropped packets as they happen (a ring buffer of `DropEvent`s, rate-limited per CPU):
    /// what `eniflow-agent monitor` reads.
    pub const DROP_EVENTS: &str = "drop_events";
    /// When each CPU last reported a drop event (index 0 → `EventClock`, per CPU).
    pub const DROP_EVENT_CLOCK: &str = "drop_event_clock";
    /// Every map the object declares; each is pinned by the agent.
    pub const ALL: &[&str] = &[
        IFACE_STATS,
        ATTACHMENTS,
        PODS,
        VETHS,
        ENIS,
        DESTINATIONS,
        POD_STATS,
        STACK_FLOWS,
        FLOW_BUDGETS,
        BRANCHES,
        CONFIG,
        HOOK_DROPS,
        DROP_EVENTS,
        DROP_EVENT_CLOCK,
    ];
}

/// Names of the tc programs, one per hook.
pub mod programs {
    /// tc ingress of an ENI: packets arriving from the VPC.
    pub const ENI_INGRESS: &str = "eni_ingress";
    /// tc egress of an ENI: packets leaving for the VPC.
    pub const ENI_EGRESS: &str = "eni_egress";
    /// tc ingress of a pod's host veth: packets the pod sends.
    pub const POD_EGRESS: &str = "pod_egress";
    /// tc egress of a pod's host veth: packets the kernel stack delivers to the pod.
    pub const POD_INGRESS: &str = "pod_ingress";
}

/// The hooks, as indexes of `hook_drops` and in `DropEvent`s, in the order of `programs`.
pub const HOOK_POD_EGRESS: u32 = 0;
pub const HOOK_POD_INGRESS: u32 = 1;
pub const HOOK_ENI_INGRESS: u32 = 2;
pub const HOOK_ENI_EGRESS: u32 = 3;
/// Entries of `hook_drops`.
pub const HOOKS: u32 = 4;

/// Each hook's program name, by `HOOK_*` index.
pub const HOOK_NAMES: [&str; HOOKS as usize] = [
    programs::POD_EGRESS,
    programs::POD_INGRESS,
    programs::ENI_INGRESS,
    programs::ENI_EGRESS,
];

/// Why a program dropped a packet (or failed to redirect it): one code shared by the programs,
/// the agent's metrics and `Drops`' field names. Never stored in a map as an enum: `Drops` has
/// one named field per reason, so bpftool prints them by name.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A pod sent from an address that is not its own (EC2 would drop it at the ENI).
    SpoofedSource = 1,
    /// A security-group pod's branch ENI (its VLAN on the trunk) is not in `branches`.
    NoBranchEni = 2,
    /// A tagged frame for a security-group pod arrived on a trunk that is not in `enis`.
    NoTrunkEni = 3,
    /// Pushing or popping a security-group pod's VLAN tag failed.
    VlanTagFailed = 4,
    /// Rewriting a frame's MAC addresses failed.
    HeaderRewriteFailed = 5,
    /// The kernel refused the redirect to the owning ENI or to a peer pod.
    RedirectFailed = 6,
    /// A pod sent an 802.1Q-tagged frame (only eniflow tags, on the trunk).
    VlanFromPod = 7,
    /// A pod sent a frame from a MAC that is not its interface's.
    SpoofedMac = 8,
    /// A pod sent ARP claiming an address that is not its own.
    SpoofedArp = 9,
    /// A pod sent neither IPv4 nor ARP (IPv6 included: pods have no IPv6 address).
    UnexpectedProtocol = 10,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::SpoofedSource,
        DropReason::NoBranchEni,
        DropReason::NoTrunkEni,
        DropReason::VlanTagFailed,
        DropReason::HeaderRewriteFailed,
        DropReason::RedirectFailed,
        DropReason::VlanFromPod,
        DropReason::SpoofedMac,
        DropReason::SpoofedArp,
        DropReason::UnexpectedProtocol,
    ];

    /// The reason's name: its `Drops` field and its metric label.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NoBranchEni => "no_branch_eni",
            DropReason::NoTrunkEni => "no_trunk_eni",
            DropReason::VlanTagFailed => "vlan_tag_failed",
            DropReason::HeaderRewriteFailed => "header_rewrite_failed",
            DropReason::RedirectFailed => "redirect_failed",
            DropReason::VlanFromPod => "vlan_from_pod",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::UnexpectedProtocol => "unexpected_protocol",
        }
    }

    /// The reason for a code read from the kernel; `None` for a code this agent does not know.
    pub const fn from_code(code: u32) -> Option<DropReason> {
        match code {
            1 => Some(DropReason::SpoofedSource),
            2 => Some(DropReason::NoBranchEni),
            3 => Some(DropReason::NoTrunkEni),
            4 => Some(DropReason::VlanTagFailed),
            5 => Some(DropReason::HeaderRewriteFailed),
            6 => Some(DropReason::RedirectFailed),
            7 => Some(DropReason::VlanFromPod),
            8 => Some(DropReason::SpoofedMac),
            9 => Some(DropReason::SpoofedArp),
            10 => Some(DropReason::UnexpectedProtocol),
            _ => None,
        }
    }
}

/// Packets dropped, one field per `DropReason` (named as `DropReason::name`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub spoofed_source: u64,
    pub no_branch_eni: u64,
    pub no_trunk_eni: u64,
    pub vlan_tag_failed: u64,
    pub header_rewrite_failed: u64,
    pub redirect_failed: u64,
    pub vlan_from_pod: u64,
    pub spoofed_mac: u64,
    pub spoofed_arp: u64,
    pub unexpected_protocol: u64,
}

impl Drops {
    /// The counter of `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::SpoofedSource => self.spoofed_source,
            DropReason::NoBranchEni => self.no_branch_eni,
            DropReason::NoTrunkEni => self.no_trunk_eni,
            DropReason::VlanTagFailed => self.vlan_tag_failed,
            DropReason::HeaderRewriteFailed => self.header_rewrite_failed,
            DropReason::RedirectFailed => self.redirect_failed,
            DropReason::VlanFromPod => self.vlan_from_pod,
            DropReason::SpoofedMac => self.spoofed_mac,
            DropReason::SpoofedArp => self.spoofed_arp,
            DropReason::UnexpectedProtocol => self.unexpected_protocol,
        }
    }

    /// Counts one drop for `reason`.
    pub fn count(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::SpoofedSource => &mut self.spoofed_source,
            DropReason::NoBranchEni => &mut self.no_branch_eni,
            DropReason::NoTrunkEni => &mut self.no_trunk_eni,
            DropReason::VlanTagFailed => &mut self.vlan_tag_failed,
            DropReason::HeaderRewriteFailed => &mut self.header_rewrite_failed,
            DropReason::RedirectFailed => &mut self.redirect_failed,
            DropReason::VlanFromPod => &mut self.vlan_from_pod,
            DropReason::SpoofedMac => &mut self.spoofed_mac,
            DropReason::SpoofedArp => &mut self.spoofed_arp,
            DropReason::UnexpectedProtocol => &mut self.unexpected_protocol,
        };
        *counter += 1;
    }

    /// Drops for every reason together.
    pub fn total(&self) -> u64 {
        let mut sum = 0;
        for reason in DropReason::ALL {
            sum += self.get(reason);
        }
        sum
    }

    /// The sum of two sets of counters (per-CPU values into one).
    pub fn plus(&self, other: &Drops) -> Drops {
        Drops {
            spoofed_source: self.spoofed_source + other.spoofed_source,
            no_branch_eni: self.no_branch_eni + other.no_branch_eni,
            no_trunk_eni: self.no_trunk_eni + other.no_trunk_eni,
            vlan_tag_failed: self.vlan_tag_failed + other.vlan_tag_failed,
            header_rewrite_failed: self.header_rewrite_failed + other.header_rewrite_failed,
            redirect_failed: self.redirect_failed + other.redirect_failed,
            vlan_from_pod: self.vlan_from_pod + other.vlan_from_pod,
            spoofed_mac: self.spoofed_mac + other.spoofed_mac,
            spoofed_arp: self.spoofed_arp + other.spoofed_arp,
            unexpected_protocol: self.unexpected_protocol + other.unexpected_protocol,
        }
    }
}

/// A CPU reports at most one drop event per this many nanoseconds: a flood of drops costs the
/// ring buffer a thousand events a second per CPU, and forwarding nothing more.
pub const DROP_EVENT_INTERVAL_NS: u64 = 1_000_000;

/// One dropped packet, as the programs report it on `drop_events`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns` when it was dropped.
    pub ktime_ns: u64,
    /// `DropReason` code.
    pub reason: u32,
    /// `HOOK_*`.
    pub hook: u32,
    /// The interface the hook is on.
    pub ifindex: u32,
    /// The pod it was counted against.
    pub pod_addr: [u8; 4],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Host order; 0 where the protocol has none.
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number.
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// When a CPU last reported a drop event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventClock {
    pub last_ns: u64,
}

/// `IfaceKey::direction` for tc ingress.
pub const DIRECTION_INGRESS: u32 = 0;
/// `IfaceKey::direction` for tc egress.
pub const DIRECTION_EGRESS: u32 = 1;

/// An interface and a tc direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    pub ifindex: u32,
    /// `DIRECTION_INGRESS` or `DIRECTION_EGRESS`.
    pub direction: u32,
}

/// Packets and bytes a program saw on one hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceStats {
    pub packets: u64,
    pub bytes: u64,
}

/// `Attachment::mode`: a tcx link pinned under `links/`.
pub const ATTACH_MODE_TCX: u32 = 1;
/// `Attachment::mode`: a cls_bpf filter on a clsact qdisc.
pub const ATTACH_MODE_CLSACT: u32 = 2;
/// `Attachment::flags`: eniflow created the clsact qdisc (and may remove it when it is empty).
pub const ATTACH_FLAG_CREATED_CLSACT: u32 = 1;

/// One program attachment the agent made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    /// `ATTACH_MODE_TCX` or `ATTACH_MODE_CLSACT`.
    pub mode: u32,
    /// `ATTACH_FLAG_*` bits.
    pub flags: u32,
    /// cls_bpf filter priority (clsact mode only).
    pub priority: u32,
    /// cls_bpf filter handle (clsact mode only).
    pub handle: u32,
}

/// Where a pod's packets go. Addresses and MACs as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    /// The pod's veth in the host namespace (its peer is the pod's interface).
    pub host_ifindex: u32,
    /// The ENI that owns the pod's address; 0 while the agent has not seen it yet (the kernel
    /// stack routes the pod meanwhile).
    pub eni_ifindex: u32,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
    /// 802.1Q id of the pod's branch ENI; 0: not a branch pod.
    pub vlan: u16,
    /// Reserved, 0.
    pub flags: u16,
}

/// A pod's host veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Veth {
    /// The only source address the pod may send from.
    pub pod_addr: [u8; 4],
}

/// `Eni::role`.
pub const ENI_ROLE_PRIMARY: u32 = 1;
pub const ENI_ROLE_SECONDARY: u32 = 2;
pub const ENI_ROLE_TRUNK: u32 = 3;

/// One of the node's ENIs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Eni {
    /// Its subnet's router (the subnet's base address + 1): VPC-bound packets leave through it.
    pub gateway: [u8; 4],
    /// The ENI's primary address.
    pub primary_addr: [u8; 4],
    /// `ENI_ROLE_*`.
    pub role: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// `Destination::kind`: inside the VPC, sent out of the pod's own ENI.
pub const DEST_VPC: u32 = 1;
/// `Destination::kind`: an address of this node; the kernel stack handles it.
pub const DEST_NODE: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    /// `DEST_*`.
    pub kind: u32,
}

/// One pod's counters (summed over CPUs by readers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodStats {
    /// Everything the pod sent.
    pub sent_packets: u64,
    pub sent_bytes: u64,
    /// Sent, and handed to the kernel stack (off-VPC, services, the node, NAT'd flows).
    pub sent_to_stack: u64,
    /// Delivered into the pod, by eniflow or by the kernel stack.
    pub received_packets: u64,
    pub received_bytes: u64,
    /// Its packets dropped (sent or to be delivered), by reason.
    pub drops: Drops,
}

/// Marks in `stack_flows`: the NAT'd flows whose replies the programs send through the stack.
/// A mark evicted while its flow lives sends the flow's replies around the stack's un-NAT, so
/// the map is large and no pod may fill it: see `FlowBudget`.
pub const MAX_STACK_FLOWS: u32 = 262_144;
/// New marks a pod may add at once (a generic cell rate: a burst, then a steady rate).
pub const FLOW_MARK_BURST: u64 = 4096;
/// ... and per second after the burst.
pub const FLOW_MARKS_PER_SECOND: u64 = 256;

/// A pod's budget of new `stack_flows` marks. A pod past it has every packet go through the
/// kernel stack from then on (its flows stay correct, if slower): it can never push the other
/// pods' marks out, and its own unmarked flows are the stack's too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowBudget {
    /// When the budget is back to full (ktime ns): each new mark moves it one interval on.
    pub full_at_ns: u64,
    /// When the pod went over its budget (ktime ns); 0 while it is within it.
    pub over_since_ns: u64,
}

/// A VLAN on a trunk ENI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrunkVlan {
    pub trunk_ifindex: u32,
    pub vlan: u32,
}

/// The security-group pod reached through a trunk ENI's VLAN: its branch ENI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BranchPort {
    pub pod_addr: [u8; 4],
    /// The branch ENI's subnet router: the pod's packets leave through it.
    pub gateway: [u8; 4],
    /// The branch ENI's MAC: the source of the pod's frames on the trunk.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The skb mark bit on a security-group pod's packets handed to the kernel stack: the SNAT
/// chain skips them, so after the stack (and its DNAT) they leave by the pod's branch ENI, under
/// its security groups. Clear of kube-proxy's (0x4000, 0x8000), VPC CNI's (0x80) and Calico's
/// (0xffff0000) bits.
pub const SG_POD_MARK: u32 = 0x2000;

/// `Config::flags`: security-group pods in strict mode (all their traffic, node-local too, goes
/// through the VPC and its security groups); unset: standard mode (node-local stays local).
pub const CONFIG_SG_STRICT: u32 = 1;
/// `Config::flags`: pods are delivered through their host veth (`bpf_redirect` to its egress)
/// rather than straight into them (`bpf_redirect_peer`, which skips that hook), so a policy
/// program on the veth (EKS's network policy agent's) sees every packet that reaches the pod.
pub const CONFIG_DELIVER_THROUGH_VETH: u32 = 2;

/// The skb mark bit on a packet eniflow delivers through a pod's host veth: the veth's egress
/// program knows it from one the stack delivers (whose flow the stack may have NAT'd). Clear of
/// the bits named at `SG_POD_MARK`; crossing into the pod's namespace clears the mark anyway.
pub const DELIVERED_MARK: u32 = 0x1000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `CONFIG_*` bits.
    pub flags: u32,
}

/// A pod's port (TCP, UDP, or ICMP echo id) in one protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The pod's address.
    pub pod_addr: [u8; 4],
    /// Host order.
    pub port: u16,
    /// IP protocol number.
    pub protocol: u8,
    pub _pad: u8,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integers with no padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::IfaceKey {}
    unsafe impl aya::Pod for super::IfaceStats {}
    unsafe impl aya::Pod for super::Attachment {}
    unsafe impl aya::Pod for super::Pod {}
    unsafe impl aya::Pod for super::Veth {}
    unsafe impl aya::Pod for super::Eni {}
    unsafe impl aya::Pod for super::Destination {}
    unsafe impl aya::Pod for super::PodStats {}
    unsafe impl aya::Pod for super::Drops {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::EventClock {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowBudget {}
    unsafe impl aya::Pod for super::TrunkVlan {}
    unsafe impl aya::Pod for super::BranchPort {}
    unsafe impl aya::Pod for super::Config {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_code_name_and_counter() {
        for reason in DropReason::ALL {
            assert_eq!(DropReason::from_code(reason as u32), Some(reason));
            let mut drops = Drops::default();
            drops.count(reason);
            for other in DropReason::ALL {
                assert_eq!(
                    drops.get(other),
                    u64::from(other == reason),
                    "{reason:?} vs {other:?}"
                );
            }
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
        assert_eq!(DropReason::from_code(0), None);
    }
}
