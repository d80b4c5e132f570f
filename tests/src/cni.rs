//! A lab node whose agent serves pods, and the shim run as a container runtime runs a CNI
//! plugin: environment, configuration on stdin, CNI JSON on stdout.

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    agent::{self, Agent, PoolFiles, LAB_NODE_ENV},
    bpffs_dir,
    lab::{Lab, LabSpec},
    netns::Netns,
    BpffsDir,
};

/// The lab with its agent serving CNI requests (pool and socket in a scratch directory).
pub struct PodNode {
    pub lab: Lab,
    pub files: PoolFiles,
    root: BpffsDir,
    pub agent: Option<Agent>,
    /// More `run` arguments for the agent.
    extra: Vec<String>,
    /// More environment for the agent (pool knobs).
    env: Vec<(String, String)>,
}

/// What the shim printed and how it exited.
pub struct Answer {
    pub ok: bool,
    pub json: Value,
    /// The shim process's peak resident memory, KiB, when run by `shim_peak_rss`.
    pub peak_rss_kib: Option<u64>,
}

impl PodNode {
    /// Starts the lab and the agent, and waits until the pool can serve an ADD.
    pub async fn start() -> PodNode {
        PodNode::start_with(&[]).await
    }

    /// Like `start`, with more `run` arguments for the agent.
    pub async fn start_with(extra: &[&str]) -> PodNode {
        PodNode::start_custom(LabSpec::default(), extra, &[]).await
    }

    /// A lab of `spec`, the agent with more `run` arguments and environment (pool knobs).
    pub async fn start_custom(spec: LabSpec, extra: &[&str], env: &[(&str, &str)]) -> PodNode {
        let lab = Lab::start(spec).await.unwrap_or_else(|e| panic!("{e}"));
        PodNode::on_lab(lab, extra, env).await
    }

    /// The agent on a running lab (for what must exist before it starts: a Kubernetes API).
    pub async fn on_lab(lab: Lab, extra: &[&str], env: &[(&str, &str)]) -> PodNode {
        let mut node = PodNode::prepare(lab, extra, env);
        node.start_agent_and_wait().await;
        node
    }

    /// The node's files and pins, the agent not started yet (for what must be on the node
    /// before it starts: another CNI's pods).
    pub fn prepare(lab: Lab, extra: &[&str], env: &[(&str, &str)]) -> PodNode {
        PodNode {
            lab,
            files: PoolFiles::new("cni-pods"),
            root: bpffs_dir("cni-pods"),
            agent: None,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Starts the agent and waits until the pool can serve an ADD.
    pub async fn start_agent_and_wait(&mut self) {
        self.start_agent();
        self.wait_for_warm_pool().await;
    }

    pub fn start_agent(&mut self) {
        self.start_agent_logging(&[], Stdio::inherit());
    }

    /// Starts the agent with more environment, its stderr (its logs) going to `logs`.
    pub fn start_agent_logging(&mut self, more_env: &[(&str, &str)], logs: Stdio) {
        self.agent = Some(self.new_agent(more_env, logs));
    }

    /// Starts an agent on this node that the caller owns (to kill and restart it at will).
    pub fn new_agent(&self, more_env: &[(&str, &str)], logs: Stdio) -> Agent {
        let mut agent = self.spawn_agent(more_env, logs);
        agent.wait_ready();
        agent
    }

    /// The same, without waiting for it to be ready.
    pub fn spawn_agent(&self, more_env: &[(&str, &str)], logs: Stdio) -> Agent {
        let mut args = self.files.args();
        args.extend(self.extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let netns = self.lab.node.netns.path();
        let mut env: Vec<(&str, &str)> = LAB_NODE_ENV.to_vec();
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        env.extend_from_slice(more_env);
        Agent::spawn_logging(&netns, &self.root, &args, &env, logs)
    }

    pub fn socket(&self) -> String {
        self.files.socket()
    }

    /// A long-running agent command (`monitor`) on this node's namespace and pins.
    pub fn agent_spawn(&self, args: &[&str]) -> std::process::Child {
        agent::spawn(&self.lab.node.netns.path(), &self.root, args)
    }

    /// A one-shot agent command (`status`, `uninstall`) on this node's namespace and pins.
    pub fn agent_command(&self, args: &[&str]) -> std::process::Output {
        agent::command(&self.lab.node.netns.path(), &self.root, args)
    }

    /// One of the agent's pinned maps.
    pub fn map(&self, name: &str) -> std::path::PathBuf {
        self.root
            .join(eniflow_common::PIN_VERSION)
            .join("maps")
            .join(name)
    }

    async fn wait_for_warm_pool(&self) {
        wait_for_warm_pool(|| self.cni("STATUS", "", None, "", "")).await
    }

    /// An agent of its own on the lab's second node (the spec must ask for one).
    pub async fn start_second_agent(&self) -> PeerAgent {
        let second = self
            .lab
            .second_node
            .as_ref()
            .expect("a lab with a second node");
        let files = PoolFiles::new("cni-peer");
        let root = bpffs_dir("cni-peer");
        let args = files.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = Agent::start_with(&second.netns.path(), &root, &args, LAB_NODE_ENV);
        let peer = PeerAgent {
            files,
            _root: root,
            _agent: agent,
        };
        wait_for_warm_pool(|| peer.cni("STATUS", "", None, "", "")).await;
        peer
    }
}

/// An agent on the lab's second node, serving pods there.
pub struct PeerAgent {
    pub files: PoolFiles,
    _root: BpffsDir,
    _agent: Agent,
}

impl PeerAgent {
    /// Runs the shim against this agent, as `PodNode::cni` does.
    pub fn cni(
        &self,
        command: &str,
        container: &str,
        pod: Option<&Netns>,
        ifname: &str,
        args: &str,
    ) -> Answer {
        let netns = pod.map(Netns::path).unwrap_or_default();
        let config = shim_config(&self.files);
        shim_for(
            &self.files,
            command,
            container,
            &netns,
            ifname,
            args,
            &config,
        )
    }
}

/// Waits until `status` (a CNI STATUS call) says the pool can serve an ADD.
async fn wait_for_warm_pool(status: impl Fn() -> Answer) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let status = status();
            if status.ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the pool never had a free address: {}",
                status.json
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the shim against the agent using `files`, logging beside them.
pub fn shim_for(
    files: &PoolFiles,
    command: &str,
    container: &str,
    netns: &str,
    ifname: &str,
    args: &str,
    config: &Value,
) -> Answer {
    let log = files.path("cni.log");
    let call = ShimCall {
        command,
        container,
        netns,
        ifname,
        args,
        log: &log,
    };
    shim(&call, config)
}

/// The network configuration the shim gets on stdin for the agent using `files`.
pub fn shim_config(files: &PoolFiles) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "eniflow",
        "type": "eniflow-cni",
        "socket": files.socket(),
        "logFile": files.path("cni.log"),
    })
}

impl PodNode {
    /// The network configuration the shim gets on stdin.
    pub fn config(&self) -> Value {
        shim_config(&self.files)
    }

    /// Runs the shim for `command` with this node's configuration.
    pub fn cni(
        &self,
        command: &str,
        container: &str,
        pod: Option<&Netns>,
        ifname: &str,
        args: &str,
    ) -> Answer {
        self.cni_with(
            command,
            container,
            pod.map(Netns::path).unwrap_or_default(),
            ifname,
            args,
            &self.config(),
        )
    }

    pub fn cni_with(
        &self,
        command: &str,
        container: &str,
        netns: String,
        ifname: &str,
        args: &str,
        config: &Value,
    ) -> Answer {
        shim_for(
            &self.files,
            command,
            container,
            &netns,
            ifname,
            args,
            config,
        )
    }

    /// The host ends of pod veths (ENIs come and go with the pool: they are not counted).
    pub fn host_veths(&self) -> Vec<String> {
        let out = self.lab.node.netns.ip(&["-j", "link", "show"]);
        let links: Value = serde_json::from_str(&out).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .filter(|name| name.starts_with("eni"))
            .collect()
    }

    /// Allocations in the agent's checkpoint.
    pub fn allocations(&self) -> usize {
        let saved: Value =
            serde_json::from_slice(&std::fs::read(self.files.checkpoint()).unwrap()).unwrap();
        saved["allocations"].as_array().unwrap().len()
    }
}

/// CNI_ARGS as kubelet's runtime passes them for a pod in `default`.
pub fn pod_args(name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=x")
}

/// The pod address of an ADD result.
pub fn address(answer: &Answer) -> String {
    let cidr = answer.json["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {}", answer.json));
    cidr.trim_end_matches("/32").to_owned()
}

/// Whether `pod` gets replies from `to`.
pub fn pings(pod: &Netns, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            pod.name(),
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            to,
        ])
        .output()
        .unwrap()
        .status
        .success()
}

/// One execution of the shim, as a runtime executes a CNI plugin.
pub struct ShimCall<'a> {
    pub command: &'a str,
    pub container: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    /// The shim's log file (ENIFLOW_CNI_LOG), unless `config` names one.
    pub log: &'a str,
}

/// Runs the shim with `call`'s environment and `config` on stdin; returns what it printed.
pub fn shim(call: &ShimCall, config: &Value) -> Answer {
    run_shim(call, config, None)
}

/// The same, the shim forked from `eniflow-peak-rss` so that its peak RSS is its own (spawned
/// from a large process its peak starts at that process's size); the launcher's fork and exec
/// make the call slower, so latencies are measured with `shim`.
pub fn shim_peak_rss(call: &ShimCall, config: &Value) -> Answer {
    let report = std::env::temp_dir().join(format!("{}.rss", crate::unique_name("shim")));
    run_shim(call, config, Some(&report))
}

fn run_shim(call: &ShimCall, config: &Value, rss_report: Option<&std::path::Path>) -> Answer {
    let mut command = match rss_report {
        Some(report) => {
            let mut launcher = Command::new(agent::binary("eniflow-peak-rss"));
            launcher.arg(report).arg(agent::binary("eniflow-cni"));
            launcher
        }
        None => Command::new(agent::binary("eniflow-cni")),
    };
    let mut child = command
        .env_clear()
        .env("ENIFLOW_CNI_LOG", call.log)
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // What the shim logs goes to its log file; a runtime shows stderr only on failure.
        .stderr(Stdio::null())
        .spawn()
        .expect("run eniflow-cni");
    // A plugin may answer without reading its stdin (VERSION does): the pipe can be closed.
    let written = child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes());
    if let Err(e) = written {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write the config: {e}"
        );
    }
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let stdout = String::from_utf8_lossy(&stdout);
    let ok = child.wait().expect("wait for the shim").success();
    let peak_rss_kib = rss_report.map(|report| {
        let kib = std::fs::read_to_string(report)
            .ok()
            .and_then(|kib| kib.trim().parse().ok())
            .unwrap_or_else(|| panic!("no peak RSS reported in {}", report.display()));
        let _ = std::fs::remove_file(report);
        kib
    });
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not CNI JSON ({e}): {stdout:?}"))
    };
    Answer {
        ok,
        json,
        peak_rss_kib,
    }
}

/// The least peak RSS (KiB) `shim` can report: its launcher's own size, what a program forked
/// from it starts at (measured on `true`).
pub fn peak_rss_floor_kib() -> u64 {
    let report = std::env::temp_dir().join(format!("{}.rss", crate::unique_name("floor")));
    let status = Command::new(agent::binary("eniflow-peak-rss"))
        .arg(&report)
        .arg("true")
        .status()
        .expect("run eniflow-peak-rss");
    assert!(status.success(), "eniflow-peak-rss true: {status}");
    let kib = std::fs::read_to_string(&report).unwrap();
    let _ = std::fs::remove_file(&report);
    kib.trim().parse().unwrap()
}

/// cnitool as `cargo xtask setup` builds it (`ENIFLOW_CNITOOL` overrides).
pub fn cnitool() -> String {
    std::env::var("ENIFLOW_CNITOOL").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.cache/eniflow/bin/cnitool")
    })
}

/// A CNI plugin directory for a runtime: eniflow's shim and the reference plugins (loopback
/// included), as symlinks in `dir`.
pub fn plugin_dir(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::os::unix::fs::symlink(agent::binary("eniflow-cni"), dir.join("eniflow-cni")).unwrap();
    for plugin in std::fs::read_dir("/usr/lib/cni").expect("containernetworking-plugins") {
        let plugin = plugin.unwrap().path();
        std::os::unix::fs::symlink(&plugin, dir.join(plugin.file_name().unwrap())).unwrap();
    }
}

/// Removes libcni's cache directory (a fixed path every runtime uses) if the runtimes' DELs
/// left it empty.
pub fn remove_cni_cache_if_empty() {
    let _ = std::fs::remove_dir("/var/lib/cni/results");
    let _ = std::fs::remove_dir("/var/lib/cni");
}
