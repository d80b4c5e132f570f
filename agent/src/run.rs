//! `eniflow-agent run`: the node agent's life. The pool starts first (EC2 and IMDS trouble
//! attaches nothing), then the data plane and the ENI watcher, then the CNI socket; the conflist
//! is written last, since its presence turns the node network-ready.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use aws_config::imds;
use eniflow_agent::{
    cni::{self, conflist},
    cninode,
    datapath::{self, AttachMode, Datapath, Pins, Plane},
    ec2::{self, Ec2},
    eni_links, files, install,
    instance::{self, Instance},
    ipam::{
        self,
        eniconfig::{self, EniConfigArgs},
        knobs::KnobArgs,
        Ipam,
    },
    kube::{Cluster, ClusterArgs},
    metrics,
    snat::{self, SnatArgs},
    startup_taint, vpc_cni,
};

/// `eniflow-agent run`: every setting, as a flag or its environment variable (VPC CNI's names
/// where the meaning is VPC CNI's).
#[derive(clap::Args)]
pub struct RunArgs {
    /// Interfaces to attach the ENI programs to (comma separated) besides the ENIs the
    /// pool finds through IMDS; with --ipam=false, the only ones.
    #[arg(long, env = "ENIFLOW_INTERFACES", value_delimiter = ',')]
    interfaces: Vec<String>,
    /// tc attachment API: auto (tcx, else clsact; pods' veths clsact with a network policy
    /// agent), tcx or clsact.
    #[arg(long, env = "ENIFLOW_ATTACH_MODE", default_value = "auto")]
    attach_mode: AttachMode,
    /// Written once every interface is attached and the pool's first refill pass is over
    /// (readiness for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Install the CNI shim into this directory before serving (the image sets it, so the
    /// image alone installs and runs eniflow; `install` also sets the node's sysctls).
    #[arg(long, env = "ENIFLOW_INSTALL_SHIM")]
    install_shim: Option<PathBuf>,
    #[command(flatten)]
    knobs: KnobArgs,
    #[command(flatten)]
    snat: SnatArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    eni_configs: EniConfigArgs,
    /// Keep the node's pool of VPC addresses (needs EC2 and IMDS); false runs the data plane only.
    #[arg(long, env = "ENIFLOW_IPAM", default_value_t = true, action = clap::ArgAction::Set)]
    ipam: bool,
    #[command(flatten)]
    files: eniflow_agent::files::NodeFiles,
    /// The node's effective max pods is written here (for kubelet's --max-pods or Bottlerocket).
    #[arg(
        long,
        env = "ENIFLOW_MAX_PODS_FILE",
        default_value = "/var/run/eniflow/max-pods"
    )]
    max_pods_file: PathBuf,
    /// In a cluster, an ADD of a pod that requests a branch ENI (vpc.amazonaws.com/pod-eni)
    /// waits this long for the resource controller's annotation (seconds).
    /// Kept below the shim's timeout (10 s unless the conflist raises it; it is raised for a
    /// longer wait).
    #[arg(long, env = "ENIFLOW_POD_ENI_WAIT", default_value = "5", value_parser = seconds)]
    pod_eni_wait: std::time::Duration,
    /// With ENABLE_POD_ENI: create and attach the trunk ENI when none is attached (self-managed
    /// clusters; on EKS the VPC resource controller attaches it).
    #[arg(long, env = "ENIFLOW_CREATE_TRUNK")]
    create_trunk: bool,
    /// Security-group pods: strict (all their traffic, node-local too, goes through the VPC and
    /// its security groups) or standard (node-local traffic stays on the node), as VPC CNI.
    #[arg(
        long,
        env = "POD_SECURITY_GROUP_ENFORCING_MODE",
        default_value = "strict"
    )]
    sg_mode: SgMode,
    /// A VLAN of a deleted security-group pod is wired again only after this long (seconds).
    #[arg(long, env = "ENIFLOW_VLAN_COOLDOWN", default_value = "60", value_parser = seconds)]
    vlan_cooldown: std::time::Duration,
    /// How often the pool re-reads the node's ENIs from EC2 (seconds).
    #[arg(long, env = "ENIFLOW_RECONCILE_PERIOD", default_value = "60", value_parser = seconds)]
    reconcile_period: std::time::Duration,
    /// A pod's address missing from EC2's view this long is lost (seconds): EC2's reads are
    /// eventually consistent, so one answer without it proves nothing.
    #[arg(long, env = "ENIFLOW_LOST_GRACE", default_value = "120", value_parser = seconds)]
    lost_grace: std::time::Duration,
    /// Free addresses a subnet keeps for other nodes: below that the pool makes no warm
    /// refill from it and takes only what a waiting pod needs. 0: no reserve.
    #[arg(long, env = "ENIFLOW_SUBNET_RESERVE", default_value = "0")]
    subnet_reserve: u32,
    /// The unix socket the CNI shim calls (root only).
    #[arg(long, env = "ENIFLOW_SOCKET", default_value = eniflow_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Host veth names start with this (VPC CNI's AWS_VPC_K8S_CNI_VETHPREFIX), at most 4 characters.
    #[arg(long, env = "AWS_VPC_K8S_CNI_VETHPREFIX", default_value = "eni", value_parser = veth_prefix)]
    veth_prefix: String,
    /// Plugins chained after eniflow in that conflist (a JSON array).
    #[arg(
        long,
        env = "ENIFLOW_CNI_CHAIN",
        default_value = r#"[{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]"#,
        value_parser = conflist::parse_chain
    )]
    cni_chain: serde_json::Value,
    /// The shim's log file, named in the conflist (the shim's own default otherwise).
    #[arg(long, env = "ENIFLOW_CNI_LOG_FILE")]
    cni_log_file: Option<PathBuf>,
    /// Remove the conflist when the agent stops (the node stops being network-ready).
    #[arg(long, env = "ENIFLOW_REMOVE_CONFLIST_ON_EXIT")]
    remove_conflist_on_exit: bool,
    /// Tagged on the ENIs eniflow creates; the leak sweep deletes only this cluster's.
    #[arg(long, env = "CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// The EC2 endpoint (VPC CNI's AWS_EC2_ENDPOINT); unset: the SDK's own.
    #[arg(long, env = "AWS_EC2_ENDPOINT")]
    ec2_endpoint: Option<String>,
    /// The node's share of the account's EC2 request budget, per action class:
    /// `class=<calls per second>/<burst>,...` (mutating, eni-and-ip, create-tags, describe) or
    /// `unlimited`. Unnamed classes: a hundredth of AWS's default refill rate, bursts of half
    /// its bucket (100 nodes calling at once stay inside the account's refill).
    #[arg(long, env = "ENIFLOW_EC2_BUDGET", default_value = "")]
    ec2_budget: eniflow_agent::ec2_budget::Rates,
    /// The instance metadata endpoint; unset: http://169.254.169.254.
    #[arg(long, env = "AWS_EC2_METADATA_SERVICE_ENDPOINT")]
    imds_endpoint: Option<String>,
    /// Prometheus metrics (`GET /metrics`) on this address; localhost by default (VPC CNI's
    /// port).
    #[arg(
        long,
        env = "ENIFLOW_METRICS_ADDRESS",
        default_value = metrics::listener::DEFAULT_ADDRESS
    )]
    metrics_address: std::net::SocketAddr,
    /// No metrics listener (VPC CNI's DISABLE_METRICS).
    #[arg(long, env = "DISABLE_METRICS")]
    disable_metrics: bool,
    /// Each added pod gets the annotation vpc.amazonaws.com/pod-ips with its address (VPC
    /// CNI's ANNOTATE_POD_IP; needs the cluster, and RBAC to patch pods).
    #[arg(long, env = "ANNOTATE_POD_IP")]
    annotate_pod_ip: bool,
    /// EKS's network policy agent hears of each pod (VPC CNI's knob): none (or unset),
    /// standard or strict; an ADD the policy agent does not confirm fails and is undone.
    #[arg(long, env = "NETWORK_POLICY_ENFORCING_MODE")]
    network_policy_enforcing_mode: Option<String>,
    /// The network policy agent's socket.
    #[arg(
        long,
        env = "ENIFLOW_NETWORK_POLICY_SOCKET",
        default_value = cni::network_policy::DEFAULT_SOCKET
    )]
    network_policy_socket: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SgMode {
    Strict,
    Standard,
}

pub fn seconds(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<u64>()
        .map(std::time::Duration::from_secs)
        .map_err(|_| format!("{text:?} is not a whole number of seconds"))
}

/// Host veth names are prefix + 11 hex digits and must fit IFNAMSIZ (15).
fn veth_prefix(text: &str) -> Result<String, String> {
    let fits =
        !text.is_empty() && text.len() <= 4 && text.chars().all(|c| c.is_ascii_alphanumeric());
    fits.then(|| text.to_owned())
        .ok_or_else(|| format!("AWS_VPC_K8S_CNI_VETHPREFIX {text:?}: 1 to 4 letters or digits"))
}

/// Runs the agent until SIGTERM/SIGINT; attachments stay in place when it stops.
pub async fn run(pins: Pins, args: RunArgs) -> Result<()> {
    let started = std::time::Instant::now();
    if let Some(dir) = &args.install_shim {
        let shim = install::install_shim(dir)?;
        tracing::info!("installed {}", shim.display());
    }
    // Knobs and interface names are checked before anything is loaded or attached: a typo
    // attaches nothing.
    let knobs = args.knobs.knobs()?;
    let snat = snat::Snat::from_args(&args.snat)?;
    if !args.ipam && args.interfaces.is_empty() {
        anyhow::bail!("--interfaces: name the interfaces to attach to when --ipam=false");
    }
    for ifname in &args.interfaces {
        datapath::ifindex(ifname)?;
    }
    let cluster = Cluster::connect(&args.cluster)?;
    let with_api_server = cluster.is_some();
    let policy_mode =
        cni::network_policy::Mode::parse(args.network_policy_enforcing_mode.as_deref())
            .map_err(anyhow::Error::msg)?;
    if args.annotate_pod_ip && !with_api_server {
        anyhow::bail!("ANNOTATE_POD_IP: annotating pods needs the Kubernetes API, and the agent runs off a cluster (no --kube-api-server, no KUBERNETES_SERVICE_HOST)");
    }
    let pod_eni = knobs.pod_eni;
    // The pool starts before the data plane, so EC2 or IMDS trouble attaches nothing either.
    let ipam = if args.ipam {
        Some(start_pool(knobs, &args, cluster.as_ref()).await?)
    } else {
        None
    };
    let mut dp = Datapath::load(pins, args.attach_mode)?;
    if policy_mode.is_some() {
        // EKS's policy agent's filters go on pods' veths at priority 1 and must run first.
        dp.put_pod_veths_on_clsact();
    }
    for ifname in &args.interfaces {
        dp.attach_eni(ifname).await?;
    }
    let pinned_under = dp.pins().versioned();
    let branch_pods = match &ipam {
        Some(_) => {
            let path = args.files.branch_pods();
            Some(Arc::new(cni::branch::BranchPods::open(
                &path,
                args.vlan_cooldown,
            )?))
        }
        None => None,
    };
    if !args.disable_metrics {
        let sources = metrics::listener::Sources {
            ipam: ipam.as_ref().map(|(ipam, _)| ipam.clone()),
            branch_pods: branch_pods.clone(),
            pins: dp.pins().clone(),
            settings: settings(&args),
        };
        let bound = metrics::listener::serve(args.metrics_address, sources)
            .await
            .with_context(|| {
                format!(
                    "serve metrics on {} (ENIFLOW_METRICS_ADDRESS; DISABLE_METRICS=true turns them off)",
                    args.metrics_address
                )
            })?;
        tracing::info!("metrics served on http://{bound}/metrics");
    }
    if let (Some((ipam, imds)), Some(branch_pods)) = (&ipam, branch_pods) {
        let plane = Arc::new(Plane::new(dp)?);
        tokio::spawn(ipam.clone().run_refill());
        // The node's ENIs get their programs and table entries as they appear.
        tokio::spawn(eni_links::watch(
            plane.clone(),
            imds.clone(),
            ipam.clone(),
            snat,
        ));
        let api = cluster.as_ref().map(|c| (c.kube.clone(), c.node.clone()));
        let pod_ips = api
            .as_ref()
            .filter(|_| args.annotate_pod_ip)
            .map(|(kube, _)| cni::pod_ips::PodIps::new(kube.clone()));
        let events = cluster
            .as_ref()
            .map(|c| eniflow_agent::events::Recorder::start(c.kube.clone(), c.node.clone()));
        if let Some(events) = &events {
            ipam.record_events(events.clone());
        }
        // Security-group pods' annotations are read from the API when it is there.
        let pod_annotations = cluster
            .filter(|_| pod_eni)
            .zip(events.clone())
            .map(|(c, events)| cni::branch::FromApi::new(c.kube, args.pod_eni_wait, events));
        let network_policy = policy_mode.map(|mode| cni::network_policy::NetworkPolicy {
            socket: args.network_policy_socket.clone(),
            mode,
        });
        serve_cni(
            ipam.clone(),
            plane,
            &args,
            branch_pods,
            Outside {
                pod_annotations,
                pod_ips,
                network_policy,
                events,
            },
        )
        .await?;
        let conflist = conflist::Conflist {
            socket: args.socket.clone(),
            log_file: args.cni_log_file.clone(),
            pod_eni_wait: args.pod_eni_wait,
            chain: args.cni_chain.clone(),
        };
        conflist
            .write(&args.files.cni_conflist)
            .with_context(|| format!("write {}", args.files.cni_conflist.display()))?;
        tracing::info!(
            "node network-ready: wrote {}",
            args.files.cni_conflist.display()
        );
        if let Some(dir) = args.files.cni_conflist.parent() {
            if let Some(old) = vpc_cni::takeover::remove_vpc_cni_conflist(dir) {
                tracing::info!("takeover: removed aws-node's {}", old.display());
            }
        }
        if let Some((kube, node)) = api {
            startup_taint::remove_when_ready(kube, node, ipam.clone());
        }
        metrics::get().started(started.elapsed(), with_api_server);
    }
    if let Some(path) = &args.ready_file {
        // Ready for scripts and tests also means the pool's first refill pass is over.
        if let Some((ipam, _)) = &ipam {
            ipam.first_refill().await;
        }
        std::fs::write(path, b"ready\n").with_context(|| format!("write {}", path.display()))?;
    }
    tracing::info!(
        "serving {} interface(s); pinned under {}",
        args.interfaces.len(),
        pinned_under.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if ipam.is_some() && args.remove_conflist_on_exit {
        let _ = std::fs::remove_file(&args.files.cni_conflist);
    }
    tracing::info!("stopping; attachments stay pinned (`eniflow-agent uninstall` removes them)");
    Ok(())
}

/// The agent's settings in effect, for introspection (the pool's knobs are shown by the pool).
fn settings(args: &RunArgs) -> serde_json::Value {
    serde_json::json!({
        "ipam": args.ipam,
        "interfaces": args.interfaces,
        "attach_mode": format!("{:?}", args.attach_mode).to_lowercase(),
        "POD_SECURITY_GROUP_ENFORCING_MODE": match args.sg_mode {
            SgMode::Strict => "strict",
            SgMode::Standard => "standard",
        },
        "create_trunk": args.create_trunk,
        "vlan_cooldown_s": args.vlan_cooldown.as_secs(),
        "pod_eni_wait_s": args.pod_eni_wait.as_secs(),
        "AWS_VPC_K8S_CNI_VETHPREFIX": args.veth_prefix,
        "CLUSTER_NAME": args.cluster_name,
        "socket": args.socket,
        "checkpoint": args.files.checkpoint,
        "cni_conflist": args.files.cni_conflist,
        "cni_chain": args.cni_chain,
        "metrics_address": args.metrics_address.to_string(),
        "ANNOTATE_POD_IP": args.annotate_pod_ip,
        "NETWORK_POLICY_ENFORCING_MODE": args.network_policy_enforcing_mode,
        "network_policy_socket": args.network_policy_socket,
    })
}

/// What the CNI path asks of and tells others beyond the node's pool and data plane.
struct Outside {
    /// Security-group pods' branch ENIs, from the API.
    pod_annotations: Option<cni::branch::FromApi>,
    /// ANNOTATE_POD_IP.
    pod_ips: Option<cni::pod_ips::PodIps>,
    /// NETWORK_POLICY_ENFORCING_MODE.
    network_policy: Option<cni::network_policy::NetworkPolicy>,
    /// Events on pods, in a cluster.
    events: Option<eniflow_agent::events::Recorder>,
}

/// Serves the CNI shim on the agent's socket; pods' traffic is forwarded by this namespace.
async fn serve_cni(
    ipam: Arc<Ipam>,
    plane: Arc<Plane>,
    args: &RunArgs,
    branches: Arc<cni::branch::BranchPods>,
    outside: Outside,
) -> Result<()> {
    let Outside {
        pod_annotations,
        pod_ips,
        network_policy,
        events,
    } = outside;
    install::ensure_sysctl(install::IP_FORWARD, "1")
        .context("IPv4 forwarding (net.ipv4.ip_forward) for pod traffic")?;
    let host = eniflow_agent::netlink::connect().context("open a route netlink socket")?;
    plane.set_modes(datapath::Modes {
        sg_strict: args.sg_mode == SgMode::Strict,
        // The policy agent's programs on pods' veths must see what reaches the pods.
        deliver_through_veth: network_policy.is_some(),
    })?;
    let sources = cni::seams::Sources::new(ipam.clone(), branches.clone(), pod_annotations, events);
    let mut pods = cni::lifecycle::Lifecycle::new(
        sources,
        cni::seams::HostWiring::new(host.clone()),
        plane.clone(),
        args.veth_prefix.clone(),
    );
    if let Some(pod_ips) = pod_ips {
        pods = pods.with_pod_ips(pod_ips);
    }
    if let Some(network_policy) = network_policy {
        pods = pods.with_network_policy(network_policy);
    }
    let pods = Arc::new(pods);
    let released = pods.release_unwired().await;
    if released > 0 {
        tracing::info!("released {released} address(es) of pods deleted while the agent was away");
    }
    // VPC CNI's branch pods are known by their VLAN devices only: held first, they are taken
    // over with the pods its checkpoint named.
    let mut takeover = vpc_cni::takeover::Report::default();
    match vpc_cni::takeover::find_branch_pods(&host, &plane, &branches.all(), &mut takeover).await {
        Ok(found) => {
            for pod in found {
                if let Err(e) = branches.add(pod) {
                    takeover.failed.push(format!("hold a branch pod: {e}"));
                }
            }
        }
        Err(e) => takeover
            .failed
            .push(format!("find VPC CNI's branch pods: {e}")),
    }
    let (adopted, taken_over) = pods.restore_data_plane().await;
    if adopted > 0 {
        tracing::info!("re-adopted the data plane of {adopted} pod(s)");
    }
    if taken_over > 0 {
        tracing::info!("took over {taken_over} pod(s) VPC CNI wired");
    }
    // Only now that the maps carry them does VPC CNI's wiring of them go.
    vpc_cni::takeover::remove_carried(&host, &plane, &mut takeover).await;
    takeover.log_and_save(&args.files.takeover_report());
    tokio::spawn(unwire_lost(ipam, pods.clone()));
    let socket = cni::server::serve(&args.socket, cni::server::Service::new(pods))
        .await
        .with_context(|| format!("serve the CNI socket {}", args.socket.display()))?;
    tracing::info!("CNI requests served on {}", socket.display());
    Ok(())
}

/// Unwires the pods whose address the node lost, as reconcile finds them.
async fn unwire_lost<A, W, D>(ipam: Arc<Ipam>, pods: Arc<cni::lifecycle::Lifecycle<A, W, D>>)
where
    A: cni::seams::Addresses,
    W: cni::seams::Wiring,
    D: cni::seams::DataPlane,
{
    loop {
        for lost in ipam.lost_allocations().await {
            let (addr, container) = (lost.ipv4, lost.owner.container_id.clone());
            match pods.unwire_lost(lost).await {
                Ok(()) => tracing::warn!(
                    "{addr} of {container} is lost: the pod's veth and map entries are removed"
                ),
                Err(e) => tracing::warn!("{addr} of {container} is lost; unwiring it: {e}"),
            }
        }
    }
}

/// Reads the instance from IMDS, starts the pool (restoring its checkpoint) and publishes the
/// node's max pods. Returns the IMDS client too: the ENI watcher reads the ENIs from it.
async fn start_pool(
    knobs: ipam::Knobs,
    args: &RunArgs,
    cluster: Option<&Cluster>,
) -> Result<(Arc<Ipam>, imds::Client)> {
    let imds = instance::client(args.imds_endpoint.as_deref())?;
    let node = Instance::read(&imds).await?;
    let zone = node.availability_zone.clone();
    let settings = ec2::Settings {
        endpoint: args.ec2_endpoint.clone(),
        budget: args.ec2_budget,
        ..Default::default()
    };
    let ec2 = Ec2::connect(&settings, &node.region).await;
    let custom = if knobs.custom_network {
        Some(
            eniconfig::for_node(&knobs, &args.eni_configs, cluster, &node.availability_zone)
                .await?,
        )
    } else {
        None
    };
    let mut config = ipam::Config::new(knobs, args.files.checkpoint.clone());
    config.custom_network = custom;
    config.create_trunk = args.create_trunk;
    config.vpc_cni_checkpoint = Some(args.files.vpc_cni_checkpoint.clone());
    config.cluster_name = args.cluster_name.clone();
    config.reconcile_period = args.reconcile_period;
    config.lost_grace = args.lost_grace;
    config.subnet_reserve = args.subnet_reserve;
    tracing::info!(
        "instance {} ({}, {}); pool checkpoint {}",
        node.id,
        node.instance_type,
        node.availability_zone,
        args.files.checkpoint.display()
    );
    let pool = Ipam::start(ec2, node, config).await?;
    let max_pods = pool.capacity().max_pods;
    // Readers (kubelet's tooling) see the old figure or the new, never a torn one.
    files::write_atomically(&args.max_pods_file, format!("{max_pods}\n").as_bytes())
        .with_context(|| format!("write {}", args.max_pods_file.display()))?;
    tracing::info!(
        "max pods {max_pods} (written to {})",
        args.max_pods_file.display()
    );
    if let Some(cluster) = cluster {
        cluster.publish_max_pods(max_pods);
        let pod_eni = pool.config().knobs.pod_eni;
        if pod_eni && !pool.trunk_fits() {
            tracing::error!(
                "ENABLE_POD_ENI: the node's ENI slots are all taken, none is left for a trunk; security-group pods will not be scheduled here"
            );
        }
        let custom = pool
            .config()
            .custom_network
            .as_ref()
            .map(|c| c.name.as_str());
        let features = cninode::wanted(custom, pod_eni && pool.trunk_fits());
        cninode::advertise(cluster.kube.clone(), cluster.node.clone(), features);
    }
    let pool = Arc::new(pool);
    // ENIConfigs from the API are followed; from --eni-configs they are read at start only.
    let from_api = cluster.filter(|_| args.eni_configs.eni_configs.is_none());
    if let (Some(cluster), Some(current)) = (from_api, pool.eni_config()) {
        let chosen = eniconfig::follow(&pool.config().knobs, cluster, &zone, current);
        follow_eni_config(pool.clone(), cluster, chosen);
    }
    Ok((pool, imds))
}

/// Makes the pool follow each ENIConfig chosen for the node while the agent runs, and tells
/// the CNINode (the trunk, if built, keeps the groups it was built with).
fn follow_eni_config(
    pool: Arc<Ipam>,
    cluster: &Cluster,
    mut chosen: tokio::sync::watch::Receiver<eniconfig::EniConfig>,
) {
    let (kube, node) = (cluster.kube.clone(), cluster.node.clone());
    tokio::spawn(async move {
        while chosen.changed().await.is_ok() {
            let config = chosen.borrow_and_update().clone();
            let name = config.name.clone();
            match pool.follow_eni_config(config).await {
                Ok(()) => {
                    let feature = cninode::wanted(Some(&name), false);
                    cninode::advertise(kube.clone(), node.clone(), feature);
                }
                Err(e) => tracing::error!(
                    "custom networking: cannot follow ENIConfig {name}: {e}; new ENIs stay with the last one"
                ),
            }
        }
    });
}
