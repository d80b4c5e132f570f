//! eniflow's tc programs, one per hook. Each passes what it does not own to the next program on
//! the hook (`TC_ACT_UNSPEC`), so policy and observability agents can chain on the same interfaces.
#![no_std]
#![no_main]

mod stats;

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use eniflow_common::{DIRECTION_EGRESS, DIRECTION_INGRESS};

/// tc ingress of an ENI: packets arriving from the VPC.
#[classifier]
pub fn eni_ingress(ctx: TcContext) -> i32 {
    stats::count(&ctx, DIRECTION_INGRESS);
    TC_ACT_UNSPEC
}

/// tc egress of an ENI: packets leaving for the VPC.
#[classifier]
pub fn eni_egress(ctx: TcContext) -> i32 {
    stats::count(&ctx, DIRECTION_EGRESS);
    TC_ACT_UNSPEC
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
