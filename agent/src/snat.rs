//! Off-VPC traffic from pods leaves SNATed to the node's primary address: only that address
//! has a public mapping at the internet gateway, as with VPC CNI. Security-group pods' traffic
//! is not SNATed: it leaves by their branch ENIs. An iptables chain of eniflow's
//! own, replaced in one transaction whenever the primary address or the VPC's CIDRs change; VPC CNI's
//! AWS_VPC_K8S_CNI_EXTERNALSNAT (a NAT gateway does it) and AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS
//! keep their meaning.

use std::{net::Ipv4Addr, process::Command};

use eniflow_common::SG_POD_MARK;

const CHAIN: &str = "ENIFLOW-SNAT";
/// How long an iptables call waits for the xtables lock.
const XTABLES_WAIT_SECONDS: &str = "5";
const COMMENT: &str = "eniflow: SNAT pod traffic leaving the VPC";

/// A bad SNAT setting, or an iptables call that failed (named with its arguments).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SnatError(String);

type Result<T> = std::result::Result<T, SnatError>;

/// VPC CNI's SNAT settings, as the agent's command line takes them.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SnatArgs {
    /// A NAT gateway SNATs off-VPC traffic; the node does not (true/false).
    #[arg(long, env = "AWS_VPC_K8S_CNI_EXTERNALSNAT", default_value = "")]
    pub external_snat: String,
    /// Destinations (comma-separated CIDRs) pods reach without SNAT.
    #[arg(long, env = "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", default_value = "")]
    pub exclude_snat_cidrs: String,
}

/// The SNAT settings and what was last applied.
pub struct Snat {
    external: bool,
    excluded: Vec<(Ipv4Addr, u8)>,
    applied: Option<(Ipv4Addr, Vec<(Ipv4Addr, u8)>)>,
}

impl Snat {
    pub fn from_args(args: &SnatArgs) -> Result<Snat> {
        Snat::new(&args.external_snat, &args.exclude_snat_cidrs)
    }

    /// `external`: "true" or "false" (or empty); `excluded`: comma-separated CIDRs.
    pub fn new(external: &str, excluded_list: &str) -> Result<Snat> {
        let external = match external {
            "true" => true,
            "false" | "" => false,
            other => {
                return Err(SnatError(format!(
                    "AWS_VPC_K8S_CNI_EXTERNALSNAT={other:?}: expected true or false"
                )))
            }
        };
        let mut excluded = Vec::new();
        for text in excluded_list
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            excluded.push(crate::addressing::parse_cidr(text).ok_or_else(|| {
                SnatError(format!(
                    "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: {text:?} is not an IPv4 CIDR"
                ))
            })?);
        }
        Ok(Snat {
            external,
            excluded,
            applied: None,
        })
    }

    /// Makes the chain SNAT to `primary` everything not bound for `vpc_cidrs` or the
    /// excluded CIDRs; a no-op when nothing changed or SNAT is external.
    pub fn apply(&mut self, primary: Ipv4Addr, vpc_cidrs: &[(Ipv4Addr, u8)]) -> Result<()> {
        let wanted = (primary, vpc_cidrs.to_vec());
        if self.external || self.applied.as_ref() == Some(&wanted) {
            return Ok(());
        }
        // One iptables-restore transaction replaces the chain's rules: a flush followed by
        // appends would let new connections leave un-SNATed in between, and conntrack would
        // keep them so. `--noflush` leaves every other chain alone.
        let excluded: Vec<_> = vpc_cidrs.iter().chain(&self.excluded).copied().collect();
        let rules = chain_rules(primary, &excluded);
        restore(&rules)?;
        if iptables(&jump("-C")).is_err() {
            iptables(&jump("-A"))?;
        }
        tracing::info!("off-VPC pod traffic SNATed to {primary} (chain {CHAIN})");
        self.applied = Some(wanted);
        Ok(())
    }
}

/// `iptables <op>` of the POSTROUTING rule that sends packets through eniflow's chain.
fn jump(op: &str) -> [&str; 10] {
    [
        "-t",
        "nat",
        op,
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        CHAIN,
    ]
}

/// The chain in iptables-restore's format: SNAT to `primary` of everything not marked as a
/// security-group pod's and not bound for `excluded` or the node itself.
fn chain_rules(primary: Ipv4Addr, excluded: &[(Ipv4Addr, u8)]) -> String {
    let mark = format!("{SG_POD_MARK:#x}/{SG_POD_MARK:#x}");
    let mut rules = format!("*nat\n:{CHAIN} - [0:0]\n");
    // Security-group pods leave by their branch ENIs, never SNATed (the programs mark them).
    rules += &format!("-A {CHAIN} -m mark --mark {mark} -j RETURN\n");
    for (addr, len) in excluded {
        rules += &format!("-A {CHAIN} -d {addr}/{len} -j RETURN\n");
    }
    rules += &format!(
        "-A {CHAIN} -m addrtype ! --dst-type LOCAL -j SNAT --to-source {primary} --random-fully\nCOMMIT\n"
    );
    rules
}

/// Applies `rules` (iptables-restore's format) in one transaction, touching no other chain.
fn restore(rules: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("iptables-restore")
        .args(["-w", XTABLES_WAIT_SECONDS, "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| SnatError(format!("run iptables-restore: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| SnatError(format!("iptables-restore: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| SnatError(format!("iptables-restore: {e}")))?;
    if !out.status.success() {
        return Err(SnatError(format!(
            "iptables-restore of chain {CHAIN}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Removes eniflow's chain and the jump to it, if they are there (uninstall).
pub fn remove() {
    let _ = iptables(&jump("-D"));
    let _ = iptables(&["-t", "nat", "-F", CHAIN]);
    let _ = iptables(&["-t", "nat", "-X", CHAIN]);
}

fn iptables(args: &[&str]) -> Result<()> {
    iptables_output(args).map(drop)
}

/// Runs `iptables -w <wait> <args>`; its stdout, or an error naming the arguments.
pub fn iptables_output(args: &[&str]) -> Result<String> {
    // Bounded: kube-proxy may hold the xtables lock for seconds; the watcher retries a pass.
    let out = Command::new("iptables")
        .args(["-w", XTABLES_WAIT_SECONDS])
        .args(args)
        .output()
        .map_err(|e| SnatError(format!("run iptables: {e}")))?;
    if !out.status.success() {
        return Err(SnatError(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_keep_vpc_cnis_meaning_and_bad_values_are_named() {
        let snat = Snat::new("", "192.168.0.0/16, 172.16.5.0/24").unwrap();
        assert!(!snat.external);
        assert_eq!(
            snat.excluded,
            vec![
                (Ipv4Addr::new(192, 168, 0, 0), 16),
                (Ipv4Addr::new(172, 16, 5, 0), 24)
            ]
        );
        assert!(Snat::new("true", "").unwrap().external);
        let err = Snat::new("yes", "").err().unwrap().to_string();
        assert!(err.contains("AWS_VPC_K8S_CNI_EXTERNALSNAT"), "{err}");
        let err = Snat::new("", "10.0.0.0/8,banana")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("\"banana\""), "{err}");
    }

    #[test]
    fn the_chain_is_replaced_whole_with_the_vpc_and_exclusions_first() {
        let rules = chain_rules(
            Ipv4Addr::new(10, 0, 1, 5),
            &[
                (Ipv4Addr::new(10, 0, 0, 0), 16),
                (Ipv4Addr::new(192, 168, 0, 0), 16),
            ],
        );
        let lines: Vec<&str> = rules.lines().collect();
        // The chain line makes iptables-restore --noflush empty it in the same transaction.
        assert_eq!(lines[..2], ["*nat", ":ENIFLOW-SNAT - [0:0]"]);
        assert!(lines[2].contains("--mark") && lines[2].ends_with("-j RETURN"));
        assert_eq!(lines[3], "-A ENIFLOW-SNAT -d 10.0.0.0/16 -j RETURN");
        assert_eq!(lines[4], "-A ENIFLOW-SNAT -d 192.168.0.0/16 -j RETURN");
        assert!(lines[5].ends_with("-j SNAT --to-source 10.0.1.5 --random-fully"));
        assert_eq!(lines[6], "COMMIT");
    }

    #[test]
    fn external_snat_installs_nothing() {
        // No iptables call happens: nothing to run, nothing recorded.
        let mut snat = Snat::new("true", "").unwrap();
        snat.apply(
            Ipv4Addr::new(10, 0, 1, 5),
            &[(Ipv4Addr::new(10, 0, 0, 0), 16)],
        )
        .unwrap();
        assert!(snat.applied.is_none());
    }
}
