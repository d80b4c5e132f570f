//! The header parser (`eniflow_common::packet`, shared with the host's fuzz target) read over the
//! skb, and the MAC rewrites.

use aya_ebpf::programs::TcContext;
use eniflow_common::packet::{self as parse, Field, Frame};
pub use eniflow_common::packet::{Ipv4, ETH_P_ARP, ETH_P_IP};

const ETH_DEST: usize = 0;
const ETH_SOURCE: usize = 6;

/// The skb as a [`Frame`]: a read inside the linear data is a plain load (checked against
/// `data_end`, as the verifier requires); only headers beyond it (rare) cost a
/// `bpf_skb_load_bytes` call, which was every read's cost before.
struct Skb<'a>(&'a TcContext);

impl Frame for Skb<'_> {
    #[inline(always)]
    fn load<T: Field>(&self, offset: usize) -> Option<T> {
        let at = self.0.data() + offset;
        // At least 2 bytes are checked: for 1, LLVM turns `at + 1 <= end` into `at < end`,
        // which gives a variable-offset packet pointer no range the verifier accepts. A byte
        // at the very end takes the helper instead.
        let checked = core::mem::size_of::<T>().max(2);
        if at + checked <= self.0.data_end() {
            // SAFETY: `at..at + size_of::<T>()` lies inside the packet's linear data (checked
            // just above), and every bit pattern is a valid `Field`.
            return Some(unsafe { core::ptr::read_unaligned(at as *const T) });
        }
        self.0.load(offset).ok()
    }
}

/// The frame's EtherType (host order) and source MAC; None for a runt.
#[inline(always)]
pub fn ethernet(ctx: &TcContext) -> Option<(u16, [u8; 6])> {
    parse::ethernet(&Skb(ctx))
}

/// An ARP packet's sender and target IPv4 addresses, as `saddr` and `daddr` (network order).
#[inline(always)]
pub fn arp(ctx: &TcContext) -> Option<Ipv4> {
    parse::arp(&Skb(ctx))
}

/// The IPv4 header of the frame, or None for anything else (ARP, IPv6, runts).
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Option<Ipv4> {
    parse::ipv4(&Skb(ctx))
}

/// Rewrites the frame's source MAC.
#[inline(always)]
pub fn set_source_mac(ctx: &mut TcContext, source: &[u8; 6]) -> bool {
    ctx.store(ETH_SOURCE, source, 0).is_ok()
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
