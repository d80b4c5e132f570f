//! The maps the agent keeps in step with pods and ENIs, and the per-pod counters and
//! stack-flow marks the programs write themselves.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    btf_maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf,
    },
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
};
use eniflow_common::{
    BranchPort, Config, Destination, DropEvent, DropReason, Drops, Eni, EventClock, FlowBudget,
    FlowKey, Pod, PodStats, TrunkVlan, Veth, CONFIG_DELIVER_THROUGH_VETH, CONFIG_SG_STRICT,
    DROP_EVENT_INTERVAL_NS,
    FLOW_MARKS_PER_SECOND, FLOW_MARK_BURST, HOOKS,
};

use crate::packet::Ipv4;

const MAX_PODS: usize = eniflow_common::MAX_PODS as usize;
const MAX_ENIS: usize = eniflow_common::MAX_ENIS as usize;
const MAX_DESTINATIONS: usize = 1024;
const MAX_STACK_FLOWS: usize = eniflow_common::MAX_STACK_FLOWS as usize;
/// A pod's new marks: one per interval, up to the burst ahead (see `FlowBudget`).
const MARK_INTERVAL_NS: u64 = 1_000_000_000 / FLOW_MARKS_PER_SECOND;
const MARK_TOLERANCE_NS: u64 = FLOW_MARK_BURST * MARK_INTERVAL_NS;

#[btf_map(name = "pods")]
pub static PODS: HashMap<[u8; 4], Pod, MAX_PODS> = HashMap::new();

#[btf_map(name = "veths")]
pub static VETHS: HashMap<u32, Veth, MAX_PODS> = HashMap::new();

#[btf_map(name = "enis")]
pub static ENIS: HashMap<u32, Eni, MAX_ENIS> = HashMap::new();

#[btf_map(name = "destinations")]
pub static DESTINATIONS: LpmTrie<[u8; 4], Destination, MAX_DESTINATIONS> = LpmTrie::new();

/// Per CPU, so counting needs no atomics; the agent creates an entry when it adds the pod.
#[btf_map(name = "pod_stats")]
pub static POD_STATS: PerCpuHashMap<[u8; 4], PodStats, MAX_PODS> = PerCpuHashMap::new();

#[btf_map(name = "stack_flows")]
pub static STACK_FLOWS: LruHashMap<FlowKey, u64, MAX_STACK_FLOWS> = LruHashMap::new();

#[btf_map(name = "flow_budgets")]
pub static FLOW_BUDGETS: LruHashMap<[u8; 4], FlowBudget, MAX_PODS> = LruHashMap::new();

#[btf_map(name = "branches")]
pub static BRANCHES: HashMap<TrunkVlan, BranchPort, MAX_PODS> = HashMap::new();

/// Every drop, by hook: counted even when the pod's own counters do not exist (yet).
#[btf_map(name = "hook_drops")]
pub static HOOK_DROPS: PerCpuArray<Drops, { HOOKS as usize }> = PerCpuArray::new();

/// 256 KiB: a few thousand events waiting for the monitor; when it is full, events are lost,
/// never packets.
#[btf_map(name = "drop_events")]
pub static DROP_EVENTS: RingBuf<DropEvent, { 256 * 1024 }> = RingBuf::new();

#[btf_map(name = "drop_event_clock")]
pub static DROP_EVENT_CLOCK: PerCpuArray<EventClock, 1> = PerCpuArray::new();

#[btf_map(name = "config")]
pub static CONFIG: Array<Config, 1> = Array::new();

/// The security-group pod on `vlan` of the trunk `trunk_ifindex`, copied out.
#[inline(always)]
pub fn branch(trunk_ifindex: u32, vlan: u16) -> Option<BranchPort> {
    let key = TrunkVlan {
        trunk_ifindex,
        vlan: u32::from(vlan),
    };
    // SAFETY: the value is copied before the map can change it.
    unsafe { BRANCHES.get(&key) }.copied()
}

/// Security-group pods in strict mode.
#[inline(always)]
pub fn sg_strict() -> bool {
    config(CONFIG_SG_STRICT)
}

/// Pods are delivered through their host veth (a policy program is on it).
#[inline(always)]
pub fn deliver_through_veth() -> bool {
    config(CONFIG_DELIVER_THROUGH_VETH)
}

#[inline(always)]
fn config(flag: u32) -> bool {
    CONFIG.get(0).is_some_and(|c| c.flags & flag != 0)
}

/// The pod at `addr` (as loaded from the packet), copied out.
#[inline(always)]
pub fn pod(addr: u32) -> Option<Pod> {
    // SAFETY: the value is copied before the map can change it.
    unsafe { PODS.get(addr.to_ne_bytes()) }.copied()
}

#[inline(always)]
pub fn veth(ifindex: u32) -> Option<Veth> {
    // SAFETY: as above.
    unsafe { VETHS.get(&ifindex) }.copied()
}

#[inline(always)]
pub fn eni(ifindex: u32) -> Option<Eni> {
    // SAFETY: as above.
    unsafe { ENIS.get(&ifindex) }.copied()
}

/// What kind of destination `addr` (network order) is: `DEST_*`, or 0 outside the VPC.
#[inline(always)]
pub fn destination(addr: u32) -> u32 {
    let key = Key::new(32, addr.to_ne_bytes());
    DESTINATIONS.get(&key).map_or(0, |d| d.kind)
}

/// Applies `update` to this CPU's counters of the pod at `addr`, if the agent created them.
#[inline(always)]
pub fn count(addr: u32, update: impl FnOnce(&mut PodStats)) {
    if let Some(stats) = POD_STATS.get_ptr_mut(addr.to_ne_bytes()) {
        // SAFETY: this CPU's slot, touched by nothing else until this program returns.
        update(unsafe { &mut *stats });
    }
}

/// Where a program is deciding on a packet: its hook (`HOOK_*`), the hook's interface, and the
/// packet.
#[derive(Clone, Copy)]
pub struct Site {
    pub hook: u32,
    pub ifindex: u32,
    pub ip: Ipv4,
}

/// Counts a drop of a packet of the pod at `addr` at `site`, in the hook's and the pod's
/// counters, and reports it to the monitor unless this CPU reported one less than
/// `DROP_EVENT_INTERVAL_NS` ago.
#[inline(always)]
pub fn count_drop(site: &Site, addr: u32, reason: DropReason) {
    if let Some(drops) = HOOK_DROPS.get_ptr_mut(site.hook) {
        // SAFETY: this CPU's slot, touched by nothing else until this program returns.
        unsafe { (*drops).count(reason) };
    }
    count(addr, |s| s.drops.count(reason));
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(clock) = DROP_EVENT_CLOCK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, as above.
    let clock = unsafe { &mut *clock };
    if now.wrapping_sub(clock.last_ns) < DROP_EVENT_INTERVAL_NS {
        return;
    }
    clock.last_ns = now;
    let event = DropEvent {
        ktime_ns: now,
        reason: reason as u32,
        hook: site.hook,
        ifindex: site.ifindex,
        pod_addr: addr.to_ne_bytes(),
        saddr: site.ip.saddr.to_ne_bytes(),
        daddr: site.ip.daddr.to_ne_bytes(),
        sport: site.ip.sport,
        dport: site.ip.dport,
        protocol: site.ip.protocol,
        _pad: [0; 3],
    };
    // A full ring loses the event, never the count.
    let _ = DROP_EVENTS.output(&event, 0);
}

/// Drops the packet: counted and reported, then `TC_ACT_SHOT`. No program drops any other way.
#[inline(always)]
pub fn drop(site: &Site, addr: u32, reason: DropReason) -> i32 {
    count_drop(site, addr, reason);
    TC_ACT_SHOT as i32
}

fn flow_key(pod_addr: u32, protocol: u8, port: u16) -> FlowKey {
    FlowKey {
        pod_addr: pod_addr.to_ne_bytes(),
        port,
        protocol,
        _pad: 0,
    }
}

/// Marks the pod's port as having a flow the kernel stack handles (its NAT must see replies).
/// A new mark is taken from the pod's budget; a pod with none left gets none, and is the
/// stack's from then on.
#[inline(always)]
pub fn mark_stack_flow(pod_addr: u32, protocol: u8, port: u16) {
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = flow_key(pod_addr, protocol, port);
    if let Some(seen) = STACK_FLOWS.get_ptr_mut(&key) {
        // SAFETY: a u64 in the map's value; a racing CPU stores the same kind of time.
        unsafe { *seen = now };
        return;
    }
    if take_mark(pod_addr, now) {
        let _ = STACK_FLOWS.insert(&key, &now, 0);
    }
}

/// Takes one new mark from the pod's budget; false when none is left, which puts the pod in
/// the stack's hands for good (`is_stack_flow`): its unmarked flows need the stack too.
#[inline(always)]
fn take_mark(pod_addr: u32, now: u64) -> bool {
    let key = pod_addr.to_ne_bytes();
    let Some(budget) = FLOW_BUDGETS.get_ptr_mut(&key) else {
        let fresh = FlowBudget {
            full_at_ns: now + MARK_INTERVAL_NS,
            ..FlowBudget::default()
        };
        // Should the insert fail, the mark is still made: unbudgeted beats a broken flow.
        let _ = FLOW_BUDGETS.insert(&key, &fresh, 0);
        return true;
    };
    // SAFETY: the pod's budget; CPUs racing on it only make the count approximate.
    let budget = unsafe { &mut *budget };
    if budget.over_since_ns != 0 {
        return false;
    }
    let next = budget.full_at_ns.max(now) + MARK_INTERVAL_NS;
    if next - now > MARK_TOLERANCE_NS {
        budget.over_since_ns = now;
        return false;
    }
    budget.full_at_ns = next;
    true
}

/// Whether the pod's port has a flow the kernel stack handles, or the pod went over its budget
/// of marks (then every flow of it may be one).
#[inline(always)]
pub fn is_stack_flow(pod_addr: u32, protocol: u8, port: u16) -> bool {
    // SAFETY: only tests the key's presence.
    if unsafe { STACK_FLOWS.get(&flow_key(pod_addr, protocol, port)) }.is_some() {
        return true;
    }
    // SAFETY: the flag is copied out.
    unsafe { FLOW_BUDGETS.get(&pod_addr.to_ne_bytes()) }.is_some_and(|b| b.over_since_ns != 0)
}
