//! eniflow's tc programs: per-pod source routing, direct delivery into pods and anti-spoofing,
//! without per-pod ip rules. Each passes what it does not own to the next program on the hook
//! (`TC_ACT_UNSPEC`), so policy and observability agents can chain on the same interfaces.
//!
//! The kernel stack keeps what needs it: off-VPC traffic (SNAT), services (DNAT), the node's
//! own addresses, and every later packet of a flow the stack NAT'd (see `state::STACK_FLOWS`).
#![no_std]
#![no_main]

mod packet;
mod state;
mod stats;

use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1, TC_ACT_REDIRECT, TC_ACT_UNSPEC},
    helpers::{
        bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_change_type, bpf_skb_vlan_pop,
        bpf_skb_vlan_push,
    },
    macros::classifier,
    programs::TcContext,
};
use eniflow_common::{
    DropReason, Pod, DELIVERED_MARK, DEST_NODE, DEST_VPC, DIRECTION_EGRESS, DIRECTION_INGRESS,
    HOOK_ENI_EGRESS,
    HOOK_ENI_INGRESS, HOOK_POD_EGRESS, SG_POD_MARK,
};
use packet::Ipv4;
use state::Site;

const AF_INET: u32 = 2;
const ETH_P_8021Q: u16 = 0x8100;
const PACKET_HOST: u32 = 0;

/// tc ingress of a pod's host veth: what the pod sends.
#[classifier]
pub fn pod_egress(mut ctx: TcContext) -> i32 {
    let here = ifindex(&ctx);
    let Some(veth) = state::veth(here) else {
        return TC_ACT_UNSPEC;
    };
    let own = u32::from_ne_bytes(veth.pod_addr);
    let Some((ethertype, source_mac)) = packet::ethernet(&ctx) else {
        return TC_ACT_UNSPEC;
    };
    let parsed = match ethertype {
        packet::ETH_P_IP => packet::ipv4(&ctx),
        packet::ETH_P_ARP => packet::arp(&ctx),
        _ => None,
    };
    let site = Site {
        hook: HOOK_POD_EGRESS,
        ifindex: here,
        ip: parsed.unwrap_or(Ipv4::NONE),
    };
    // A pod speaks untagged IPv4 and ARP from its own MAC and address, nothing else: a tag
    // would reach a security-group pod's VLAN, another MAC or address impersonates a pod.
    if vlan_of(&ctx).is_some() {
        return state::drop(&site, own, DropReason::VlanFromPod);
    }
    // Looked up once: the sender's entry serves the MAC check and the routing below. Absent, a
    // zeroed entry stands in (no ENI, no VLAN: the stack's): an Option's unset payload carried
    // this far is read by the verifier as uninitialised registers.
    let (known, sender) = state::pod(own).map_or((false, Pod::default()), |p| (true, p));
    if known && sender.pod_mac != source_mac {
        return state::drop(&site, own, DropReason::SpoofedMac);
    }
    match ethertype {
        packet::ETH_P_IP => {}
        packet::ETH_P_ARP if parsed.is_some_and(|a| a.saddr == own) => return TC_ACT_UNSPEC,
        packet::ETH_P_ARP => return state::drop(&site, own, DropReason::SpoofedArp),
        _ => return state::drop(&site, own, DropReason::UnexpectedProtocol),
    }
    let Some(ip) = parsed else {
        return TC_ACT_UNSPEC;
    };
    let len = u64::from(ctx.len());
    // Anti-spoofing: EC2 would drop it at the ENI; dropping here names the pod that sent it.
    if ip.saddr != own {
        return state::drop(&site, own, DropReason::SpoofedSource);
    }
    state::count(ip.saddr, |s| {
        s.sent_packets += 1;
        s.sent_bytes += len;
    });
    if ip.stack_only || state::is_stack_flow(ip.saddr, ip.protocol, ip.sport) {
        return to_stack(&ip);
    }
    let peer = state::pod(ip.daddr);
    if sender.vlan != 0 {
        // A security-group pod: in standard mode node-local traffic stays local; the rest of
        // its VPC traffic leaves through its branch ENI, on its VLAN of the trunk.
        let strict = state::sg_strict();
        if !strict {
            if let Some(peer) = peer {
                return deliver(&mut ctx, &site, &peer, ip.daddr, len);
            }
        }
        let kind = state::destination(ip.daddr);
        if kind == DEST_VPC || (strict && kind == DEST_NODE) {
            return out_of_branch(&ctx, &site, &sender, ip.saddr);
        }
        // Services and off-VPC: the stack (DNAT) first, then out by the branch ENI, never
        // SNATed to the node (the ENI egress program moves it onto the pod's VLAN).
        // SAFETY: writing the mark of the program's own skb.
        unsafe { (*ctx.skb.skb).mark |= SG_POD_MARK };
    } else {
        // In strict mode a security-group pod is reached through the VPC only.
        if let Some(peer) = peer.filter(|p| p.vlan == 0 || !state::sg_strict()) {
            return deliver(&mut ctx, &site, &peer, ip.daddr, len);
        }
        if sender.eni_ifindex != 0 && state::destination(ip.daddr) == DEST_VPC {
            return out_of_eni(&site, sender.eni_ifindex, ip.saddr);
        }
    }
    // Off-VPC, a service address, the node: the stack routes (and NATs) it, so it must also
    // see this flow's replies.
    state::mark_stack_flow(ip.saddr, ip.protocol, ip.sport);
    to_stack(&ip)
}

/// tc egress of a pod's host veth: what the kernel stack delivers to the pod (packets eniflow
/// delivers with `bpf_redirect_peer` skip this hook; those it delivers through the veth carry
/// `DELIVERED_MARK`).
#[classifier]
pub fn pod_ingress(ctx: TcContext) -> i32 {
    // SAFETY: reading and writing the mark of the program's own skb.
    unsafe {
        let skb = ctx.skb.skb;
        if (*skb).mark & DELIVERED_MARK != 0 {
            (*skb).mark &= !DELIVERED_MARK;
            return TC_ACT_UNSPEC;
        }
    }
    let Some(veth) = state::veth(ifindex(&ctx)) else {
        return TC_ACT_UNSPEC;
    };
    if let Some(ip) = packet::ipv4(&ctx) {
        if ip.daddr == u32::from_ne_bytes(veth.pod_addr) {
            // The stack may have NAT'd it (hostPort, NodePort): the pod's reply must go back
            // through the stack to be un-NAT'd.
            state::mark_stack_flow(ip.daddr, ip.protocol, ip.dport);
            let len = u64::from(ctx.len());
            state::count(ip.daddr, |s| {
                s.received_packets += 1;
                s.received_bytes += len;
            });
        }
    }
    TC_ACT_UNSPEC
}

/// tc ingress of an ENI: packets from the VPC; a local pod's go straight into the pod. On a
/// trunk, VLAN v belongs to the security-group pod on v (the kernel has moved the tag into skb
/// metadata); frames on a VLAN of no eniflow pod pass untouched.
#[classifier]
pub fn eni_ingress(mut ctx: TcContext) -> i32 {
    stats::count(&ctx, DIRECTION_INGRESS);
    let Some(ip) = packet::ipv4(&ctx) else {
        return TC_ACT_UNSPEC;
    };
    let site = Site {
        hook: HOOK_ENI_INGRESS,
        ifindex: ifindex(&ctx),
        ip,
    };
    if let Some(vlan) = vlan_of(&ctx) {
        return branch_ingress(&mut ctx, vlan, &site);
    }
    let Some(pod) = state::pod(ip.daddr) else {
        return TC_ACT_UNSPEC;
    };
    if ip.stack_only || state::is_stack_flow(ip.daddr, ip.protocol, ip.dport) {
        return TC_ACT_UNSPEC;
    }
    let len = u64::from(ctx.len());
    deliver(&mut ctx, &site, &pod, ip.daddr, len)
}

/// tc egress of an ENI: a pod's packet the stack sent out of an ENI that does not own the
/// pod's address (after DNAT, say) moves to the ENI that does; EC2 would drop it here.
#[classifier]
pub fn eni_egress(ctx: TcContext) -> i32 {
    stats::count(&ctx, DIRECTION_EGRESS);
    let Some(ip) = packet::ipv4(&ctx) else {
        return TC_ACT_UNSPEC;
    };
    let Some(pod) = state::pod(ip.saddr) else {
        return TC_ACT_UNSPEC;
    };
    let here = ifindex(&ctx);
    let site = Site {
        hook: HOOK_ENI_EGRESS,
        ifindex: here,
        ip,
    };
    if pod.vlan != 0 && pod.eni_ifindex == here {
        // A security-group pod's frame on its trunk: it carries the branch ENI's MAC.
        if let Some(vlan) = vlan_of(&ctx) {
            if let Some(branch) = state::branch(here, vlan) {
                if branch.pod_addr == ip.saddr.to_ne_bytes() {
                    let mut ctx = ctx;
                    if !packet::set_source_mac(&mut ctx, &branch.mac) {
                        return state::drop(&site, ip.saddr, DropReason::HeaderRewriteFailed);
                    }
                }
            }
        }
        return TC_ACT_UNSPEC;
    }
    if pod.eni_ifindex == 0 || pod.eni_ifindex == here {
        return TC_ACT_UNSPEC;
    }
    if pod.vlan != 0 {
        return out_of_branch(&ctx, &site, &pod, ip.saddr);
    }
    out_of_eni(&site, pod.eni_ifindex, ip.saddr)
}

/// The VLAN id of a tagged frame (tag in skb metadata).
fn vlan_of(ctx: &TcContext) -> Option<u16> {
    // SAFETY: reading fields of the __sk_buff the program was given.
    let (present, tci) = unsafe { ((*ctx.skb.skb).vlan_present, (*ctx.skb.skb).vlan_tci) };
    (present != 0).then_some((tci & 0x0fff) as u16)
}

/// A frame on VLAN `vlan` of a trunk: into the security-group pod on it, untagged.
#[inline(always)]
fn branch_ingress(ctx: &mut TcContext, vlan: u16, site: &Site) -> i32 {
    let ip = &site.ip;
    let trunk = site.ifindex;
    let Some(branch) = state::branch(trunk, vlan) else {
        return TC_ACT_UNSPEC;
    };
    if branch.pod_addr != ip.daddr.to_ne_bytes() {
        return TC_ACT_UNSPEC;
    }
    let Some(pod) = state::pod(ip.daddr) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: the program's own skb.
    if unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
        return state::drop(site, ip.daddr, DropReason::VlanTagFailed);
    }
    if ip.stack_only || state::is_stack_flow(ip.daddr, ip.protocol, ip.dport) {
        // The stack must see it (its NAT): addressed to the trunk itself, as if untagged.
        let Some(eni) = state::eni(trunk) else {
            return state::drop(site, ip.daddr, DropReason::NoTrunkEni);
        };
        if !packet::set_dest_mac(ctx, &eni.mac) {
            return state::drop(site, ip.daddr, DropReason::HeaderRewriteFailed);
        }
        // SAFETY: the program's own skb.
        unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
        return TC_ACT_UNSPEC;
    }
    let len = u64::from(ctx.len());
    deliver(ctx, site, &pod, ip.daddr, len)
}

/// Out of the trunk on the security-group pod's VLAN, toward its branch ENI's subnet router
/// (the trunk's egress program then puts the branch ENI's MAC on it).
#[inline(always)]
fn out_of_branch(ctx: &TcContext, site: &Site, pod: &Pod, pod_addr: u32) -> i32 {
    let Some(branch) = state::branch(pod.eni_ifindex, pod.vlan) else {
        // The branch ENI is not known yet: no way out that EC2 would accept.
        return state::drop(site, pod_addr, DropReason::NoBranchEni);
    };
    // SAFETY: the program's own skb.
    if unsafe { bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q.to_be(), pod.vlan) } != 0 {
        return state::drop(site, pod_addr, DropReason::VlanTagFailed);
    }
    redirect_via(
        site,
        pod.eni_ifindex,
        u32::from_ne_bytes(branch.gateway),
        pod_addr,
    )
}

fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the __sk_buff the program was given.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn to_stack(ip: &Ipv4) -> i32 {
    state::count(ip.saddr, |s| s.sent_to_stack += 1);
    TC_ACT_UNSPEC
}

/// Into `pod`, whose address is `addr`, as if its host veth had sent it: straight in, or out of
/// that veth when a policy program on it must see the packet (`CONFIG_DELIVER_THROUGH_VETH`).
#[inline(always)]
fn deliver(ctx: &mut TcContext, site: &Site, pod: &Pod, addr: u32, len: u64) -> i32 {
    if !packet::set_macs(ctx, &pod.pod_mac, &pod.host_mac) {
        return state::drop(site, addr, DropReason::HeaderRewriteFailed);
    }
    let verdict = if state::deliver_through_veth() {
        // SAFETY: the program's own skb's mark; then a helper call with plain arguments.
        unsafe {
            (*ctx.skb.skb).mark |= DELIVERED_MARK;
            bpf_redirect(pod.host_ifindex, 0)
        }
    } else {
        // SAFETY: a helper call with plain arguments.
        unsafe { bpf_redirect_peer(pod.host_ifindex, 0) }
    } as i32;
    if verdict != TC_ACT_REDIRECT as i32 {
        state::count_drop(site, addr, DropReason::RedirectFailed);
        return verdict;
    }
    state::count(addr, |s| {
        s.received_packets += 1;
        s.received_bytes += len;
    });
    verdict
}

/// Out of the ENI `eni_ifindex` toward its subnet's router: per-pod source routing.
#[inline(always)]
fn out_of_eni(site: &Site, eni_ifindex: u32, pod_addr: u32) -> i32 {
    let Some(eni) = state::eni(eni_ifindex) else {
        // Not known yet: the stack's route is the best there is.
        return TC_ACT_UNSPEC;
    };
    redirect_via(site, eni_ifindex, u32::from_ne_bytes(eni.gateway), pod_addr)
}

/// Out of `ifindex` to the next hop `gateway` (network order), L2 filled in by the kernel.
#[inline(always)]
fn redirect_via(site: &Site, ifindex: u32, gateway: u32, pod_addr: u32) -> i32 {
    let mut next_hop = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: gateway },
    };
    // SAFETY: the parameters point at a live struct of the size given.
    let verdict = unsafe {
        bpf_redirect_neigh(
            ifindex,
            &mut next_hop,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    } as i32;
    if verdict != TC_ACT_REDIRECT as i32 {
        state::count_drop(site, pod_addr, DropReason::RedirectFailed);
    }
    verdict
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel only loads GPL-compatible programs that call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
