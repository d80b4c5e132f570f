//! The pool's knobs, read (by clap) from the environment under VPC CNI's names and with VPC CNI's meaning,
//! so an aws-node configuration carries over. Anything unknown or contradictory stops the agent at
//! start with one line naming the knob.

use std::time::Duration;

/// The default cooldown before a released address is handed out again. VPC CNI uses 30 s; the
/// kernel keeps a stale conntrack entry for a vanished pod's flow up to 120 s (SYN_SENT, TIME_WAIT
/// and assured UDP streams all time out at 120 s), and a new pod reusing the address within that
/// window has its first packets captured by the old entry. 120 s outlives them all.
pub const DEFAULT_IP_COOLDOWN: Duration = Duration::from_secs(120);

/// The value aws-node's own manifests give WARM_PREFIX_TARGET, prefix delegation on or off.
const AWS_NODE_MANIFEST_WARM_PREFIX_TARGET: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Knobs {
    /// ENABLE_PREFIX_DELEGATION: /28 prefixes instead of secondary addresses.
    pub prefix_delegation: bool,
    /// WARM_ENI_TARGET: whole ENIs' worth of free addresses to keep (default 1).
    pub warm_eni_target: u32,
    /// WARM_IP_TARGET: free addresses to keep; 0 or unset means not used.
    pub warm_ip_target: Option<u32>,
    /// MINIMUM_IP_TARGET: addresses to hold in total; 0 or unset means not used.
    pub minimum_ip_target: Option<u32>,
    /// WARM_PREFIX_TARGET: free /28 prefixes to keep (prefix mode only).
    pub warm_prefix_target: u32,
    /// MAX_ENI: at most this many ENIs, the primary included; -1 or unset: the instance's limit.
    pub max_eni: Option<u32>,
    /// IP_COOLDOWN_PERIOD: how long a released address rests before reuse.
    pub ip_cooldown: Duration,
    /// ENABLE_SUBNET_DISCOVERY: new ENIs may go to other subnets tagged for CNI (default true).
    pub subnet_discovery: bool,
    /// ENABLE_POD_ENI: security groups for pods; the trunk ENI takes one of the node's ENI slots.
    pub pod_eni: bool,
    /// AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG: pods use the subnet of the node's ENIConfig.
    pub custom_network: bool,
    /// ENI_CONFIG_LABEL_DEF: the node label naming the ENIConfig.
    pub eni_config_label: String,
    /// ENI_CONFIG_ANNOTATION_DEF: the node annotation naming the ENIConfig.
    pub eni_config_annotation: String,
    /// ENIFLOW_MAX_PODS: the max pods the node's kubelet runs with, when it is not the
    /// instance type's figure (capped at 110/250 as EKS caps it): the pool holds no more.
    pub max_pods: Option<u32>,
}

impl Knobs {
    /// Reads the knobs through `var` (the environment, or a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Knobs, KnobError> {
        let prefix_delegation = boolean(&var, "ENABLE_PREFIX_DELEGATION")?.unwrap_or(false);
        let warm_prefix_target = count(&var, "WARM_PREFIX_TARGET")?.unwrap_or(0);
        if !prefix_delegation
            && warm_prefix_target != 0
            && warm_prefix_target != AWS_NODE_MANIFEST_WARM_PREFIX_TARGET
        {
            return Err(KnobError(format!(
                "WARM_PREFIX_TARGET={warm_prefix_target} needs ENABLE_PREFIX_DELEGATION=true"
            )));
        }
        let max_eni = match var("MAX_ENI").as_deref().map(str::trim) {
            None | Some("") | Some("-1") => None,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(KnobError(format!(
                        "MAX_ENI={text:?}: must be -1 (the instance's limit) or at least 1"
                    )))
                }
            },
        };
        let max_pods = match count(&var, "ENIFLOW_MAX_PODS")? {
            Some(n) if !(1..=eniflow_common::MAX_PODS).contains(&n) => {
                return Err(KnobError(format!(
                    "ENIFLOW_MAX_PODS={n}: must be 1 to {} (the pods eniflow's data plane holds)",
                    eniflow_common::MAX_PODS
                )))
            }
            n => n,
        };
        Ok(Knobs {
            max_pods,
            prefix_delegation,
            warm_eni_target: count(&var, "WARM_ENI_TARGET")?.unwrap_or(1),
            warm_ip_target: count(&var, "WARM_IP_TARGET")?.filter(|&n| n > 0),
            minimum_ip_target: count(&var, "MINIMUM_IP_TARGET")?.filter(|&n| n > 0),
            warm_prefix_target: if prefix_delegation {
                warm_prefix_target
            } else {
                0
            },
            max_eni,
            ip_cooldown: count(&var, "IP_COOLDOWN_PERIOD")?
                .map_or(DEFAULT_IP_COOLDOWN, |s| Duration::from_secs(s.into())),
            subnet_discovery: boolean(&var, "ENABLE_SUBNET_DISCOVERY")?.unwrap_or(true),
            pod_eni: boolean(&var, "ENABLE_POD_ENI")?.unwrap_or(false),
            custom_network: boolean(&var, "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG")?.unwrap_or(false),
            eni_config_label: text(&var, "ENI_CONFIG_LABEL_DEF")
                .unwrap_or_else(|| super::eniconfig::DEFAULT_KEY.into()),
            eni_config_annotation: text(&var, "ENI_CONFIG_ANNOTATION_DEF")
                .unwrap_or_else(|| super::eniconfig::DEFAULT_KEY.into()),
        })
    }

    /// The knobs in effect (defaults applied), by VPC CNI's variable names, as introspection
    /// shows them; unset targets are null.
    pub fn effective(&self) -> serde_json::Value {
        serde_json::json!({
            "ENABLE_PREFIX_DELEGATION": self.prefix_delegation,
            "WARM_ENI_TARGET": self.warm_eni_target,
            "WARM_IP_TARGET": self.warm_ip_target,
            "MINIMUM_IP_TARGET": self.minimum_ip_target,
            "WARM_PREFIX_TARGET": self.warm_prefix_target,
            "MAX_ENI": self.max_eni,
            "IP_COOLDOWN_PERIOD": self.ip_cooldown.as_secs(),
            "ENABLE_SUBNET_DISCOVERY": self.subnet_discovery,
            "ENABLE_POD_ENI": self.pod_eni,
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": self.custom_network,
            "ENI_CONFIG_LABEL_DEF": self.eni_config_label,
            "ENI_CONFIG_ANNOTATION_DEF": self.eni_config_annotation,
            "ENIFLOW_MAX_PODS": self.max_pods,
        })
    }

    /// Reads the knobs from name/value pairs (tests).
    #[cfg(test)]
    pub(crate) fn from_pairs(vars: &[(&str, &str)]) -> Result<Knobs, KnobError> {
        Knobs::from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }
}

/// The knobs as the agent's command line takes them: each a flag, or VPC CNI's environment
/// variable, shown by `--help`; checked together by `Knobs::from_vars`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KnobArgs {
    /// /28 prefixes instead of secondary addresses (true/false).
    #[arg(long, env = "ENABLE_PREFIX_DELEGATION")]
    pub enable_prefix_delegation: Option<String>,
    /// Whole ENIs' worth of free addresses to keep (default 1).
    #[arg(long, env = "WARM_ENI_TARGET")]
    pub warm_eni_target: Option<String>,
    /// Free addresses to keep; 0 or unset: not used.
    #[arg(long, env = "WARM_IP_TARGET")]
    pub warm_ip_target: Option<String>,
    /// Addresses to hold in total; 0 or unset: not used.
    #[arg(long, env = "MINIMUM_IP_TARGET")]
    pub minimum_ip_target: Option<String>,
    /// Free /28 prefixes to keep (prefix delegation only).
    #[arg(long, env = "WARM_PREFIX_TARGET")]
    pub warm_prefix_target: Option<String>,
    /// At most this many ENIs, the primary included; -1: the instance's limit.
    #[arg(long, env = "MAX_ENI", allow_hyphen_values = true)]
    pub max_eni: Option<String>,
    /// Seconds a released address rests before reuse (default 120).
    #[arg(long, env = "IP_COOLDOWN_PERIOD")]
    pub ip_cooldown_period: Option<String>,
    /// New ENIs may go to other subnets tagged for CNI (default true).
    #[arg(long, env = "ENABLE_SUBNET_DISCOVERY")]
    pub enable_subnet_discovery: Option<String>,
    /// Security groups for pods (default false).
    #[arg(long, env = "ENABLE_POD_ENI")]
    pub enable_pod_eni: Option<String>,
    /// Custom networking: pods use the subnet of the node's ENIConfig (default false).
    #[arg(long, env = "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG")]
    pub custom_network_cfg: Option<String>,
    /// The node label naming the ENIConfig.
    #[arg(long, env = "ENI_CONFIG_LABEL_DEF")]
    pub eni_config_label_def: Option<String>,
    /// The node annotation naming the ENIConfig.
    #[arg(long, env = "ENI_CONFIG_ANNOTATION_DEF")]
    pub eni_config_annotation_def: Option<String>,
    /// The node's max pods when its kubelet's --max-pods is not the instance type's figure
    /// (1 to 4096); unset: that figure, capped at 110/250 as EKS caps it.
    #[arg(long, env = "ENIFLOW_MAX_PODS")]
    pub max_pods: Option<String>,
}

impl KnobArgs {
    pub fn knobs(&self) -> Result<Knobs, KnobError> {
        Knobs::from_vars(|name| self.var(name).map(str::to_owned))
    }

    /// The value given under VPC CNI's name.
    fn var(&self, name: &str) -> Option<&str> {
        let value = match name {
            "ENABLE_PREFIX_DELEGATION" => &self.enable_prefix_delegation,
            "WARM_ENI_TARGET" => &self.warm_eni_target,
            "WARM_IP_TARGET" => &self.warm_ip_target,
            "MINIMUM_IP_TARGET" => &self.minimum_ip_target,
            "WARM_PREFIX_TARGET" => &self.warm_prefix_target,
            "MAX_ENI" => &self.max_eni,
            "IP_COOLDOWN_PERIOD" => &self.ip_cooldown_period,
            "ENABLE_SUBNET_DISCOVERY" => &self.enable_subnet_discovery,
            "ENABLE_POD_ENI" => &self.enable_pod_eni,
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG" => &self.custom_network_cfg,
            "ENI_CONFIG_LABEL_DEF" => &self.eni_config_label_def,
            "ENI_CONFIG_ANNOTATION_DEF" => &self.eni_config_annotation_def,
            "ENIFLOW_MAX_PODS" => &self.max_pods,
            _ => return None,
        };
        value.as_deref()
    }
}

/// A knob's value is malformed or contradicts another: one line naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KnobError(pub String);

/// A whole number ≥ 0, or None when unset or empty.
fn count(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<u32>, KnobError> {
    match var(name).as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            KnobError(format!(
                "{name}={text:?}: must be a whole number, 0 or more"
            ))
        }),
    }
}

fn text(var: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    var(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn boolean(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<bool>, KnobError> {
    match var(name).as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(text) => Err(KnobError(format!("{name}={text:?}: must be true or false"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(vars: &[(&str, &str)]) -> Result<Knobs, KnobError> {
        Knobs::from_pairs(vars)
    }

    #[test]
    fn defaults_are_vpc_cnis_but_the_cooldown() {
        let k = knobs(&[]).unwrap();
        assert!(!k.prefix_delegation);
        assert_eq!(k.warm_eni_target, 1);
        assert_eq!(
            (k.warm_ip_target, k.minimum_ip_target, k.max_eni),
            (None, None, None)
        );
        assert_eq!(k.ip_cooldown, Duration::from_secs(120));
    }

    #[test]
    fn aws_node_settings_carry_over() {
        // aws-node's manifest sets WARM_PREFIX_TARGET=1 even with prefix delegation off.
        let k = knobs(&[
            ("WARM_PREFIX_TARGET", "1"),
            ("WARM_IP_TARGET", "5"),
            ("MINIMUM_IP_TARGET", "0"),
            ("MAX_ENI", "-1"),
            ("IP_COOLDOWN_PERIOD", "30"),
        ])
        .unwrap();
        assert_eq!(k.warm_prefix_target, 0);
        assert_eq!((k.warm_ip_target, k.minimum_ip_target), (Some(5), None));
        assert_eq!(k.ip_cooldown, Duration::from_secs(30));
        let k = knobs(&[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "2"),
            ("MAX_ENI", "2"),
        ])
        .unwrap();
        assert_eq!((k.warm_prefix_target, k.max_eni), (2, Some(2)));
    }

    #[test]
    fn max_pods_is_the_instance_types_unless_given() {
        assert_eq!(knobs(&[]).unwrap().max_pods, None);
        let k = knobs(&[("ENIFLOW_MAX_PODS", "1000")]).unwrap();
        assert_eq!(k.max_pods, Some(1000));
    }

    #[test]
    fn bad_knobs_are_named() {
        for (vars, named) in [
            (
                &[("WARM_PREFIX_TARGET", "3")][..],
                "WARM_PREFIX_TARGET=3 needs",
            ),
            (&[("WARM_IP_TARGET", "-1")], "WARM_IP_TARGET"),
            (&[("MINIMUM_IP_TARGET", "ten")], "MINIMUM_IP_TARGET"),
            (&[("WARM_ENI_TARGET", "-2")], "WARM_ENI_TARGET"),
            (&[("MAX_ENI", "0")], "MAX_ENI"),
            (&[("MAX_ENI", "-5")], "MAX_ENI"),
            (
                &[("ENABLE_PREFIX_DELEGATION", "yes")],
                "ENABLE_PREFIX_DELEGATION",
            ),
            (&[("IP_COOLDOWN_PERIOD", "1m")], "IP_COOLDOWN_PERIOD"),
            (
                &[("ENIFLOW_MAX_PODS", "0")],
                "ENIFLOW_MAX_PODS=0: must be 1 to 4096",
            ),
            (&[("ENIFLOW_MAX_PODS", "5000")], "ENIFLOW_MAX_PODS=5000"),
        ] {
            let err = knobs(vars).unwrap_err().0;
            assert!(err.contains(named), "{vars:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
