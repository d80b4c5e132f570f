//! What a lab is made of, and the checks that refuse a spec EC2 would refuse, naming the field.

use std::{fmt, net::Ipv4Addr};

/// A VPC, its subnets and security groups, the node's instance type, and who else is there.
#[derive(Clone, Debug)]
pub struct LabSpec {
    pub instance_type: String,
    /// The VPC's CIDR blocks; the first is its primary.
    pub vpc_cidrs: Vec<String>,
    pub subnets: Vec<SubnetSpec>,
    /// Security group names, created in the VPC.
    pub security_groups: Vec<String>,
    /// Index into `subnets` of the node's primary ENI.
    pub node_subnet: usize,
    /// One remote host (a small instance with its own netns) on every subnet.
    pub hosts: bool,
    /// A second node of the same type in the node's subnet.
    pub second_node: bool,
}

#[derive(Clone, Debug)]
pub struct SubnetSpec {
    pub cidr: String,
    pub az: String,
    pub tags: Vec<(String, String)>,
}

impl Default for LabSpec {
    /// An m5.large in 10.0.0.0/16 with two /24 subnets in us-west-2a and one security group.
    fn default() -> Self {
        Self {
            instance_type: "m5.large".into(),
            vpc_cidrs: vec!["10.0.0.0/16".into()],
            subnets: vec![
                SubnetSpec {
                    cidr: "10.0.1.0/24".into(),
                    az: "us-west-2a".into(),
                    tags: vec![],
                },
                SubnetSpec {
                    cidr: "10.0.2.0/24".into(),
                    az: "us-west-2a".into(),
                    tags: vec![],
                },
            ],
            security_groups: vec!["pods".into()],
            node_subnet: 0,
            hosts: true,
            second_node: false,
        }
    }
}

/// A spec the lab refuses: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid lab spec: {}: {}", self.field, self.message)
    }
}

impl std::error::Error for SpecError {}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// An IPv4 CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(field: &str, text: &str) -> Result<Self, SpecError> {
        let bad = || {
            refuse(
                field,
                format!("{text:?} is not an IPv4 CIDR block (a.b.c.d/n)"),
            )
        };
        let (addr, len) = text.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        let cidr = Self { base, len };
        if cidr.network() != u32::from(base) {
            return Err(refuse(
                field,
                format!(
                    "{text} has host bits set (network is {})",
                    cidr.display_network()
                ),
            ));
        }
        Ok(cidr)
    }

    fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        }
    }

    fn network(&self) -> u32 {
        u32::from(self.base) & self.mask()
    }

    fn last(&self) -> u32 {
        self.network() | !self.mask()
    }

    fn display_network(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.network()), self.len)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.network() <= other.last() && other.network() <= self.last()
    }

    pub fn contains(&self, other: &Cidr) -> bool {
        self.network() <= other.network() && other.last() <= self.last()
    }
}

impl LabSpec {
    /// Everything that can be checked without EC2 (the instance type is checked against the
    /// emulator's DescribeInstanceTypes when the lab starts).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.instance_type.trim().is_empty() {
            return Err(refuse("instance_type", "is empty"));
        }
        if self.vpc_cidrs.is_empty() {
            return Err(refuse("vpc_cidrs", "a VPC needs at least one CIDR block"));
        }
        let mut vpc = Vec::new();
        for (i, text) in self.vpc_cidrs.iter().enumerate() {
            let field = format!("vpc_cidrs[{i}]");
            let cidr = Cidr::parse(&field, text)?;
            if !(16..=28).contains(&cidr.len) {
                return Err(refuse(
                    field,
                    format!("{text}: a VPC block must be between /16 and /28"),
                ));
            }
            if let Some(j) = vpc.iter().position(|c: &Cidr| c.overlaps(&cidr)) {
                return Err(refuse(
                    field,
                    format!("{text} overlaps vpc_cidrs[{j}] {}", self.vpc_cidrs[j]),
                ));
            }
            vpc.push(cidr);
        }
        if self.subnets.is_empty() {
            return Err(refuse("subnets", "the node needs at least one subnet"));
        }
        let mut subnets: Vec<Cidr> = Vec::new();
        for (i, subnet) in self.subnets.iter().enumerate() {
            let field = format!("subnets[{i}].cidr");
            let cidr = Cidr::parse(&field, &subnet.cidr)?;
            if !(16..=28).contains(&cidr.len) {
                return Err(refuse(
                    field,
                    format!("{}: a subnet must be between /16 and /28", subnet.cidr),
                ));
            }
            if !vpc.iter().any(|v| v.contains(&cidr)) {
                return Err(refuse(
                    field,
                    format!(
                        "{} is outside the VPC's CIDR blocks {}",
                        subnet.cidr,
                        self.vpc_cidrs.join(", ")
                    ),
                ));
            }
            if let Some(j) = subnets.iter().position(|c| c.overlaps(&cidr)) {
                return Err(refuse(
                    field,
                    format!(
                        "{} overlaps subnets[{j}] {}",
                        subnet.cidr, self.subnets[j].cidr
                    ),
                ));
            }
            subnets.push(cidr);
            let az_ok = subnet
                .az
                .strip_prefix(super::emulator::REGION)
                .is_some_and(|zone| {
                    zone.len() == 1 && zone.chars().all(|c| c.is_ascii_lowercase())
                });
            if !az_ok {
                return Err(refuse(
                    format!("subnets[{i}].az"),
                    format!(
                        "{:?} is not an availability zone of {}",
                        subnet.az,
                        super::emulator::REGION
                    ),
                ));
            }
        }
        if self.node_subnet >= self.subnets.len() {
            return Err(refuse(
                "node_subnet",
                format!(
                    "{} is not the index of a subnet (there are {})",
                    self.node_subnet,
                    self.subnets.len()
                ),
            ));
        }
        for (i, name) in self.security_groups.iter().enumerate() {
            if name.trim().is_empty() || self.security_groups[..i].contains(name) {
                return Err(refuse(
                    format!("security_groups[{i}]"),
                    format!("{name:?} is empty or repeated"),
                ));
            }
        }
        Ok(())
    }
}
