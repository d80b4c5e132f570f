//! What an instance type allows: ENIs, IPv4 addresses per ENI, network cards, vCPUs and the
//! hypervisor. The agent prefers DescribeInstanceTypes; this bundled table (generated from AWS's
//! DescribeInstanceTypes data by `cargo xtask gen-limits`) answers offline and for the max-pods
//! calculator.

use std::{collections::HashMap, sync::OnceLock};

/// The bundled table, one instance type per line (see its header).
const TABLE: &str = include_str!("instance_types.csv");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypervisor {
    Nitro,
    Xen,
    /// Bare metal: DescribeInstanceTypes gives no hypervisor.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceLimits {
    pub vcpus: u32,
    pub hypervisor: Hypervisor,
    pub network_cards: u32,
    /// ENIs across all network cards.
    pub max_enis: u32,
    /// ENIs on the default network card: the ones pods get addresses from, as in VPC CNI.
    pub default_card_enis: u32,
    /// IPv4 addresses per ENI, the primary included; each /28 prefix takes one of them.
    pub ipv4_per_eni: u32,
}

impl InstanceLimits {
    /// Prefix delegation needs the Nitro system (bare metal included), as on EC2.
    pub fn supports_prefixes(&self) -> bool {
        self.hypervisor != Hypervisor::Xen
    }
}

/// Addresses in a /28 prefix; a prefix takes one of an ENI's IPv4 slots.
pub const ADDRESSES_PER_PREFIX: u32 = 16;

/// The bundled limits of `instance_type`, if the table knows it.
pub fn bundled(instance_type: &str) -> Option<InstanceLimits> {
    table().get(instance_type).copied()
}

/// Every instance type in the bundled table.
pub fn bundled_types() -> impl Iterator<Item = &'static str> {
    table().keys().copied()
}

fn table() -> &'static HashMap<&'static str, InstanceLimits> {
    static PARSED: OnceLock<HashMap<&'static str, InstanceLimits>> = OnceLock::new();
    PARSED.get_or_init(|| {
        rows(TABLE)
            .map(|row| row.unwrap_or_else(|e| panic!("bundled instance_types.csv: {e}")))
            .collect()
    })
}

/// A row of the instance table that does not parse, named.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RowError(String);

fn rows(text: &str) -> impl Iterator<Item = Result<(&str, InstanceLimits), RowError>> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with("instance_type,"))
        .map(parse_row)
}

fn parse_row(line: &str) -> Result<(&str, InstanceLimits), RowError> {
    let fields: Vec<&str> = line.split(',').collect();
    let [name, vcpus, hypervisor, cards, max_enis, card_enis, ipv4] = fields[..] else {
        return Err(RowError(format!("{line:?}: expected 7 fields")));
    };
    let number = |what: &str, text: &str| -> Result<u32, RowError> {
        text.parse()
            .map_err(|_| RowError(format!("{name}: {what} {text:?} is not a number")))
    };
    let hypervisor = match hypervisor {
        "nitro" => Hypervisor::Nitro,
        "xen" => Hypervisor::Xen,
        "none" => Hypervisor::None,
        other => return Err(RowError(format!("{name}: unknown hypervisor {other:?}"))),
    };
    Ok((
        name,
        InstanceLimits {
            vcpus: number("vcpus", vcpus)?,
            hypervisor,
            network_cards: number("network_cards", cards)?,
            max_enis: number("max_enis", max_enis)?,
            default_card_enis: number("default_card_enis", card_enis)?,
            ipv4_per_eni: number("ipv4_per_eni", ipv4)?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_knows_common_types() {
        assert!(bundled_types().count() > 1000);
        // Every row parses, and no instance type is listed twice.
        assert!(rows(TABLE).all(|row| row.is_ok()));
        assert_eq!(bundled_types().count(), rows(TABLE).count());
        let m5 = bundled("m5.large").unwrap();
        assert_eq!(
            (m5.default_card_enis, m5.ipv4_per_eni, m5.vcpus),
            (3, 10, 2)
        );
        assert_eq!(bundled("m4.large").unwrap().hypervisor, Hypervisor::Xen);
        assert_eq!(bundled("c5.metal").unwrap().hypervisor, Hypervisor::None);
        assert!(bundled("m5.huge").is_none());
    }

    #[test]
    fn a_bad_row_is_named() {
        assert!(parse_row("x1.big,4,nitro,1,3")
            .unwrap_err()
            .0
            .contains("7 fields"));
        assert!(parse_row("x1.big,4,kvm,1,3,3,10")
            .unwrap_err()
            .0
            .contains("hypervisor"));
        assert!(parse_row("x1.big,four,nitro,1,3,3,10")
            .unwrap_err()
            .0
            .contains("vcpus"));
    }
}
