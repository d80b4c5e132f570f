//! The few header fields the programs decide on, read through [`Frame`] so the same parser runs
//! in the tc programs (over the skb) and on the host (over a byte slice: the fuzz target and the
//! unit tests). Frames on ENIs and pod veths are untagged Ethernet (the kernel moves an 802.1Q
//! tag into skb metadata before tc sees it).

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_HLEN: usize = 14;
/// ARP's sender and target protocol addresses (Ethernet/IPv4 ARP).
const ARP_SENDER_IP: usize = ETH_HLEN + 14;
const ARP_TARGET_IP: usize = ETH_HLEN + 24;
const ETH_SOURCE: usize = 6;
const ETHERTYPE: usize = 12;
const IP_FRAG: usize = ETH_HLEN + 6;
const IP_PROTOCOL: usize = ETH_HLEN + 9;
const IP_SADDR: usize = ETH_HLEN + 12;
const IP_DADDR: usize = ETH_HLEN + 16;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const ICMP_ECHOREPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
/// IPv4 flags and fragment offset (host order): more fragments, offset.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// A value a frame can be read as: plain integers and byte arrays, valid for every bit pattern.
pub trait Field: Copy + sealed::Sealed {}
impl Field for u8 {}
impl Field for u16 {}
impl Field for u32 {}
impl Field for [u8; 6] {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for [u8; 6] {}
}

/// Bytes of a frame, as the wire has them.
pub trait Frame {
    /// The `T` at `offset` (unaligned, in wire order); None when the frame ends before it.
    fn load<T: Field>(&self, offset: usize) -> Option<T>;
}

impl Frame for [u8] {
    #[inline(always)]
    fn load<T: Field>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` holds size_of::<T>() bytes, and every bit pattern is a valid `Field`.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
}

/// An IPv4 packet's addresses (network order) and ports (host order; the echo id for ICMP
/// echo, 0 where the protocol has none or the packet is a fragment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
pub fn ethernet<F: Frame + ?Sized>(frame: &F) -> Option<(u16, [u8; 6])> {
    let ethertype: u16 = frame.load(ETHERTYPE)?;
    let source: [u8; 6] = frame.load(ETH_SOURCE)?;
    Some((u16::from_be(ethertype), source))
}

/// An ARP packet's sender and target IPv4 addresses, as `saddr` and `daddr` (network order).
#[inline(always)]
pub fn arp<F: Frame + ?Sized>(frame: &F) -> Option<Ipv4> {
    Some(Ipv4 {
        saddr: frame.load(ARP_SENDER_IP)?,
        daddr: frame.load(ARP_TARGET_IP)?,
        ..Ipv4::NONE
    })
}

/// The IPv4 header of the frame, or None for anything else (ARP, IPv6, runts).
#[inline(always)]
pub fn ipv4<F: Frame + ?Sized>(frame: &F) -> Option<Ipv4> {
    let ethertype: u16 = frame.load(ETHERTYPE)?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = frame.load(ETH_HLEN)?;
    let frag: u16 = frame.load(IP_FRAG)?;
    let mut packet = Ipv4 {
        saddr: frame.load(IP_SADDR)?,
        daddr: frame.load(IP_DADDR)?,
        protocol: frame.load(IP_PROTOCOL)?,
        ..Ipv4::NONE
    };
    // Every fragment (more to come, or an offset) is reassembled by the stack, the first too.
    if u16::from_be(frag) & (IP_MF | IP_OFFSET) != 0 {
        packet.stack_only = true;
        return Some(packet);
    }
    let l4 = ETH_HLEN + usize::from(version_ihl & 0x0f) * 4;
    match packet.protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            let sport: u16 = frame.load(l4)?;
            let dport: u16 = frame.load(l4 + 2)?;
            packet.sport = u16::from_be(sport);
            packet.dport = u16::from_be(dport);
        }
        IPPROTO_ICMP => {
            let kind: u8 = frame.load(l4)?;
            if kind == ICMP_ECHO || kind == ICMP_ECHOREPLY {
                let id: u16 = frame.load(l4 + 4)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + a 20-byte IPv4 header from 10.0.1.5 to 10.0.2.6, then `l4`.
    fn frame(protocol: u8, frag: u16, l4: &[u8]) -> std::vec::Vec<u8> {
        let mut f = std::vec![0u8; ETH_HLEN];
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[9] = protocol;
        ip[12..16].copy_from_slice(&[10, 0, 1, 5]);
        ip[16..20].copy_from_slice(&[10, 0, 2, 6]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    #[test]
    fn reads_addresses_and_ports_in_the_orders_the_maps_use() {
        let f = frame(IPPROTO_UDP, 0, &[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
        let ip = ipv4(&f[..]).unwrap();
        assert_eq!(ip.saddr.to_ne_bytes(), [10, 0, 1, 5]);
        assert_eq!(ip.daddr.to_ne_bytes(), [10, 0, 2, 6]);
        assert_eq!((ip.sport, ip.dport, ip.stack_only), (12345, 53, false));
        assert_eq!(ethernet(&f[..]), Some((ETH_P_IP, [2, 0, 0, 0, 0, 9])));
    }

    #[test]
    fn fragments_and_icmp_errors_are_the_stacks() {
        // A later fragment carries bytes that look like ports: they are not read.
        let later = frame(IPPROTO_UDP, 185, &[0x30, 0x39, 0, 53]);
        let ip = ipv4(&later[..]).unwrap();
        assert!(ip.stack_only);
        assert_eq!((ip.sport, ip.dport), (0, 0));
        assert!(
            ipv4(&frame(IPPROTO_UDP, IP_MF, &[0; 8])[..])
                .unwrap()
                .stack_only
        );
        let unreachable = frame(IPPROTO_ICMP, 0, &[3, 4, 0, 0, 0, 0, 0, 0]);
        assert!(ipv4(&unreachable[..]).unwrap().stack_only);
        let echo = ipv4(&frame(IPPROTO_ICMP, 0, &[8, 0, 0, 0, 0x12, 0x34, 0, 1])[..]).unwrap();
        assert_eq!(
            (echo.sport, echo.dport, echo.stack_only),
            (0x1234, 0x1234, false)
        );
    }

    #[test]
    fn a_frame_cut_short_is_none() {
        let f = frame(IPPROTO_TCP, 0, &[0x30, 0x39, 0, 80]);
        assert!(ipv4(&f[..]).is_some());
        for len in 0..f.len() {
            assert_eq!(ipv4(&f[..len]), None, "{len} bytes");
        }
        assert_eq!(ethernet(&f[..13]), None);
    }
}
