//! How many pods a node can run: VPC CNI's max-pods calculator, with its options and meaning, plus
//! the trunk ENI that calculator forgets when security groups for pods are on (the trunk takes an
//! ENI slot the figure had promised to pods, and the pods beyond stick in ContainerCreating).

use eniflow_common::MAX_PODS;

use crate::limits::{InstanceLimits, ADDRESSES_PER_PREFIX};

/// Pods on the host network (aws-node/eniflow, kube-proxy) need no VPC address.
const HOST_NETWORK_PODS: u32 = 2;
/// EKS's recommended ceilings: kubelet is not tested beyond them.
const CAP_SMALL: u32 = 110;
const CAP_LARGE: u32 = 250;
const CAP_LARGE_ABOVE_VCPUS: u32 = 30;

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// /28 prefixes instead of secondary addresses (ENABLE_PREFIX_DELEGATION).
    pub prefix_delegation: bool,
    /// Pods take addresses from ENIConfig subnets; the primary ENI carries none.
    pub custom_networking: bool,
    /// MAX_ENI: at most this many ENIs, the primary included.
    pub max_eni: Option<u32>,
    /// Security groups for pods (ENABLE_POD_ENI): the trunk ENI takes a slot.
    pub pod_eni: bool,
    /// The instance's own figure, without EKS's 110/250 ceiling.
    pub uncapped: bool,
}

/// Why the options leave an instance type no pods (or name none the table knows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MaxPodsError(String);

/// `eniflow-agent max-pods`: VPC CNI's calculator options, with their meaning.
#[derive(clap::Args, Clone, Debug)]
pub struct MaxPodsArgs {
    #[arg(long)]
    pub instance_type: String,
    /// /28 prefixes instead of secondary addresses.
    #[arg(long, alias = "cni-prefix-delegation-enabled")]
    pub prefix_delegation: bool,
    /// Pods use ENIConfig subnets: the primary ENI carries none.
    #[arg(long, alias = "cni-custom-networking-enabled")]
    pub custom_networking: bool,
    /// MAX_ENI: at most this many ENIs, the primary included.
    #[arg(long, alias = "cni-max-eni")]
    pub max_eni: Option<u32>,
    /// Security groups for pods: the trunk ENI takes an ENI slot.
    #[arg(long)]
    pub pod_eni: bool,
    /// The instance's own figure, without EKS's ceiling (110 up to 30 vCPUs, else 250).
    #[arg(long, alias = "show-max-allowed")]
    pub uncapped: bool,
}

impl MaxPodsArgs {
    /// The figure for the named instance type, from the bundled table.
    pub fn max_pods(&self) -> Result<u32, MaxPodsError> {
        let limits = crate::limits::bundled(&self.instance_type).ok_or_else(|| {
            MaxPodsError(format!(
                "unknown instance type {:?} (not in the bundled table)",
                self.instance_type
            ))
        })?;
        let opts = Options {
            prefix_delegation: self.prefix_delegation,
            custom_networking: self.custom_networking,
            max_eni: self.max_eni,
            pod_eni: self.pod_eni,
            uncapped: self.uncapped,
        };
        max_pods(&self.instance_type, &limits, &opts)
    }
}

/// The node's max pods, or why the options leave it none.
pub fn max_pods(
    instance_type: &str,
    limits: &InstanceLimits,
    opts: &Options,
) -> Result<u32, MaxPodsError> {
    if opts.prefix_delegation && !limits.supports_prefixes() {
        return Err(MaxPodsError(format!(
            "prefix delegation needs a Nitro instance; {instance_type} runs on Xen"
        )));
    }
    if opts.max_eni == Some(0) {
        return Err(MaxPodsError(
            "max ENI must be at least 1 (the primary ENI)".into(),
        ));
    }
    let enis = opts.max_eni.map_or(limits.default_card_enis, |m| {
        m.min(limits.default_card_enis)
    });
    let reserved = u32::from(opts.custom_networking) + u32::from(opts.pod_eni);
    let pod_enis = enis
        .checked_sub(reserved)
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            MaxPodsError(format!(
                "{instance_type} with {enis} ENI(s) has none left for pods{}{}",
                if opts.custom_networking {
                    " after the primary (custom networking)"
                } else {
                    ""
                },
                if opts.pod_eni { " and the trunk" } else { "" },
            ))
        })?;
    let secondary = limits.ipv4_per_eni.saturating_sub(1);
    let per_eni = if opts.prefix_delegation {
        secondary * ADDRESSES_PER_PREFIX
    } else {
        secondary
    };
    let pods = pod_enis * per_eni + HOST_NETWORK_PODS;
    if opts.uncapped {
        // Beyond that, ADDs would fail once the data plane's maps are full.
        if pods > MAX_PODS {
            return Err(MaxPodsError(format!(
                "{instance_type} would run {pods} pods, and eniflow's data plane holds {MAX_PODS}: drop --uncapped, or lower MAX_ENI"
            )));
        }
        return Ok(pods);
    }
    let cap = if limits.vcpus > CAP_LARGE_ABOVE_VCPUS {
        CAP_LARGE
    } else {
        CAP_SMALL
    };
    Ok(pods.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::bundled;

    fn pods(instance_type: &str, opts: Options) -> Result<u32, MaxPodsError> {
        max_pods(instance_type, &bundled(instance_type).unwrap(), &opts)
    }

    #[test]
    fn figures_match_vpc_cnis_calculator() {
        let uncapped = Options {
            uncapped: true,
            ..Default::default()
        };
        // Secondary-IP mode, VPC CNI's published figures.
        for (instance_type, expected) in [
            ("m5.large", 29),
            ("t3.medium", 17),
            ("c5.4xlarge", 234),
            ("m5.24xlarge", 737),
            ("t3.nano", 4),
        ] {
            assert_eq!(
                pods(instance_type, uncapped),
                Ok(expected),
                "{instance_type}"
            );
        }
        // EKS's ceiling: 110 up to 30 vCPUs, 250 above.
        assert_eq!(pods("c5.4xlarge", Options::default()), Ok(110));
        assert_eq!(pods("m5.24xlarge", Options::default()), Ok(250));
        assert_eq!(pods("m5.large", Options::default()), Ok(29));
        // Custom networking: the primary ENI carries no pods.
        let custom = Options {
            custom_networking: true,
            ..uncapped
        };
        assert_eq!(pods("m5.large", custom), Ok(20));
        // Prefix delegation: 16 addresses per slot.
        let prefixes = Options {
            prefix_delegation: true,
            ..uncapped
        };
        assert_eq!(pods("m5.large", prefixes), Ok(434));
        assert_eq!(
            pods(
                "m5.large",
                Options {
                    prefix_delegation: true,
                    ..Default::default()
                }
            ),
            Ok(110)
        );
        // MAX_ENI limits the ENIs, the primary included.
        let two = Options {
            max_eni: Some(2),
            ..uncapped
        };
        assert_eq!(pods("m5.large", two), Ok(20));
        assert_eq!(
            pods(
                "m5.large",
                Options {
                    max_eni: Some(9),
                    ..uncapped
                }
            ),
            Ok(29)
        );
    }

    #[test]
    fn the_trunk_eni_is_subtracted() {
        let pod_eni = Options {
            pod_eni: true,
            uncapped: true,
            ..Default::default()
        };
        assert_eq!(pods("m5.large", pod_eni), Ok(20));
        assert_eq!(pods("c5.4xlarge", pod_eni), Ok(205));
        let both = Options {
            custom_networking: true,
            ..pod_eni
        };
        assert_eq!(pods("m5.large", both), Ok(11));
    }

    #[test]
    fn options_that_leave_no_pods_are_refused_by_name() {
        let err = pods(
            "m4.large",
            Options {
                prefix_delegation: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .0;
        assert!(err.contains("Nitro") && err.contains("m4.large"), "{err}");
        let err = pods(
            "m5.large",
            Options {
                max_eni: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err()
        .0;
        assert!(err.contains("max ENI"), "{err}");
        let err = pods(
            "t3.nano",
            Options {
                custom_networking: true,
                pod_eni: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .0;
        assert!(err.contains("none left for pods"), "{err}");
        // More pods than the data plane's maps hold: both numbers named.
        let err = pods(
            "m5.24xlarge",
            Options {
                prefix_delegation: true,
                uncapped: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .0;
        assert!(err.contains("11762") && err.contains("4096"), "{err}");
    }
}
