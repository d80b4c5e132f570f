//! Taking a node over from aws-node in place. The pool imports VPC CNI's checkpoint; branch
//! pods, which VPC CNI keeps no record of, are found by their `vlan.eth.<id>` devices; the data
//! plane then writes every such pod into its maps. Only after that does `remove_carried` delete
//! what served those pods (their rules, tables and VLAN devices) and VPC CNI's node-wide rules
//! and chains, so no packet finds neither path. Every start runs it: what a crash left half
//! done is finished, and a node with nothing of VPC CNI's left sees no change.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use rtnetlink::{packet_route::rule::RuleAction, Handle};
use serde::Serialize;

use super::{
    chains, nft_connmark, routes, rules, vlan_devices, RuleKind, VlanDevice, BRANCH_VETH_PREFIX,
    LOCAL_TABLE, MAIN_TABLE, VLAN_TABLE_BASE,
};
use crate::{
    cni::branch::{taken_over_owner, Branch, BranchPod},
    datapath::{EniPort, Plane, PodPort},
};

/// How long the start waits for the trunk ENI when VLAN devices need it.
const TRUNK_WAIT: Duration = Duration::from_secs(20);

/// What a takeover did, for the log and for `takeover.json` beside the checkpoint.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Branch pods found by their VLAN devices.
    pub branch_pods_found: Vec<String>,
    pub removed: Vec<String>,
    /// VPC CNI's, but not removed: what is named is why.
    pub kept: Vec<String>,
    pub failed: Vec<String>,
}

impl Report {
    /// Logs each line, and writes the report to `path` (an operator's record of what moved).
    pub fn log_and_save(&self, path: &std::path::Path) {
        for line in &self.branch_pods_found {
            tracing::info!("takeover: found VPC CNI's branch pod {line}");
        }
        for line in &self.removed {
            tracing::info!("takeover: removed VPC CNI's {line}");
        }
        for line in &self.kept {
            tracing::warn!("takeover: kept VPC CNI's {line}");
        }
        for line in &self.failed {
            tracing::warn!("takeover: {line}");
        }
        let text = serde_json::to_vec_pretty(self).expect("a report serialises");
        if let Err(e) = crate::files::write_atomically(path, &text) {
            tracing::warn!("takeover: write {}: {e}", path.display());
        }
    }
}

/// The branch pods VPC CNI wired that eniflow holds no record of, from each VLAN device
/// on the trunk: its VLAN id and MAC (the branch ENI's), its table's default gateway, and the
/// pod's address and host veth from the table's /32 route and `iif` rule (strict mode) or
/// the main table's route and `from` rule (standard mode).
pub async fn find_branch_pods(
    nl: &Handle,
    plane: &Plane,
    held: &[BranchPod],
    report: &mut Report,
) -> Result<Vec<BranchPod>, rtnetlink::Error> {
    let devices: Vec<VlanDevice> = vlan_devices(nl)
        .await?
        .into_iter()
        .filter(|d| !held.iter().any(|p| p.branch.vlan == d.vlan))
        .collect();
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let Some(trunk) = wait_for_trunk(plane).await else {
        for d in &devices {
            report.kept.push(format!(
                "{}: the node has no trunk ENI in eniflow's table after {TRUNK_WAIT:?}",
                d.name
            ));
        }
        return Ok(Vec::new());
    };
    let (rules, routes) = (rules(nl).await?, routes(nl).await?);
    let links: Vec<(u32, String)> = crate::netlink::links(nl)
        .await?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    Ok(branch_pods_of(
        devices, &trunk, &rules, &routes, &links, report,
    ))
}

/// `find_branch_pods` on what netlink listed (`links`: ifindex and name).
fn branch_pods_of(
    devices: Vec<VlanDevice>,
    trunk: &EniPort,
    rules: &[super::Rule],
    routes: &[super::Route],
    links: &[(u32, String)],
    report: &mut Report,
) -> Vec<BranchPod> {
    let ifindex = |name: &str| links.iter().find(|(_, n)| n == name).map(|(i, _)| *i);
    let ifname = |index: u32| {
        links
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, n)| n.clone())
    };
    let mut found = Vec::new();
    for device in devices {
        if device.parent != trunk.ifindex {
            report.kept.push(format!(
                "{}: its parent (ifindex {}) is not the trunk {}",
                device.name, device.parent, trunk.ifname
            ));
            continue;
        }
        let table = device.table();
        let in_table = |r: &&super::Route| r.table == table;
        let Some(gateway) = routes
            .iter()
            .filter(in_table)
            .find(|r| r.destination.is_none())
            .and_then(|r| r.gateway)
        else {
            report.kept.push(format!(
                "{}: table {table} has no default route",
                device.name
            ));
            continue;
        };
        // Strict: `iif <veth> lookup T` and `<pod>/32 dev <veth>` in T. Standard: `from <pod>
        // lookup T` and `<pod>/32 dev <veth>` in main.
        let strict = rules.iter().find_map(|r| match &r.kind {
            Some(RuleKind::Iif(iif, t)) if *t == table && *iif != device.name => {
                let ifindex = ifindex(iif)?;
                let pod = routes.iter().filter(in_table).find_map(|r| {
                    (r.oif == Some(ifindex))
                        .then_some(r.destination)
                        .flatten()
                        .filter(|(_, len)| *len == 32)
                })?;
                Some((pod.0, iif.clone()))
            }
            _ => None,
        });
        let standard = || {
            rules.iter().find_map(|r| match &r.kind {
                Some(RuleKind::FromPod(pod, t)) if *t == table => {
                    let oif = routes
                        .iter()
                        .filter(|r| r.table == MAIN_TABLE)
                        .find(|r| r.destination == Some((*pod, 32)))?
                        .oif?;
                    Some((*pod, ifname(oif)?))
                }
                _ => None,
            })
        };
        let Some((addr, veth)) = strict.or_else(standard) else {
            report.kept.push(format!(
                "{}: no pod's rule and route lead to table {table}",
                device.name
            ));
            continue;
        };
        let Some(subnet) = super::subnet_of_gateway(addr, gateway) else {
            report.kept.push(format!(
                "{}: gateway {gateway} is not in a subnet with the pod's {addr}",
                device.name
            ));
            continue;
        };
        report.branch_pods_found.push(format!(
            "{addr} on {} (VLAN {}), veth {veth}",
            device.name, device.vlan
        ));
        found.push(BranchPod {
            owner: taken_over_owner(&veth),
            branch: Branch {
                // VPC CNI keeps no record of it; the pod's annotation names it.
                eni_id: String::new(),
                mac: device.mac,
                ipv4: addr,
                vlan: device.vlan,
                subnet,
            },
            trunk_eni: trunk.id.clone(),
            pod_namespace: String::new(),
            pod_name: String::new(),
        });
    }
    found
}

async fn wait_for_trunk(plane: &Plane) -> Option<EniPort> {
    let deadline = tokio::time::Instant::now() + TRUNK_WAIT;
    loop {
        if let Some(trunk) = plane.trunk() {
            return Some(trunk);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pod in eniflow's maps, with its host veth's name.
struct Carried {
    pod: PodPort,
    veth: Option<String>,
}

/// Removes VPC CNI's wiring of the pods eniflow's maps now carry, and its node-wide rules and
/// chains; keeps (and reports) what serves anything else.
pub async fn remove_carried(nl: &Handle, plane: &Plane, report: &mut Report) {
    if let Err(e) = remove(nl, plane, report).await {
        report.failed.push(format!("netlink: {e}"));
    }
}

async fn remove(nl: &Handle, plane: &Plane, report: &mut Report) -> Result<(), rtnetlink::Error> {
    let carried: Vec<Carried> = plane
        .carried_pods()
        .into_iter()
        .map(|pod| Carried {
            veth: crate::netlink::ifname(pod.host_ifindex),
            pod,
        })
        .collect();
    let enis = plane.enis();
    let routes = routes(nl).await?;
    // The stack still routes some of a pod's traffic (services, the node): to a pod VPC CNI
    // put in a VLAN table only (strict mode), main gets the route eniflow's pods have.
    for c in &carried {
        let in_main = routes.iter().any(|r| {
            r.table == MAIN_TABLE
                && r.destination == Some((c.pod.addr, 32))
                && r.oif == Some(c.pod.host_ifindex)
        });
        if !in_main {
            let route = crate::netlink::link_route(c.pod.addr, c.pod.host_ifindex).build();
            match nl.route().add(route).replace().execute().await {
                Ok(()) => {}
                Err(e) => report
                    .failed
                    .push(format!("route {}/32 in main: {e}", c.pod.addr)),
            }
        }
    }
    let vlan_carried = |vlan: u32| {
        carried
            .iter()
            .find(|c| c.pod.branch.as_ref().map(|b| u32::from(b.vlan)) == Some(vlan))
    };
    let all_rules = rules(nl).await?;
    let (mut deleted_tables, mut node_rules) = (BTreeSet::new(), Vec::new());
    let mut kept_rules = Vec::new();
    for rule in &all_rules {
        let Some(kind) = &rule.kind else {
            kept_rules.push(rule);
            continue;
        };
        let carried_addr = |a: &Ipv4Addr| carried.iter().any(|c| c.pod.addr == *a);
        let why_kept = match kind {
            RuleKind::ToPod(a) | RuleKind::FromPod(a, _) if carried_addr(a) => None,
            RuleKind::ToPod(a) | RuleKind::FromPod(a, _) => {
                Some(format!("no pod eniflow carries has {a}"))
            }
            RuleKind::Iif(iif, t) => {
                let vlan = t.checked_sub(VLAN_TABLE_BASE).unwrap_or_default();
                match vlan_carried(vlan) {
                    Some(c)
                        if *iif == format!("{}{vlan}", super::VLAN_DEVICE_PREFIX)
                            || c.veth.as_deref() == Some(iif.as_str()) =>
                    {
                        None
                    }
                    _ => Some(format!("no branch pod eniflow carries is on VLAN {vlan}")),
                }
            }
            RuleKind::FromEni(a, _) if enis.iter().any(|e| e.primary == *a) => None,
            RuleKind::FromEni(a, _) => Some(format!("{a} is no ENI's of this node")),
            RuleKind::Connmark | RuleKind::MovedLocal => {
                node_rules.push(rule);
                continue;
            }
        };
        match why_kept {
            Some(why) => {
                report.kept.push(format!("{kind}: {why}"));
                kept_rules.push(rule);
            }
            None => match nl.rule().del(rule.message.clone()).execute().await {
                Ok(()) => {
                    report.removed.push(kind.to_string());
                    if kind.table() != MAIN_TABLE {
                        deleted_tables.insert(kind.table());
                    }
                }
                Err(e) => {
                    report.failed.push(format!("delete {kind}: {e}"));
                    kept_rules.push(rule);
                }
            },
        }
    }
    let devices = vlan_devices(nl).await?;
    let removable_devices: Vec<&VlanDevice> = devices
        .iter()
        .filter(|d| {
            let carried = vlan_carried(u32::from(d.vlan)).is_some();
            if !carried {
                report.kept.push(format!(
                    "{}: no branch pod eniflow carries is on VLAN {}",
                    d.name, d.vlan
                ));
            }
            carried
        })
        .collect();
    // A table goes once no rule looks it up; only its routes through an ENI, one of these VLAN
    // devices or a carried pod's veth are VPC CNI's.
    let ours = |oif: u32| {
        enis.iter().any(|e| e.ifindex == oif)
            || removable_devices.iter().any(|d| d.ifindex == oif)
            || carried.iter().any(|c| c.pod.host_ifindex == oif)
    };
    // And the tables of ENIs that no rule looks up (the trunk's has none): exactly VPC CNI's
    // two routes, to the ENI's gateway and by it, outside main, local and default.
    let vpc_cni_route = |r: &super::Route| {
        enis.iter().any(|e| {
            r.oif == Some(e.ifindex)
                && match r.destination {
                    None => r.gateway == Some(e.gateway),
                    Some(d) => d == (e.gateway, 32) && r.gateway.is_none(),
                }
        })
    };
    let eni_tables: BTreeSet<u32> = routes
        .iter()
        .map(|r| r.table)
        .filter(|t| !matches!(*t, 0 | 253 | MAIN_TABLE | LOCAL_TABLE))
        .filter(|t| routes.iter().filter(|r| r.table == *t).all(vpc_cni_route))
        .collect();
    deleted_tables.extend(eni_tables);
    for table in deleted_tables {
        if kept_rules.iter().any(|r| r.table == table) {
            report
                .kept
                .push(format!("table {table}: a rule that stays looks it up"));
            continue;
        }
        for route in routes.iter().filter(|r| r.table == table) {
            let what = format!(
                "route {} table {table}",
                route
                    .destination
                    .map_or("default".to_owned(), |(a, l)| format!("{a}/{l}"))
            );
            if !route.oif.is_some_and(ours) {
                report
                    .kept
                    .push(format!("{what}: not through an ENI or a pod of eniflow's"));
                continue;
            }
            match nl.route().del(route.message.clone()).execute().await {
                Ok(()) => report.removed.push(what),
                Err(e) => report.failed.push(format!("delete {what}: {e}")),
            }
        }
    }
    for device in removable_devices {
        match nl.link().del(device.ifindex).execute().await {
            Ok(()) => report.removed.push(format!("link {}", device.name)),
            Err(e) => report
                .failed
                .push(format!("delete link {}: {e}", device.name)),
        }
    }
    let (removed, failed) = chains::remove();
    let mut chains_gone = failed.is_empty();
    report.removed.extend(removed);
    report.failed.extend(failed);
    let table = format!("nftables table ip {}", nft_connmark::TABLE);
    match nft_connmark::remove() {
        Ok(nft_connmark::Outcome::Absent) => {}
        Ok(nft_connmark::Outcome::Removed) => report.removed.push(table),
        Ok(nft_connmark::Outcome::Kept { foreign }) => {
            chains_gone = false;
            report.kept.push(format!(
                "{table}: it holds chains VPC CNI does not make ({})",
                foreign.join(", ")
            ));
        }
        Ok(nft_connmark::Outcome::Unsure { unreadable }) => {
            chains_gone = false;
            report.kept.push(format!(
                "{table}: {unreadable} of the node's nftables chains could not be read, so whether it holds another's is not known"
            ));
        }
        Err(e) => {
            chains_gone = false;
            report.failed.push(format!("delete {table}: {e}"));
        }
    }
    for rule in node_rules {
        let kind = rule.kind.as_ref().expect("classified");
        if *kind == RuleKind::Connmark && !chains_gone {
            report.kept.push(format!(
                "{kind}: VPC CNI's connmark chains or table are still there"
            ));
            continue;
        }
        let mut what = kind.to_string();
        if *kind == RuleKind::MovedLocal && !has_local_rule_at_zero(&all_rules) {
            // The local table is looked up first again before its rule at 20 goes.
            let restored = nl
                .rule()
                .add()
                .v4()
                .action(RuleAction::ToTable)
                .priority(0)
                .table_id(LOCAL_TABLE)
                .execute()
                .await;
            if let Err(e) = restored {
                report.failed.push(format!("add rule 0: lookup local: {e}"));
                continue;
            }
            what += " (back at 0)";
        }
        match nl.rule().del(rule.message.clone()).execute().await {
            Ok(()) => report.removed.push(what),
            Err(e) => report.failed.push(format!("delete {what}: {e}")),
        }
    }
    Ok(())
}

fn has_local_rule_at_zero(rules: &[super::Rule]) -> bool {
    rules
        .iter()
        .any(|r| r.priority == 0 && r.table == LOCAL_TABLE && r.kind.is_none())
}

/// The host veth names VPC CNI may have given a pod eniflow names `eniflow_veth` (its prefix
/// and hash): strict-mode branch pods' start with `vlan`.
pub fn vpc_cni_veth_names(eniflow_veth: &str, prefix: &str) -> Vec<String> {
    let mut names = vec![eniflow_veth.to_owned()];
    if let Some(hash) = eniflow_veth.strip_prefix(prefix) {
        names.push(format!("{BRANCH_VETH_PREFIX}{hash}"));
    }
    names
}

/// Removes aws-node's conflist from `dir` (the runtime takes the first file by name, and
/// `10-aws.conflist` sorts before eniflow's): a file whose network is VPC CNI's. Returns it.
pub fn remove_vpc_cni_conflist(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_conf = path
            .extension()
            .is_some_and(|e| e == "conflist" || e == "conf");
        let Some(text) = is_conf.then(|| std::fs::read(&path).ok()).flatten() else {
            continue;
        };
        let name = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_owned));
        if name.as_deref() == Some(crate::ipam::checkpoint::VPC_CNI_NETWORK)
            && std::fs::remove_file(&path).is_ok()
        {
            return Some(path);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vpc_cni::{Route, Rule};

    const TRUNK: u32 = 4;
    const VETH: u32 = 20;
    const DEVICE: u32 = 30;

    fn trunk() -> EniPort {
        EniPort {
            id: "eni-trunk".into(),
            ifindex: TRUNK,
            ifname: "eth2".into(),
            mac: [2; 6],
            primary: Ipv4Addr::new(10, 0, 1, 20),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            role: eniflow_common::ENI_ROLE_TRUNK,
        }
    }

    fn device(parent: u32) -> VlanDevice {
        VlanDevice {
            name: "vlan.eth.5".into(),
            ifindex: DEVICE,
            vlan: 5,
            parent,
            mac: [0x0a, 0, 0, 0, 0, 5],
        }
    }

    fn rule(kind: RuleKind) -> Rule {
        Rule {
            priority: 0,
            table: kind.table(),
            kind: Some(kind),
            message: Default::default(),
        }
    }

    fn route(
        table: u32,
        destination: Option<(Ipv4Addr, u8)>,
        gateway: Option<Ipv4Addr>,
        oif: u32,
    ) -> Route {
        Route {
            table,
            destination,
            gateway,
            oif: Some(oif),
            message: Default::default(),
        }
    }

    const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 50);
    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

    fn links() -> Vec<(u32, String)> {
        vec![
            (VETH, "vlanabcdef01234".into()),
            (DEVICE, "vlan.eth.5".into()),
        ]
    }

    fn find(device: VlanDevice, rules: &[Rule], routes: &[Route]) -> (Vec<BranchPod>, Report) {
        let mut report = Report::default();
        let found = branch_pods_of(vec![device], &trunk(), rules, routes, &links(), &mut report);
        (found, report)
    }

    #[test]
    fn a_strict_branch_pod_is_found_by_its_device_table_and_iif_rule() {
        let rules = [
            rule(RuleKind::Iif("vlan.eth.5".into(), 105)),
            rule(RuleKind::Iif("vlanabcdef01234".into(), 105)),
        ];
        let routes = [
            route(105, None, Some(GW), DEVICE),
            route(105, Some((GW, 32)), None, DEVICE),
            route(105, Some((POD, 32)), None, VETH),
        ];
        let (found, report) = find(device(TRUNK), &rules, &routes);
        assert_eq!(found.len(), 1, "{report:?}");
        let pod = &found[0];
        assert_eq!(pod.branch.ipv4, POD);
        assert_eq!(pod.branch.vlan, 5);
        assert_eq!(pod.branch.mac, [0x0a, 0, 0, 0, 0, 5]);
        assert_eq!(pod.branch.link().gateway, GW);
        assert_eq!(pod.trunk_eni, "eni-trunk");
        assert_eq!(
            crate::cni::branch::taken_over_veth(&pod.owner),
            Some("vlanabcdef01234")
        );
    }

    #[test]
    fn a_standard_branch_pod_is_found_by_its_from_rule_and_main_route() {
        let rules = [rule(RuleKind::FromPod(POD, 105))];
        let routes = [
            route(105, None, Some(GW), DEVICE),
            route(MAIN_TABLE, Some((POD, 32)), None, VETH),
        ];
        let (found, report) = find(device(TRUNK), &rules, &routes);
        assert_eq!(found.len(), 1, "{report:?}");
        assert_eq!(found[0].branch.ipv4, POD);
    }

    #[test]
    fn a_device_that_does_not_add_up_is_kept_and_reported() {
        let rules = [rule(RuleKind::Iif("vlanabcdef01234".into(), 105))];
        let routes = [route(105, Some((POD, 32)), None, VETH)];
        // Not on the trunk; then no default route in its table.
        let (off_trunk, report) = find(device(9), &rules, &routes);
        assert!(off_trunk.is_empty());
        assert!(report.kept[0].contains("not the trunk"), "{report:?}");
        let (no_default, report) = find(device(TRUNK), &rules, &routes);
        assert!(no_default.is_empty());
        assert!(report.kept[0].contains("no default route"), "{report:?}");
    }
}
