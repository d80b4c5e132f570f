//! `eniflow-agent`: one per node. This file dispatches each subcommand to the module that owns it.

mod run;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use eniflow_agent::{
    bpffs, cni, datapath, install, max_pods::MaxPodsArgs, monitor, netlink, snat, status,
};

#[derive(Parser)]
#[command(version, about = "eniflow's node agent")]
struct Cli {
    /// eniflow's directory on bpffs; objects are pinned under <dir>/v2/.
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
    /// Logs on stderr: text, or json (one object a line, for log shippers). Levels per module
    /// through RUST_LOG (default info).
    #[arg(
        long,
        env = "ENIFLOW_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr through `tracing`; the `log` records of dependencies join them.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A span's close line carries its fields as finally recorded: one line per CNI request
    // with its result (refill rounds and EC2 calls are debug-level spans).
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Load the tc programs, attach them to the ENIs, and keep serving until SIGTERM/SIGINT.
    /// Attachments stay in place when the agent stops.
    Run(Box<run::RunArgs>),
    /// Print a summary for on-call: the running agent's pool, EC2's answers, the last errors
    /// and the top droppers (when it answers), then what the pinned maps hold (always).
    Status {
        /// Where the running agent serves metrics and introspection.
        #[arg(
            long,
            env = "ENIFLOW_METRICS_ADDRESS",
            default_value = eniflow_agent::metrics::listener::DEFAULT_ADDRESS
        )]
        agent: std::net::SocketAddr,
    },
    /// Exit 0 when the running agent's CNI service answers SERVING on its socket (kubelet's
    /// liveness and readiness probes); otherwise say why and exit 1.
    Probe {
        #[arg(long, env = "ENIFLOW_SOCKET", default_value = eniflow_api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Give up after this long (seconds).
        #[arg(long, default_value = "5", value_parser = run::seconds)]
        timeout: std::time::Duration,
    },
    /// Print packets eniflow's programs drop, as they happen (reason, hook, pod, addresses,
    /// ports), from the pinned ring buffer; rate-limited in the kernel, so a flood shows a
    /// sample while the counters keep every drop.
    Monitor {
        #[arg(long, default_value = "text")]
        format: monitor::Format,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Detach and unpin everything eniflow made, and nothing else. With --handback, first
    /// write VPC CNI's wiring of every pod and its checkpoint, so aws-node adopts the pods.
    Uninstall(eniflow_agent::vpc_cni::handback::HandbackArgs),
    /// Prepare the node (privileged, before `run`; the DaemonSet's init container): put the CNI
    /// shim that sits beside this binary into the runtime's plugin directory, turn on IPv4
    /// forwarding, and make reverse-path filtering loose (now and for ENIs attached later).
    Install {
        #[arg(long, env = "ENIFLOW_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
        cni_bin_dir: PathBuf,
    },
    /// Print the max pods of an instance type (VPC CNI's calculator options, with their meaning),
    /// subtracting the trunk ENI when security groups for pods are on.
    MaxPods(MaxPodsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    // Before any thread exists, so every runtime thread lives in the namespace too.
    if let Some(ns) = &cli.netns {
        if let Err(e) = netlink::enter(ns) {
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
    let pins = datapath::Pins::new(cli.bpffs_root);
    match cli.command {
        Command::Run(args) => run::run(pins, *args).await,
        Command::Status { agent } => Ok(status::print(&pins, agent).await?),
        Command::Monitor { format, count } => Ok(monitor::run(&pins, format, count).await?),
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
        Command::MaxPods(args) => {
            println!("{}", args.max_pods()?);
            Ok(())
        }
        Command::Uninstall(handback) => {
            if handback.handback {
                let pods =
                    eniflow_agent::vpc_cni::handback::write_vpc_cni_wiring(&handback).await?;
                println!(
                    "handed {pods} pod(s) back to VPC CNI; {} written",
                    handback.files.vpc_cni_checkpoint.display()
                );
            }
            snat::remove();
            Ok(datapath::uninstall(&pins).await?)
        }
    }
}
