//! The lab's VPC fabric on a trunk ENI's port (tests only; EC2's hypervisor does this for real):
//! a frame tagged with VLAN v from the instance belongs to the branch ENI on v, may carry only
//! that ENI's addresses, and enters the fabric untagged; a packet for a branch address leaves
//! toward the instance tagged with its VLAN and addressed to the branch ENI's MAC.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    btf_maps::{HashMap, PerCpuHashMap},
    helpers::{bpf_skb_change_type, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use eniflow_lab_common::{
    Branch, BranchKey, PortMac, TapKey, POLICY_DENIED_PORT, TAP_FIRST, TAP_LAST,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETHERTYPE: usize = 12;
const IP_SADDR: usize = 14 + 12;
const IP_DADDR: usize = 14 + 16;
const PACKET_HOST: u32 = 0;
const MAX_BRANCHES: usize = 4096;

#[btf_map(name = "lab_branch_sources")]
static BRANCH_SOURCES: HashMap<BranchKey, PortMac, MAX_BRANCHES> = HashMap::new();

#[btf_map(name = "lab_branch_by_addr")]
static BRANCH_BY_ADDR: HashMap<u32, Branch, MAX_BRANCHES> = HashMap::new();

/// tc ingress of a trunk port: frames from the instance.
#[classifier]
pub fn lab_trunk_in(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: reading fields of the __sk_buff the program was given.
    let (tagged, tci, ifindex) = unsafe { ((*skb).vlan_present, (*skb).vlan_tci, (*skb).ifindex) };
    if tagged == 0 {
        // Untagged frames are the trunk ENI's own: a branch address among them is spoofed.
        let Ok(saddr) = ctx.load::<u32>(IP_SADDR) else {
            return TC_ACT_OK as i32;
        };
        let ip = ctx
            .load::<u16>(ETHERTYPE)
            .is_ok_and(|t| u16::from_be(t) == ETH_P_IP);
        // SAFETY: only tests the key's presence.
        if ip && unsafe { BRANCH_BY_ADDR.get(&saddr) }.is_some() {
            return TC_ACT_SHOT;
        }
        return TC_ACT_OK as i32;
    }
    // SAFETY: the program's own skb.
    if unsafe { bpf_skb_vlan_pop(skb) } != 0 {
        return TC_ACT_SHOT;
    }
    let Ok(ethertype) = ctx.load::<u16>(ETHERTYPE) else {
        return TC_ACT_SHOT;
    };
    let Ok(saddr) = ctx.load::<u32>(IP_SADDR) else {
        return TC_ACT_SHOT;
    };
    if u16::from_be(ethertype) != ETH_P_IP {
        return TC_ACT_SHOT;
    }
    let key = BranchKey {
        ifindex,
        vlan: u32::from(tci & 0x0fff),
        addr: saddr,
    };
    // SAFETY: the value is copied out before the map can change.
    let Some(port) = (unsafe { BRANCH_SOURCES.get(&key) }).copied() else {
        // Not this branch ENI's address (or no branch on this VLAN): EC2's source check.
        return TC_ACT_SHOT;
    };
    // To the port's own MAC, so the fabric's stack routes it like any other packet.
    if ctx.store(0, &port.mac, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: the program's own skb.
    unsafe { bpf_skb_change_type(skb, PACKET_HOST) };
    TC_ACT_OK as i32
}

/// tc egress of a trunk port: packets toward the instance.
#[classifier]
pub fn lab_trunk_out(ctx: TcContext) -> i32 {
    let Ok(ethertype) = ctx.load::<u16>(ETHERTYPE) else {
        return TC_ACT_OK as i32;
    };
    if u16::from_be(ethertype) != ETH_P_IP {
        return TC_ACT_OK as i32;
    }
    let Ok(daddr) = ctx.load::<u32>(IP_DADDR) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: the value is copied out before the map can change.
    let Some(branch) = (unsafe { BRANCH_BY_ADDR.get(&daddr) }).copied() else {
        return TC_ACT_OK as i32;
    };
    if ctx.store(0, &branch.mac, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: the program's own skb.
    if unsafe { bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q.to_be(), branch.vlan as u16) } != 0 {
        return TC_ACT_SHOT;
    }
    TC_ACT_OK as i32
}

/// IPv4 packets another tool's program saw on a hook, by its place in the chain.
#[btf_map(name = "lab_taps")]
static TAPS: PerCpuHashMap<TapKey, u64, 64> = PerCpuHashMap::new();

fn tap(ctx: &TcContext, position: u32) -> i32 {
    let ip = ctx
        .load::<u16>(ETHERTYPE)
        .is_ok_and(|t| u16::from_be(t) == ETH_P_IP);
    if ip {
        // SAFETY: reading a field of the program's own __sk_buff.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let key = TapKey { ifindex, position };
        match TAPS.get_ptr_mut(key) {
            // SAFETY: this CPU's slot, only touched by this program run.
            Some(count) => unsafe { *count += 1 },
            None => {
                let _ = TAPS.insert(key, 1, 0);
            }
        }
    }
    TC_ACT_UNSPEC
}

/// Another agent's observability program, placed before eniflow's (tests of chaining).
#[classifier]
pub fn lab_tap_first(ctx: TcContext) -> i32 {
    tap(&ctx, TAP_FIRST)
}

/// The same, placed after eniflow's: it sees only what eniflow passes on.
#[classifier]
pub fn lab_tap_last(ctx: TcContext) -> i32 {
    tap(&ctx, TAP_LAST)
}

/// A network policy agent's program (`POLICY_PROGRAM`): TCP to the denied port is dropped,
/// everything else allowed with a verdict that ends the hook's chain.
#[classifier]
pub fn lab_policy(ctx: TcContext) -> i32 {
    const IP_PROTOCOL: usize = 14 + 9;
    const IPPROTO_TCP: u8 = 6;
    let ip = ctx
        .load::<u16>(ETHERTYPE)
        .is_ok_and(|t| u16::from_be(t) == ETH_P_IP);
    let tcp = ctx.load::<u8>(IP_PROTOCOL).is_ok_and(|p| p == IPPROTO_TCP);
    if ip && tcp {
        let l4 = 14 + usize::from(ctx.load::<u8>(14).unwrap_or(0x45) & 0x0f) * 4;
        // The destination port only: a policy denies a connection, and its replies (from the
        // port) on the other hook never get that far.
        let dport = ctx.load::<u16>(l4 + 2).map(u16::from_be).unwrap_or(0);
        if dport == POLICY_DENIED_PORT {
            return TC_ACT_SHOT;
        }
    }
    TC_ACT_OK as i32
}

/// Nothing at all: what a program on a tc hook costs before it does any work.
#[classifier]
pub fn lab_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
