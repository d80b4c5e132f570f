//! What a pod holds its address by, whatever its kind: one of the pool's addresses, or its own
//! branch ENI.

use std::{fmt, net::Ipv4Addr};

use super::branch::{Branch, BranchPod};
use crate::{
    datapath::BranchLink,
    ipam::{Allocation, Owner},
};

/// A pod's hold on its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// An address of the node's pool, on one of its ENIs.
    Pool(Allocation),
    /// The pod's own branch ENI, reached through the trunk on the branch's VLAN.
    Branch(BranchPod),
}

/// What an ADD asks for.
#[derive(Clone, Debug)]
pub enum Want {
    Pool,
    Branch { branch: Branch, trunk_eni: String },
}

impl Hold {
    pub fn owner(&self) -> &Owner {
        match self {
            Hold::Pool(a) => &a.owner,
            Hold::Branch(p) => &p.owner,
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        match self {
            Hold::Pool(a) => a.ipv4,
            Hold::Branch(p) => p.branch.ipv4,
        }
    }

    /// The ENI the pod's packets leave by: a branch pod's is the trunk.
    pub fn eni(&self) -> &str {
        match self {
            Hold::Pool(a) => &a.eni,
            Hold::Branch(p) => &p.trunk_eni,
        }
    }

    /// The pod's (namespace, name), as its first ADD named it.
    pub fn pod(&self) -> (&str, &str) {
        match self {
            Hold::Pool(a) => (&a.pod_namespace, &a.pod_name),
            Hold::Branch(p) => (&p.pod_namespace, &p.pod_name),
        }
    }

    /// How the data plane reaches a branch pod through the trunk.
    pub fn branch_link(&self) -> Option<BranchLink> {
        match self {
            Hold::Pool(_) => None,
            Hold::Branch(p) => Some(p.branch.link()),
        }
    }

    pub fn is_kind_of(&self, want: &Want) -> bool {
        matches!(
            (self, want),
            (Hold::Pool(_), Want::Pool) | (Hold::Branch(_), Want::Branch { .. })
        )
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Pool(a) => write!(f, "{} of ENI {}", a.ipv4, a.eni),
            Hold::Branch(p) => write!(
                f,
                "{} on branch ENI {} (VLAN {} of trunk {})",
                p.branch.ipv4, p.branch.eni_id, p.branch.vlan, p.trunk_eni
            ),
        }
    }
}
