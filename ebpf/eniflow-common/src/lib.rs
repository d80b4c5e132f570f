//! Map key and value types shared by eniflow's tc programs and its agent.
//!
//! Every struct is `#[repr(C)]` and padding-free (explicit `_pad` fields) so the kernel, the agent
//! and `bpftool` (through BTF) all see the same layout. No enums or `Option`s: not every bit
//! pattern would be valid.
#![no_std]

/// Pinned objects live under `<bpffs root>/<PIN_VERSION>/`; a layout change bumps it.
pub const PIN_VERSION: &str = "v1";

/// Names of the maps as they appear in the object file, in bpftool and under `maps/`.
pub mod maps {
    /// Per-interface, per-direction packet and byte counters (`IfaceKey` → `IfaceStats`).
    pub const IFACE_STATS: &str = "iface_stats";
    /// What the agent attached where (`IfaceKey` → `Attachment`), so uninstall removes exactly that.
    pub const ATTACHMENTS: &str = "attachments";
    /// Every map the object declares; each is pinned by the agent.
    pub const ALL: &[&str] = &[IFACE_STATS, ATTACHMENTS];
}

/// Names of the tc programs, one per hook.
pub mod programs {
    /// tc ingress of an ENI: packets arriving from the VPC.
    pub const ENI_INGRESS: &str = "eni_ingress";
    /// tc egress of an ENI: packets leaving for the VPC.
    pub const ENI_EGRESS: &str = "eni_egress";
}

/// `IfaceKey::direction` for tc ingress.
pub const DIRECTION_INGRESS: u32 = 0;
/// `IfaceKey::direction` for tc egress.
pub const DIRECTION_EGRESS: u32 = 1;

/// An interface and a tc direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    pub ifindex: u32,
    /// `DIRECTION_INGRESS` or `DIRECTION_EGRESS`.
    pub direction: u32,
}

/// Packets and bytes a program saw on one hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceStats {
    pub packets: u64,
    pub bytes: u64,
}

/// `Attachment::mode`: a tcx link pinned under `links/`.
pub const ATTACH_MODE_TCX: u32 = 1;
/// `Attachment::mode`: a cls_bpf filter on a clsact qdisc.
pub const ATTACH_MODE_CLSACT: u32 = 2;
/// `Attachment::flags`: eniflow created the clsact qdisc (and may remove it when it is empty).
pub const ATTACH_FLAG_CREATED_CLSACT: u32 = 1;

/// One program attachment the agent made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    /// `ATTACH_MODE_TCX` or `ATTACH_MODE_CLSACT`.
    pub mode: u32,
    /// `ATTACH_FLAG_*` bits.
    pub flags: u32,
    /// cls_bpf filter priority (clsact mode only).
    pub priority: u32,
    /// cls_bpf filter handle (clsact mode only).
    pub handle: u32,
}

/// The lab's VPC fabric (tests only): how a trunk ENI's port in the fabric maps VLANs to branch
/// ENIs. EC2 does this in its hypervisor; the lab's kernel has no 8021q module, so BPF does it.
pub mod lab {
    /// `BranchKey` → `PortMac`: which (fabric port, VLAN, source address) may enter, and the
    /// port's own MAC to deliver the untagged frame to.
    pub const BRANCH_SOURCES: &str = "lab_branch_sources";
    /// Branch address (network order) → `Branch`: the tag and MAC a reply to it leaves with.
    pub const BRANCH_BY_ADDR: &str = "lab_branch_by_addr";
    pub const TRUNK_IN: &str = "lab_trunk_in";
    pub const TRUNK_OUT: &str = "lab_trunk_out";

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
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integers with no padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::IfaceKey {}
    unsafe impl aya::Pod for super::IfaceStats {}
    unsafe impl aya::Pod for super::Attachment {}
    unsafe impl aya::Pod for super::lab::BranchKey {}
    unsafe impl aya::Pod for super::lab::PortMac {}
    unsafe impl aya::Pod for super::lab::Branch {}
}
