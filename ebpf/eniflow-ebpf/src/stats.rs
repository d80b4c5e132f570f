//! Per-interface counters (ENI hooks), and the agent's record of its attachments (declared here so the map
//! carries BTF and `bpftool map dump` prints its fields; only the agent writes it).

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuHashMap},
    macros::btf_map,
    programs::TcContext,
};
use eniflow_common::{Attachment, IfaceKey, IfaceStats};

const MAX_HOOKS: usize = eniflow_common::MAX_HOOKS as usize;

/// Per CPU, so counting needs no atomics (the BPF target has none in `core`); readers sum.
#[btf_map(name = "iface_stats")]
static IFACE_STATS: PerCpuHashMap<IfaceKey, IfaceStats, MAX_HOOKS> = PerCpuHashMap::new();

#[btf_map(name = "attachments")]
static ATTACHMENTS: HashMap<IfaceKey, Attachment, MAX_HOOKS> = HashMap::new();

/// Adds this packet to its hook's counters, creating the entry on first use.
#[inline(always)]
pub fn count(ctx: &TcContext, direction: u32) {
    let key = IfaceKey {
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        direction,
    };
    let bytes = u64::from(ctx.len());
    let entry = match IFACE_STATS.get_ptr_mut(key) {
        Some(entry) => entry,
        None => {
            // BPF_NOEXIST: another CPU may have created it meanwhile; either way, look it up again.
            let _ = IFACE_STATS.insert(key, IfaceStats::default(), 1);
            match IFACE_STATS.get_ptr_mut(key) {
                Some(entry) => entry,
                None => return,
            }
        }
    };
    // SAFETY: the pointer came from a successful lookup of this CPU's slot, which only this
    // program run touches until it returns.
    unsafe {
        (*entry).packets += 1;
        (*entry).bytes += bytes;
    }
    // Referenced so the linker keeps the map in the object; the agent owns its contents.
    let _ = &ATTACHMENTS;
}
