//! The way back to aws-node without restarting pods (`eniflow-agent uninstall --handback`):
//! VPC CNI's per-ENI tables, each pod's rules, each branch pod's VLAN device, table and rules,
//! and VPC CNI's checkpoint are written while eniflow's programs still carry the pods; only then
//! does the usual uninstall detach them. aws-node, started next, restores its checkpoint (it
//! keeps the entries whose veth exists) and adds its node-wide rules and chains itself.

use std::{net::Ipv4Addr, path::Path};

use rtnetlink::{
    packet_route::rule::RuleAction, Handle, LinkUnspec, LinkVlan, RouteMessageBuilder,
};

use super::{
    BRANCH_PRIORITY, FROM_POD_PRIORITY, MAIN_TABLE, TO_POD_PRIORITY, VLAN_DEVICE_PREFIX,
    VLAN_TABLE_BASE,
};
use crate::{
    cni::branch::{BranchPod, BranchPods},
    instance::ImdsEni,
    ipam::{checkpoint, Allocation},
};

/// What a handback needs to know, under the names `run` gives it.
#[derive(clap::Args, Clone, Debug)]
pub struct HandbackArgs {
    /// Hand the node's pods back to aws-node (VPC CNI) instead of leaving them unrouted.
    #[arg(long)]
    pub handback: bool,
    #[command(flatten)]
    pub files: crate::files::NodeFiles,
    /// The instance metadata endpoint (the ENIs' device numbers); unset: http://169.254.169.254.
    #[arg(long, env = "AWS_EC2_METADATA_SERVICE_ENDPOINT")]
    pub imds_endpoint: Option<String>,
    /// strict or standard, as aws-node will run (VPC CNI's branch pods are wired per mode).
    #[arg(
        long,
        env = "POD_SECURITY_GROUP_ENFORCING_MODE",
        default_value = "strict"
    )]
    pub sg_mode: String,
    /// The host veths' prefix, as `run` names them.
    #[arg(long, env = "AWS_VPC_K8S_CNI_VETHPREFIX", default_value = "eni")]
    pub veth_prefix: String,
}

/// What stopped a handback; nothing of eniflow's was detached then.
#[derive(Debug, thiserror::Error)]
#[error("handback: {0}")]
pub struct HandbackError(String);

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> HandbackError {
    let what = what.into();
    move |e| HandbackError(format!("{what}: {e}"))
}

/// An ENI of the node, with its local link.
struct Eni {
    imds: ImdsEni,
    ifindex: u32,
}

impl Eni {
    /// VPC CNI's table for it: main for the primary, device number + 1 for the others.
    fn table(&self) -> u32 {
        match self.imds.device_index {
            0 => MAIN_TABLE,
            n => n + 1,
        }
    }

    fn gateway(&self) -> Ipv4Addr {
        crate::addressing::gateway(self.imds.subnet)
    }
}

/// Writes VPC CNI's view of the node's pods; returns how many pods it handed back.
pub async fn write_vpc_cni_wiring(args: &HandbackArgs) -> Result<usize, HandbackError> {
    let strict = match args.sg_mode.as_str() {
        "strict" => true,
        "standard" => false,
        other => {
            return Err(HandbackError(format!(
                "POD_SECURITY_GROUP_ENFORCING_MODE={other:?}: expected strict or standard"
            )))
        }
    };
    let saved = checkpoint::load(&args.files.checkpoint)
        .map_err(|e| HandbackError(e.to_string()))?
        .unwrap_or_default();
    let branch_file = args.files.branch_pods();
    let branch_pods = BranchPods::open(&branch_file, std::time::Duration::ZERO)
        .map_err(|e| HandbackError(e.to_string()))?
        .all();
    let imds = crate::instance::client(args.imds_endpoint.as_deref())
        .map_err(|e| HandbackError(e.to_string()))?;
    let described = crate::instance::read_enis(&imds)
        .await
        .map_err(|e| HandbackError(e.to_string()))?;
    let nl = crate::netlink::connect().map_err(|e| HandbackError(format!("netlink: {e}")))?;
    let links = crate::netlink::links(&nl)
        .await
        .map_err(failed("list links"))?;
    let enis: Vec<Eni> = described
        .into_iter()
        .filter_map(|imds| {
            let link = links.iter().find(|l| l.mac == Some(imds.mac))?;
            Some(Eni {
                ifindex: link.index,
                imds,
            })
        })
        .collect();
    for eni in enis.iter().filter(|e| e.table() != MAIN_TABLE) {
        eni_table(&nl, eni).await?;
    }
    // Pods whose veth is gone are left out, as aws-node itself drops them on restore.
    let mut handed: Vec<Allocation> = Vec::new();
    for a in &saved.allocations {
        if crate::netlink::ifindex(&veth_of(&args.veth_prefix, a)).is_err() {
            continue;
        }
        let eni = enis.iter().find(|e| e.imds.id == a.eni);
        pod_rules(&nl, a.ipv4, eni.map_or(MAIN_TABLE, Eni::table)).await?;
        handed.push(a.clone());
    }
    let mut branches = 0;
    for pod in &branch_pods {
        let Some(trunk) = enis.iter().find(|e| e.imds.id == pod.trunk_eni) else {
            tracing::warn!(
                "branch pod {}: its trunk {} is not on the node; not handed back",
                pod.branch.ipv4,
                pod.trunk_eni
            );
            continue;
        };
        let veth = branch_veth(&args.veth_prefix, pod);
        let Ok(veth_index) = crate::netlink::ifindex(&veth) else {
            continue;
        };
        branch_wiring(&nl, pod, trunk.ifindex, veth_index, &veth, strict).await?;
        branches += 1;
    }
    let text = checkpoint::encode_vpc_cni(&handed);
    crate::files::write_atomically(&args.files.vpc_cni_checkpoint, &text).map_err(|e| {
        HandbackError(format!(
            "write {}: {e}",
            args.files.vpc_cni_checkpoint.display()
        ))
    })?;
    // The runtime picks aws-node's conflist once eniflow's is gone; eniflow's checkpoints go
    // so that a later eniflow imports VPC CNI's afresh rather than restoring stale holds.
    for path in [
        &args.files.cni_conflist,
        &args.files.checkpoint,
        &branch_file,
    ] {
        remove_if_present(path)?;
    }
    Ok(handed.len() + branches)
}

fn remove_if_present(path: &Path) -> Result<(), HandbackError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(HandbackError(format!("remove {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

/// The pod's host veth, named as eniflow (and VPC CNI) name it.
fn veth_of(prefix: &str, a: &Allocation) -> String {
    crate::cni::request::host_veth_name(
        prefix,
        &a.pod_namespace,
        &a.pod_name,
        &a.owner.container_id,
    )
}

fn branch_veth(prefix: &str, pod: &BranchPod) -> String {
    match crate::cni::branch::taken_over_veth(&pod.owner) {
        Some(veth) => veth.to_owned(),
        None => crate::cni::request::host_veth_name(
            prefix,
            &pod.pod_namespace,
            &pod.pod_name,
            &pod.owner.container_id,
        ),
    }
}

/// Replaces a route (VPC CNI replaces too: a second handback changes nothing).
async fn route(
    nl: &Handle,
    msg: rtnetlink::packet_route::route::RouteMessage,
    what: String,
) -> Result<(), HandbackError> {
    nl.route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(failed(what))
}

/// VPC CNI's table of a secondary ENI: the gateway on the link, the default route via it.
async fn eni_table(nl: &Handle, eni: &Eni) -> Result<(), HandbackError> {
    let (table, gateway) = (eni.table(), eni.gateway());
    gateway_routes(nl, table, gateway, eni.ifindex).await
}

async fn gateway_routes(
    nl: &Handle,
    table: u32,
    gateway: Ipv4Addr,
    ifindex: u32,
) -> Result<(), HandbackError> {
    let link = crate::netlink::link_route(gateway, ifindex)
        .table_id(table)
        .build();
    route(nl, link, format!("route {gateway}/32 table {table}")).await?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(ifindex)
        .table_id(table)
        .build();
    route(nl, default, format!("default via {gateway} table {table}")).await
}

/// Adds a rule unless it is there (a second handback adds nothing).
async fn add_rule(
    request: rtnetlink::RuleAddRequest<Ipv4Addr>,
    what: String,
) -> Result<(), HandbackError> {
    match request.action(RuleAction::ToTable).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        other => other.map_err(failed(what)),
    }
}

/// A pod's rules: to it by main; from it by its ENI's table when that is not main.
async fn pod_rules(nl: &Handle, addr: Ipv4Addr, table: u32) -> Result<(), HandbackError> {
    let to = nl
        .rule()
        .add()
        .v4()
        .priority(TO_POD_PRIORITY)
        .table_id(MAIN_TABLE)
        .destination_prefix(addr, 32);
    add_rule(to, format!("rule {TO_POD_PRIORITY} to {addr}")).await?;
    if table == MAIN_TABLE {
        return Ok(());
    }
    let from = nl
        .rule()
        .add()
        .v4()
        .priority(FROM_POD_PRIORITY)
        .table_id(table)
        .source_prefix(addr, 32);
    add_rule(from, format!("rule {FROM_POD_PRIORITY} from {addr}")).await
}

/// A branch pod as VPC CNI wires it: `vlan.eth.<id>` on the trunk with the branch ENI's MAC,
/// table id + 100 through it, and (strict) `iif` rules for the device and the pod's veth with
/// the pod's route in that table, or (standard) the pod's rules as any pod's.
async fn branch_wiring(
    nl: &Handle,
    pod: &BranchPod,
    trunk: u32,
    veth: u32,
    veth_name: &str,
    strict: bool,
) -> Result<(), HandbackError> {
    let vlan = pod.branch.vlan;
    let name = format!("{VLAN_DEVICE_PREFIX}{vlan}");
    let table = u32::from(vlan) + VLAN_TABLE_BASE;
    let device = match crate::netlink::link_by_name(nl, &name)
        .await
        .map_err(failed(format!("find {name}")))?
    {
        Some(link) => link.index,
        None => {
            let msg = LinkVlan::new(&name, trunk, vlan)
                .address(pod.branch.mac.to_vec())
                .build();
            nl.link()
                .add(msg)
                .execute()
                .await
                .map_err(failed(format!("add {name}")))?;
            crate::netlink::ifindex(&name).map_err(|e| HandbackError(format!("{name}: {e}")))?
        }
    };
    nl.link()
        .set(LinkUnspec::new_with_index(device).up().build())
        .execute()
        .await
        .map_err(failed(format!("set {name} up")))?;
    let gateway = crate::addressing::gateway(pod.branch.subnet);
    gateway_routes(nl, table, gateway, device).await?;
    let addr = pod.branch.ipv4;
    if !strict {
        return pod_rules(nl, addr, table).await;
    }
    let to_pod = crate::netlink::link_route(addr, veth)
        .table_id(table)
        .build();
    route(nl, to_pod, format!("route {addr}/32 table {table}")).await?;
    for iif in [name.as_str(), veth_name] {
        let rule = nl
            .rule()
            .add()
            .v4()
            .priority(BRANCH_PRIORITY)
            .table_id(table)
            .input_interface(iif);
        add_rule(rule, format!("rule {BRANCH_PRIORITY} iif {iif}")).await?;
    }
    Ok(())
}
