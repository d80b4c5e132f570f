//! The few header fields the programs decide on. Frames on ENIs and pod veths are untagged
//! Ethernet (the kernel moves an 802.1Q tag into skb metadata before tc sees it).

use aya_ebpf::programs::TcContext;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
/// ARP's sender and target protocol addresses (Ethernet/IPv4 ARP).
const ARP_SENDER_IP: usize = ETH_HLEN + 14;
const ARP_TARGET_IP: usize = ETH_HLEN + 24;
const ETH_HLEN: usize = 14;
const ETH_DEST: usize = 0;
const ETHERTYPE: usize = 12;
const IP_PROTOCOL: usize = ETH_HLEN + 9;
const IP_SADDR: usize = ETH_HLEN + 12;
const IP_DADDR: usize = ETH_HLEN + 16;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const ICMP_ECHOREPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
/// IPv4 flags and fragment offset (host order): more fragments, offset.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// An IPv4 packet's addresses (network order) and ports (host order; the echo id for ICMP
/// echo, 0 where the protocol has none or the packet is a fragment).
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub saddr: u32,
    pub daddr: u32,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
    /// A fragment or an ICMP error: it carries no ports to match a flow by, so only the
    /// kernel stack (reassembly, conntrack's related flows, NAT) can handle it right.
    pub stack_only: bool,
}

impl Ipv4 {
    /// No IPv4 header (a frame of another protocol): addresses and ports 0.
    pub const NONE: Ipv4 = Ipv4 {
        saddr: 0,
        daddr: 0,
        protocol: 0,
        sport: 0,
        dport: 0,
        stack_only: false,
    };
}

/// The frame's EtherType (host order) and source MAC; None for a runt.
#[inline(always)]
pub fn ethernet(ctx: &TcContext) -> Option<(u16, [u8; 6])> {
    let ethertype: u16 = ctx.load(ETHERTYPE).ok()?;
    let source: [u8; 6] = ctx.load(ETH_DEST + 6).ok()?;
    Some((u16::from_be(ethertype), source))
}

/// An ARP packet's sender and target IPv4 addresses, as `saddr` and `daddr` (network order).
#[inline(always)]
pub fn arp(ctx: &TcContext) -> Option<Ipv4> {
    Some(Ipv4 {
        saddr: ctx.load(ARP_SENDER_IP).ok()?,
        daddr: ctx.load(ARP_TARGET_IP).ok()?,
        ..Ipv4::NONE
    })
}

/// The IPv4 header of the frame, or None for anything else (ARP, IPv6, runts).
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Option<Ipv4> {
    let ethertype: u16 = ctx.load(ETHERTYPE).ok()?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let frag: u16 = ctx.load(ETH_HLEN + 6).ok()?;
    let mut packet = Ipv4 {
        saddr: ctx.load(IP_SADDR).ok()?,
        daddr: ctx.load(IP_DADDR).ok()?,
        protocol: ctx.load(IP_PROTOCOL).ok()?,
        sport: 0,
        dport: 0,
        stack_only: false,
    };
    // Every fragment (more to come, or an offset) is reassembled by the stack, the first too.
    if u16::from_be(frag) & (IP_MF | IP_OFFSET) != 0 {
        packet.stack_only = true;
        return Some(packet);
    }
    let l4 = ETH_HLEN + usize::from(version_ihl & 0x0f) * 4;
    match packet.protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            let sport: u16 = ctx.load(l4).ok()?;
            let dport: u16 = ctx.load(l4 + 2).ok()?;
            packet.sport = u16::from_be(sport);
            packet.dport = u16::from_be(dport);
        }
        IPPROTO_ICMP => {
            let kind: u8 = ctx.load(l4).ok()?;
            if kind == ICMP_ECHO || kind == ICMP_ECHOREPLY {
                let id: u16 = ctx.load(l4 + 4).ok()?;
                packet.sport = u16::from_be(id);
                packet.dport = packet.sport;
            } else {
                // Errors (unreachable, time exceeded: path-MTU discovery) belong to the flow
                // they quote, which conntrack finds.
                packet.stack_only = true;
            }
        }
        _ => {}
    }
    Some(packet)
}

/// Rewrites the frame's source MAC.
#[inline(always)]
pub fn set_source_mac(ctx: &mut TcContext, source: &[u8; 6]) -> bool {
    ctx.store(ETH_DEST + 6, source, 0).is_ok()
}

/// Rewrites the frame's destination MAC.
#[inline(always)]
pub fn set_dest_mac(ctx: &mut TcContext, dest: &[u8; 6]) -> bool {
    ctx.store(ETH_DEST, dest, 0).is_ok()
}

/// Rewrites the frame's destination and source MACs.
#[inline(always)]
pub fn set_macs(ctx: &mut TcContext, dest: &[u8; 6], source: &[u8; 6]) -> bool {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dest);
    macs[6..].copy_from_slice(source);
    ctx.store(ETH_DEST, &macs, 0).is_ok()
}
