//! The maps the agent keeps in step with pods and ENIs, and the per-pod counters and
//! stack-flow marks the programs write themselves.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    btf_maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
};
use eniflow_common::{
    BranchPort, Config, Destination, DropReason, Drops, Eni, FlowKey, Pod, PodStats, TrunkVlan,
    Veth, CONFIG_SG_STRICT, HOOKS,
};

const MAX_PODS: usize = eniflow_common::MAX_PODS as usize;
const MAX_ENIS: usize = eniflow_common::MAX_ENIS as usize;
const MAX_DESTINATIONS: usize = 1024;
/// Ports with a NAT'd flow; a mark that falls out only sends that port's packets through the
/// kernel stack again, which is always correct, just slower.
const MAX_STACK_FLOWS: usize = 65536;

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

#[btf_map(name = "branches")]
pub static BRANCHES: HashMap<TrunkVlan, BranchPort, MAX_PODS> = HashMap::new();

/// Every drop, by hook: counted even when the pod's own counters do not exist (yet).
#[btf_map(name = "hook_drops")]
pub static HOOK_DROPS: PerCpuArray<Drops, { HOOKS as usize }> = PerCpuArray::new();

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
    CONFIG
        .get(0)
        .is_some_and(|c| c.flags & CONFIG_SG_STRICT != 0)
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

/// Counts a drop of a packet of the pod at `addr` on `hook` (`HOOK_*`), in the hook's and the
/// pod's counters.
#[inline(always)]
pub fn count_drop(hook: u32, addr: u32, reason: DropReason) {
    if let Some(drops) = HOOK_DROPS.get_ptr_mut(hook) {
        // SAFETY: this CPU's slot, touched by nothing else until this program returns.
        unsafe { (*drops).count(reason) };
    }
    count(addr, |s| s.drops.count(reason));
}

/// Drops the packet: counted, then `TC_ACT_SHOT`. No program drops any other way.
#[inline(always)]
pub fn drop(hook: u32, addr: u32, reason: DropReason) -> i32 {
    count_drop(hook, addr, reason);
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
#[inline(always)]
pub fn mark_stack_flow(pod_addr: u32, protocol: u8, port: u16) {
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = STACK_FLOWS.insert(flow_key(pod_addr, protocol, port), now, 0);
}

/// Whether the pod's port has a flow the kernel stack handles.
#[inline(always)]
pub fn is_stack_flow(pod_addr: u32, protocol: u8, port: u16) -> bool {
    // SAFETY: only tests the key's presence.
    unsafe { STACK_FLOWS.get(&flow_key(pod_addr, protocol, port)) }.is_some()
}
