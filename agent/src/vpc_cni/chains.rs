//! VPC CNI's iptables chains and rules: `AWS-SNAT-CHAIN-<n>` and `AWS-CONNMARK-CHAIN-<n>` in nat
//! with the jumps to them, its `AWS, CONNMARK` restore rule, and the `AWS, primary ENI`
//! connmark rules in mangle. Recognised by chain name and by VPC CNI's comments, deleted by
//! their exact specification (never by position: kube-proxy may insert rules meanwhile).

use crate::snat::iptables_output;

const CHAIN_PREFIXES: [&str; 2] = ["AWS-SNAT-CHAIN-", "AWS-CONNMARK-CHAIN-"];
/// Comments of VPC CNI's rules in the built-in chains.
const COMMENTS: [&str; 3] = ["AWS SNAT CHAIN", "AWS, CONNMARK", "AWS, primary ENI"];

fn is_own_chain(name: &str) -> bool {
    CHAIN_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether a rule of a built-in chain (as `iptables -S` prints it) is VPC CNI's: it jumps to
/// one of its chains or carries one of its comments.
fn is_own_rule(words: &[String]) -> bool {
    let after = |flag: &'static str| {
        words
            .windows(2)
            .filter(move |w| w[0] == flag)
            .map(|w| w[1].as_str())
    };
    after("-j").any(is_own_chain) || after("--comment").any(|c| COMMENTS.contains(&c))
}

/// Removes VPC CNI's rules from the built-in chains and then its chains. Returns what was
/// removed; what could not be is an error each (the rest is still removed).
pub fn remove() -> (Vec<String>, Vec<String>) {
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    for (table, chain) in [
        ("nat", "POSTROUTING"),
        ("nat", "PREROUTING"),
        ("mangle", "PREROUTING"),
    ] {
        let Ok(listed) = iptables_output(&["-t", table, "-S", chain]) else {
            // No iptables, or no such table: nothing of VPC CNI's here.
            continue;
        };
        for line in listed.lines() {
            let Some(words) = shlex::split(line) else {
                continue;
            };
            if words.first().map(String::as_str) != Some("-A") || !is_own_rule(&words) {
                continue;
            }
            let mut args: Vec<&str> = vec!["-t", table, "-D"];
            args.extend(words[1..].iter().map(String::as_str));
            match iptables_output(&args) {
                Ok(_) => removed.push(format!("iptables -t {table} {line}")),
                Err(e) => failed.push(e.to_string()),
            }
        }
    }
    let Ok(listed) = iptables_output(&["-t", "nat", "-S"]) else {
        return (removed, failed);
    };
    let chains: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| is_own_chain(c))
        .collect();
    // Flushed first, all of them: one may jump to another.
    for chain in &chains {
        if let Err(e) = iptables_output(&["-t", "nat", "-F", chain]) {
            failed.push(e.to_string());
        }
    }
    for chain in chains {
        match iptables_output(&["-t", "nat", "-X", chain]) {
            Ok(_) => removed.push(format!("iptables chain nat {chain}")),
            Err(e) => failed.push(e.to_string()),
        }
    }
    (removed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        shlex::split(line).unwrap()
    }

    #[test]
    fn its_rules_are_known_by_jump_or_comment() {
        assert!(is_own_rule(&words(
            r#"-A POSTROUTING -m comment --comment "AWS SNAT CHAIN" -j AWS-SNAT-CHAIN-0"#
        )));
        assert!(is_own_rule(&words(
            r#"-A PREROUTING -i eni+ -m comment --comment "AWS, outbound connections" -j AWS-CONNMARK-CHAIN-0"#
        )));
        assert!(is_own_rule(&words(
            r#"-A PREROUTING -i eth0 -m comment --comment "AWS, primary ENI" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80"#
        )));
        // eniflow's own chain, kube-proxy's, a look-alike comment: not VPC CNI's.
        assert!(!is_own_rule(&words(
            r#"-A POSTROUTING -m comment --comment "eniflow: SNAT pod traffic leaving the VPC" -j ENIFLOW-SNAT"#
        )));
        assert!(!is_own_rule(&words(
            r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#
        )));
        assert!(!is_own_rule(&words(
            r#"-A PREROUTING -m comment --comment "AWS, primary ENI, but mine" -j ACCEPT"#
        )));
    }
}
