//! The lab's VPC fabric (tests only): map keys and values of the fabric's eBPF programs, shared
//! with the lab's userspace. A trunk ENI's port in the fabric maps VLANs to branch ENIs (EC2 does
//! this in its hypervisor; the lab's kernel has no 8021q module, so BPF does it), and taps stand
//! for another tool's programs chained beside eniflow's.
#![no_std]

/// `BranchKey` → `PortMac`: which (fabric port, VLAN, source address) may enter, and the
/// port's own MAC to deliver the untagged frame to.
pub const BRANCH_SOURCES: &str = "lab_branch_sources";
/// Branch address (network order) → `Branch`: the tag and MAC a reply to it leaves with.
pub const BRANCH_BY_ADDR: &str = "lab_branch_by_addr";
pub const TRUNK_IN: &str = "lab_trunk_in";
pub const TRUNK_OUT: &str = "lab_trunk_out";
/// Another tool's counting program, before and after eniflow's on a hook (`TapKey` → IPv4
/// packets seen, per CPU).
pub const TAPS: &str = "lab_taps";
pub const TAP_FIRST_PROGRAM: &str = "lab_tap_first";
pub const TAP_LAST_PROGRAM: &str = "lab_tap_last";
/// Does nothing (TC_ACT_UNSPEC): the benches' yardstick for what a tc hook and the kernel's
/// own run-time accounting cost, measured beside eniflow's programs.
pub const NOOP_PROGRAM: &str = "lab_noop";
/// EKS's network policy agent's programs as they behave on a pod's host veth (cls_bpf at
/// priority 1, a final verdict for every packet: TC_ACT_OK, or TC_ACT_SHOT for a denied one):
/// this one denies TCP to `POLICY_DENIED_PORT`.
pub const POLICY_PROGRAM: &str = "lab_policy";
pub const POLICY_DENIED_PORT: u16 = 7777;
pub const TAP_FIRST: u32 = 0;
pub const TAP_LAST: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TapKey {
    pub ifindex: u32,
    /// `TAP_FIRST` or `TAP_LAST`.
    pub position: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BranchKey {
    /// The trunk ENI's port (interface in the fabric namespace).
    pub ifindex: u32,
    pub vlan: u32,
    /// IPv4 address of the branch ENI, network order.
    pub addr: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortMac {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Branch {
    pub vlan: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::BranchKey {}
    unsafe impl aya::Pod for super::TapKey {}
    unsafe impl aya::Pod for super::PortMac {}
    unsafe impl aya::Pod for super::Branch {}
}
