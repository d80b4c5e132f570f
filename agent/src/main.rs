//! `eniflow-agent`: one per node.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{Context, Result};
use aws_config::imds;
use clap::{Parser, Subcommand};
use eniflow_agent::{
    bpffs, cni,
    datapath::{self, AttachMode, Datapath, Pins, Plane},
    ec2::{self, Ec2},
    eni_links, install,
    instance::{self, Instance},
    ipam::{self, eniconfig, Ipam},
    kube::{self, Kube},
    limits, max_pods, netns, snat,
};
use eniflow_common::{
    ATTACH_FLAG_CREATED_CLSACT, ATTACH_MODE_CLSACT, ATTACH_MODE_TCX, DIRECTION_INGRESS,
};

#[derive(Parser)]
#[command(version, about = "eniflow's node agent")]
struct Cli {
    /// eniflow's directory on bpffs; objects are pinned under <dir>/v1/.
    #[arg(
        long,
        env = "ENIFLOW_BPFFS_ROOT",
        default_value = "/sys/fs/bpf/eniflow",
        global = true
    )]
    bpffs_root: PathBuf,
    /// Run inside this network namespace (e.g. /run/netns/node) instead of the current one.
    #[arg(long, env = "ENIFLOW_NETNS", global = true)]
    netns: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The address pool's settings beyond VPC CNI's knobs (which are read from the environment).
#[derive(clap::Args)]
struct PoolArgs {
    /// Keep the node's pool of VPC addresses (needs EC2 and IMDS); false runs the data plane only.
    #[arg(long, env = "ENIFLOW_IPAM", default_value_t = true, action = clap::ArgAction::Set)]
    ipam: bool,
    /// eniflow's allocation checkpoint.
    #[arg(
        long,
        env = "ENIFLOW_CHECKPOINT",
        default_value = "/var/run/eniflow/ipam.json"
    )]
    checkpoint: PathBuf,
    /// VPC CNI's checkpoint, imported when eniflow has none (a node moving from aws-node).
    #[arg(
        long,
        env = "AWS_VPC_K8S_CNI_BACKING_STORE",
        default_value = "/var/run/aws-node/ipam.json"
    )]
    vpc_cni_checkpoint: PathBuf,
    /// The node's effective max pods is written here (for kubelet's --max-pods or Bottlerocket).
    #[arg(
        long,
        env = "ENIFLOW_MAX_PODS_FILE",
        default_value = "/var/run/eniflow/max-pods"
    )]
    max_pods_file: PathBuf,
    /// ENIConfigs for custom networking off a cluster (`kubectl get eniconfigs -o json`).
    #[arg(long, env = "ENIFLOW_ENI_CONFIGS")]
    eni_configs: Option<PathBuf>,
    /// The node's labels, `k=v,...` (kubelet's --node-labels); they choose the ENIConfig.
    #[arg(long, env = "ENIFLOW_NODE_LABELS", default_value = "")]
    node_labels: String,
    /// The node's annotations, `k=v,...`; they choose the ENIConfig.
    #[arg(long, env = "ENIFLOW_NODE_ANNOTATIONS", default_value = "")]
    node_annotations: String,
    /// The Kubernetes API server (https://host:port). Unset: KUBERNETES_SERVICE_HOST/PORT when the
    /// agent runs in a pod; else there is no cluster, and node labels, ENIConfigs and pod
    /// annotations come from the flags, --eni-configs and the CNI runtimeConfig.
    #[arg(long, env = "ENIFLOW_KUBE_API_SERVER")]
    kube_api_server: Option<String>,
    /// The API server's bearer token (the pod's service account token).
    #[arg(
        long,
        env = "ENIFLOW_KUBE_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    kube_token_file: PathBuf,
    /// The CAs that sign the API server's certificate.
    #[arg(
        long,
        env = "ENIFLOW_KUBE_CA_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    kube_ca_file: PathBuf,
    /// This node's name in the cluster (VPC CNI's MY_NODE_NAME, set from the downward API).
    #[arg(long, env = "MY_NODE_NAME")]
    node_name: Option<String>,
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
    /// The unix socket the CNI shim calls (root only).
    #[arg(long, env = "ENIFLOW_SOCKET", default_value = eniflow_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Host veth names start with this (VPC CNI's AWS_VPC_K8S_CNI_VETHPREFIX), at most 4 characters.
    #[arg(long, env = "AWS_VPC_K8S_CNI_VETHPREFIX", default_value = "eni", value_parser = veth_prefix)]
    veth_prefix: String,
    /// Written once the agent serves CNI requests: its presence marks the node network-ready.
    #[arg(
        long,
        env = "ENIFLOW_CNI_CONFLIST",
        default_value = "/etc/cni/net.d/10-eniflow.conflist"
    )]
    cni_conflist: PathBuf,
    /// Plugins chained after eniflow in that conflist (a JSON array).
    #[arg(
        long,
        env = "ENIFLOW_CNI_CHAIN",
        default_value = r#"[{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]"#,
        value_parser = cni_chain
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
    /// The instance metadata endpoint; unset: http://169.254.169.254.
    #[arg(long, env = "AWS_EC2_METADATA_SERVICE_ENDPOINT")]
    imds_endpoint: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SgMode {
    Strict,
    Standard,
}

fn seconds(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<u64>()
        .map(std::time::Duration::from_secs)
        .map_err(|_| format!("{text:?} is not a whole number of seconds"))
}

/// The plugins chained after eniflow: a JSON array of plugin objects, each with a "type".
fn cni_chain(text: &str) -> Result<serde_json::Value, String> {
    let chain: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("ENIFLOW_CNI_CHAIN is not JSON: {e}"))?;
    let plugins = chain
        .as_array()
        .ok_or("ENIFLOW_CNI_CHAIN must be a JSON array of plugin objects")?;
    if let Some(bad) = plugins
        .iter()
        .position(|p| p.get("type").and_then(|t| t.as_str()).is_none())
    {
        return Err(format!("ENIFLOW_CNI_CHAIN[{bad}] has no \"type\""));
    }
    Ok(chain)
}

/// Host veth names are prefix + 11 hex digits and must fit IFNAMSIZ (15).
fn veth_prefix(text: &str) -> Result<String, String> {
    let fits =
        !text.is_empty() && text.len() <= 4 && text.chars().all(|c| c.is_ascii_alphanumeric());
    fits.then(|| text.to_owned())
        .ok_or_else(|| format!("AWS_VPC_K8S_CNI_VETHPREFIX {text:?}: 1 to 4 letters or digits"))
}

#[derive(Subcommand)]
enum Command {
    /// Load the tc programs, attach them to the ENIs, and keep serving until SIGTERM/SIGINT.
    /// Attachments stay in place when the agent stops.
    Run {
        /// Interfaces to attach the ENI programs to (comma separated) besides the ENIs the
        /// pool finds through IMDS; with --ipam=false, the only ones.
        #[arg(long, env = "ENIFLOW_INTERFACES", value_delimiter = ',')]
        interfaces: Vec<String>,
        /// tc attachment API: auto (tcx, else clsact), tcx or clsact.
        #[arg(long, env = "ENIFLOW_ATTACH_MODE", default_value = "auto")]
        attach_mode: AttachMode,
        /// Written once every interface is attached (readiness for scripts and tests).
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Install the CNI shim into this directory before serving (the image sets it, so the
        /// image alone installs and runs eniflow; `install` also sets the node's sysctls).
        #[arg(long, env = "ENIFLOW_INSTALL_SHIM")]
        install_shim: Option<PathBuf>,
        #[command(flatten)]
        pool: Box<PoolArgs>,
    },
    /// Print what eniflow attached and the per-hook counters from the pinned maps.
    Status,
    /// Exit 0 when the running agent's CNI service answers SERVING on its socket (kubelet's
    /// liveness and readiness probes); otherwise say why and exit 1.
    Probe {
        #[arg(long, env = "ENIFLOW_SOCKET", default_value = eniflow_api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Give up after this long (seconds).
        #[arg(long, default_value = "5", value_parser = seconds)]
        timeout: std::time::Duration,
    },
    /// Detach and unpin everything eniflow made, and nothing else.
    Uninstall,
    /// Prepare the node (privileged, before `run`; the DaemonSet's init container): put the CNI
    /// shim that sits beside this binary into the runtime's plugin directory, turn on IPv4
    /// forwarding, and make reverse-path filtering loose (now and for ENIs attached later).
    Install {
        #[arg(long, env = "ENIFLOW_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
        cni_bin_dir: PathBuf,
    },
    /// Print the max pods of an instance type (VPC CNI's calculator options, with their meaning),
    /// subtracting the trunk ENI when security groups for pods are on.
    MaxPods {
        #[arg(long)]
        instance_type: String,
        /// /28 prefixes instead of secondary addresses.
        #[arg(long, alias = "cni-prefix-delegation-enabled")]
        prefix_delegation: bool,
        /// Pods use ENIConfig subnets: the primary ENI carries none.
        #[arg(long, alias = "cni-custom-networking-enabled")]
        custom_networking: bool,
        /// MAX_ENI: at most this many ENIs, the primary included.
        #[arg(long, alias = "cni-max-eni")]
        max_eni: Option<u32>,
        /// Security groups for pods: the trunk ENI takes an ENI slot.
        #[arg(long)]
        pod_eni: bool,
        /// The instance's own figure, without EKS's ceiling (110 up to 30 vCPUs, else 250).
        #[arg(long, alias = "show-max-allowed")]
        uncapped: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    // Before any thread exists, so every runtime thread lives in the namespace too.
    if let Some(ns) = &cli.netns {
        if let Err(e) = netns::enter(ns) {
            eprintln!("eniflow-agent: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eniflow-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eniflow-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    let pins = Pins::new(cli.bpffs_root);
    match cli.command {
        Command::Run {
            interfaces,
            attach_mode,
            ready_file,
            install_shim,
            pool,
        } => {
            if let Some(dir) = install_shim {
                let shim = install::install_shim(&dir)?;
                log::info!("installed {}", shim.display());
            }
            run(pins, &interfaces, attach_mode, ready_file, *pool).await
        }
        Command::Status => status(&pins),
        Command::Install { cni_bin_dir } => {
            let shim = install::install_shim(&cni_bin_dir)?;
            install::set_node_sysctls()?;
            // Mounted here, on the node, so pins outlive the agent's container.
            bpffs::ensure(&pins.versioned())?;
            println!(
                "installed {}; node sysctls set; bpffs ready",
                shim.display()
            );
            Ok(())
        }
        Command::Probe { socket, timeout } => {
            cni::probe::probe(&socket, timeout).await?;
            println!("serving on {}", socket.display());
            Ok(())
        }
        Command::MaxPods {
            instance_type,
            prefix_delegation,
            custom_networking,
            max_eni,
            pod_eni,
            uncapped,
        } => {
            let limits = limits::bundled(&instance_type).with_context(|| {
                format!("unknown instance type {instance_type:?} (not in the bundled table)")
            })?;
            let opts = max_pods::Options {
                prefix_delegation,
                custom_networking,
                max_eni,
                pod_eni,
                uncapped,
            };
            let pods =
                max_pods::max_pods(&instance_type, &limits, &opts).map_err(anyhow::Error::msg)?;
            println!("{pods}");
            Ok(())
        }
        Command::Uninstall => {
            snat::remove();
            datapath::uninstall(&pins).await
        }
        .map_err(|errors| {
            anyhow::anyhow!("uninstall left things behind:\n  {}", errors.join("\n  "))
        }),
    }
}

async fn run(
    pins: Pins,
    interfaces: &[String],
    mode: AttachMode,
    ready_file: Option<PathBuf>,
    pool: PoolArgs,
) -> Result<()> {
    // Knobs and interface names are checked before anything is loaded or attached: a typo
    // attaches nothing.
    let knobs = ipam::Knobs::from_env().map_err(anyhow::Error::msg)?;
    let snat = snat::Snat::from_env()?;
    if !pool.ipam && interfaces.is_empty() {
        anyhow::bail!("--interfaces: name the interfaces to attach to when --ipam=false");
    }
    for ifname in interfaces {
        datapath::ifindex(ifname)?;
    }
    let cluster = Cluster::from_args(&pool)?;
    let pod_eni = knobs.pod_eni;
    // The pool starts before the data plane, so EC2 or IMDS trouble attaches nothing either.
    let ipam = if pool.ipam {
        Some(start_pool(knobs, &pool, cluster.as_ref()).await?)
    } else {
        None
    };
    let mut dp = Datapath::load(pins, mode)?;
    for ifname in interfaces {
        dp.attach_eni(ifname).await?;
    }
    let pinned_under = dp.pins().versioned();
    if let Some((ipam, imds)) = &ipam {
        let plane = Arc::new(Plane::new(dp)?);
        tokio::spawn(ipam.clone().run_refill());
        // The node's ENIs get their programs and table entries as they appear.
        tokio::spawn(eni_links::watch(
            plane.clone(),
            imds.clone(),
            ipam.clone(),
            snat,
        ));
        // Security-group pods' annotations are read from the API when it is there.
        let pod_annotations = cluster
            .filter(|_| pod_eni)
            .map(|c| cni::branch::FromApi::new(c.kube, pool.pod_eni_wait));
        serve_cni(ipam.clone(), plane, &pool, pod_annotations).await?;
        write_conflist(&pool)?;
    }
    if let Some(path) = ready_file {
        std::fs::write(&path, b"ready\n").with_context(|| format!("write {}", path.display()))?;
    }
    log::info!(
        "serving {} interface(s); pinned under {}",
        interfaces.len(),
        pinned_under.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if ipam.is_some() && pool.remove_conflist_on_exit {
        let _ = std::fs::remove_file(&pool.cni_conflist);
    }
    log::info!("stopping; attachments stay pinned (`eniflow-agent uninstall` removes them)");
    Ok(())
}

/// How long the shim waits for the agent unless the conflist says otherwise.
const SHIM_DEFAULT_TIMEOUT_SECONDS: u64 = 10;

/// Writes the CNI network configuration: eniflow first, then the configured chain.
fn write_conflist(args: &PoolArgs) -> Result<()> {
    // Pod annotations reach the agent through runtimeConfig (containerd's CRI passes them to a
    // plugin that declares the capability): security-group pods are named there.
    let mut eniflow = serde_json::json!({
        "type": "eniflow-cni",
        "socket": args.socket,
        "capabilities": { "io.kubernetes.cri.pod-annotations": true },
    });
    if let Some(log) = &args.cni_log_file {
        eniflow["logFile"] = serde_json::json!(log);
    }
    // The shim waits 10 s for the agent by default; an ADD may wait for a pod's annotation.
    let needed = args.pod_eni_wait.as_secs() + 5;
    if needed > SHIM_DEFAULT_TIMEOUT_SECONDS {
        eniflow["timeoutSeconds"] = serde_json::json!(needed);
    }
    let mut plugins = vec![eniflow];
    plugins.extend(args.cni_chain.as_array().cloned().unwrap_or_default());
    // 1.0.0: the newest version the reference plugins of today's distributions speak.
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "eniflow",
        "plugins": plugins,
    });
    write_atomically(&args.cni_conflist, format!("{conflist:#}\n").as_bytes())?;
    log::info!("node network-ready: wrote {}", args.cni_conflist.display());
    Ok(())
}

/// Serves the CNI shim on the agent's socket; pods' traffic is forwarded by this namespace.
async fn serve_cni(
    ipam: Arc<Ipam>,
    plane: Arc<Plane>,
    args: &PoolArgs,
    pod_annotations: Option<cni::branch::FromApi>,
) -> Result<()> {
    install::ensure_sysctl(install::IP_FORWARD, "1")
        .context("IPv4 forwarding (net.ipv4.ip_forward) for pod traffic")?;
    let host = datapath::tc::connect().context("open a route netlink socket")?;
    let branch_pods = args.checkpoint.with_file_name("branch-pods.json");
    let branches = cni::branch::BranchPods::open(&branch_pods, args.vlan_cooldown)
        .map_err(anyhow::Error::msg)?;
    plane.set_sg_strict(args.sg_mode == SgMode::Strict)?;
    let mut service =
        cni::server::Service::new(ipam, plane, branches, host, args.veth_prefix.clone());
    if let Some(from_api) = pod_annotations {
        service = service.with_pod_annotations(from_api);
    }
    let released = service.release_unwired().await;
    if released > 0 {
        log::info!("released {released} address(es) of pods deleted while the agent was away");
    }
    let adopted = service.restore_data_plane().await;
    if adopted > 0 {
        log::info!("re-adopted the data plane of {adopted} pod(s)");
    }
    let socket = cni::server::serve(&args.socket, service)
        .await
        .with_context(|| format!("serve the CNI socket {}", args.socket.display()))?;
    log::info!("CNI requests served on {}", socket.display());
    Ok(())
}

/// The cluster the agent runs in: the API and this node's name there.
struct Cluster {
    kube: Arc<Kube>,
    node: String,
}

/// The annotation on the Node carrying its effective max pods.
const MAX_PODS_ANNOTATION: &str = "eniflow.io/max-pods";

impl Cluster {
    fn from_args(args: &PoolArgs) -> Result<Option<Cluster>> {
        let Some(server) = kube::server_url(args.kube_api_server.as_deref()) else {
            return Ok(None);
        };
        let node =
            args.node_name.clone().filter(|n| !n.is_empty()).context(
                "in a cluster the agent needs its node's name: MY_NODE_NAME (--node-name)",
            )?;
        let kube = Kube::new(&server, args.kube_token_file.clone(), &args.kube_ca_file)
            .map_err(anyhow::Error::msg)?;
        log::info!("node {node} of the cluster at {server}");
        Ok(Some(Cluster { kube, node }))
    }

    fn node_path(&self) -> String {
        format!("/api/v1/nodes/{}", self.node)
    }

    /// The node's labels and annotations.
    async fn node_metadata(&self) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
        let node = self
            .kube
            .get(&self.node_path())
            .await
            .map_err(anyhow::Error::msg)?
            .with_context(|| format!("node {:?} does not exist in the cluster", self.node))?;
        Ok((
            kube::metadata_map(&node, "labels"),
            kube::metadata_map(&node, "annotations"),
        ))
    }

    /// Puts the node's effective max pods on its Node, for whatever configures kubelet from it;
    /// in the background, retried until the API takes it (at start the API may not be reachable
    /// yet: kube-proxy may still be writing the rules for its Service address).
    fn publish_max_pods(&self, max_pods: u32) {
        let (kube, node, path) = (self.kube.clone(), self.node.clone(), self.node_path());
        let patch = serde_json::json!({
            "metadata": { "annotations": { MAX_PODS_ANNOTATION: max_pods.to_string() } }
        });
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_millis(500);
            loop {
                match kube.merge_patch(&path, &patch).await {
                    Ok(_) => {
                        log::info!("max pods {max_pods} annotated on node {node}");
                        return;
                    }
                    Err(e) => log::warn!(
                        "cannot annotate node {node} with max pods yet (again in {wait:?}): {e}"
                    ),
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        });
    }
}

/// Reads the instance from IMDS, starts the pool (restoring its checkpoint) and publishes the
/// node's max pods. Returns the IMDS client too: the ENI watcher reads the ENIs from it.
async fn start_pool(
    knobs: ipam::Knobs,
    args: &PoolArgs,
    cluster: Option<&Cluster>,
) -> Result<(Arc<Ipam>, imds::Client)> {
    let imds = instance::client(args.imds_endpoint.as_deref())?;
    let node = Instance::read(&imds).await?;
    let settings = ec2::Settings {
        endpoint: args.ec2_endpoint.clone(),
        ..Default::default()
    };
    let ec2 = Ec2::connect(&settings, &node.region).await;
    let custom = if knobs.custom_network {
        Some(eni_config(&knobs, args, cluster, &node.availability_zone).await?)
    } else {
        None
    };
    let mut config = ipam::Config::new(knobs, args.checkpoint.clone());
    config.custom_network = custom;
    config.create_trunk = args.create_trunk;
    config.vpc_cni_checkpoint = Some(args.vpc_cni_checkpoint.clone());
    config.cluster_name = args.cluster_name.clone();
    log::info!(
        "instance {} ({}, {}); pool checkpoint {}",
        node.id,
        node.instance_type,
        node.availability_zone,
        args.checkpoint.display()
    );
    let pool = Ipam::start(ec2, node, config).await?;
    let max_pods = pool.capacity().max_pods;
    write_atomically(&args.max_pods_file, format!("{max_pods}\n").as_bytes())?;
    log::info!(
        "max pods {max_pods} (written to {})",
        args.max_pods_file.display()
    );
    if let Some(cluster) = cluster {
        cluster.publish_max_pods(max_pods);
    }
    Ok((Arc::new(pool), imds))
}

/// Custom networking's ENIConfig for this node, chosen by the node's labels and annotations
/// (from its Node in a cluster, else the flags) and read from --eni-configs or the cluster.
async fn eni_config(
    knobs: &ipam::Knobs,
    args: &PoolArgs,
    cluster: Option<&Cluster>,
    zone: &str,
) -> Result<eniconfig::EniConfig> {
    let (labels, annotations) = match cluster {
        Some(cluster) => cluster.node_metadata().await?,
        None => (
            eniconfig::parse_pairs(&args.node_labels)
                .map_err(|e| anyhow::anyhow!("--node-labels: {e}"))?,
            eniconfig::parse_pairs(&args.node_annotations)
                .map_err(|e| anyhow::anyhow!("--node-annotations: {e}"))?,
        ),
    };
    let name = eniconfig::chosen_for_node(knobs, labels, &annotations, zone);
    let config = match (&args.eni_configs, cluster) {
        (Some(file), _) => eniconfig::from_file(file, &name),
        (None, Some(cluster)) => eniconfig::from_api(&cluster.kube, &name).await,
        (None, None) => Err("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true needs the ENIConfigs: the Kubernetes API in a cluster, else --eni-configs (ENIFLOW_ENI_CONFIGS)".into()),
    }
    .map_err(anyhow::Error::msg)?;
    log::info!(
        "custom networking: ENIConfig {} (subnet {})",
        config.name,
        config.subnet
    );
    Ok(config)
}

/// Readers (kubelet's tooling, the runtime) see the old text or the new, never a torn one.
fn write_atomically(path: &Path, text: &[u8]) -> Result<()> {
    ipam::checkpoint::write_atomically(path, text)
        .with_context(|| format!("write {}", path.display()))
}

fn status(pins: &Pins) -> Result<()> {
    println!("pinned under {}", pins.versioned().display());
    println!("attachments:");
    for (key, a) in datapath::read_attachments(pins)? {
        let how = match a.mode {
            ATTACH_MODE_TCX => "tcx link".to_owned(),
            ATTACH_MODE_CLSACT => format!(
                "clsact cls_bpf pref {:#x} handle {}{}",
                a.priority,
                a.handle,
                if a.flags & ATTACH_FLAG_CREATED_CLSACT != 0 {
                    " (eniflow added the qdisc)"
                } else {
                    ""
                }
            ),
            other => format!("unknown mode {other}"),
        };
        println!(
            "  ifindex {:>4} {:<7} {how}",
            key.ifindex,
            direction(key.direction)
        );
    }
    println!("counters:");
    for (key, stats) in datapath::read_stats(pins)? {
        println!(
            "  ifindex {:>4} {:<7} packets {:>10} bytes {:>12}",
            key.ifindex,
            direction(key.direction),
            stats.packets,
            stats.bytes
        );
    }
    println!("pods:");
    for (addr, s) in datapath::read_pod_stats(pins)? {
        println!(
            "  {addr:<15} sent {:>8} ({} to the stack) received {:>8} dropped: spoofed source {} redirect failed {}",
            s.sent_packets,
            s.sent_to_stack,
            s.received_packets,
            s.drop_spoofed_source,
            s.drop_redirect_failed
        );
    }
    Ok(())
}

fn direction(code: u32) -> &'static str {
    if code == DIRECTION_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}
