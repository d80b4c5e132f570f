//! A real Kubernetes cluster on the lab: the control plane (kube-apiserver on etcd, kube-scheduler,
//! kube-controller-manager) in the lab node's namespace, and on a lab node containerd and a kubelet
//! as EKS runs them, so eniflow is installed the way operators install it: `kubectl apply -k`.
//!
//! A node's containerd and kubelet run in the lab node's network namespace and in a private mount
//! namespace of their own (a holder process), where the paths a node's agent and runtime share
//! (/run, /var/lib, /var/log, /opt, /etc/cni/net.d, /sys/fs/bpf) are fresh: nothing of the
//! machine's is written, and it all vanishes with the holder. Every process of the node lives in a
//! cgroup tree of its own, which is how the node is torn down: by that cgroup, never by name.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    images,
    kube::{bin, KubeApi},
    netns::Netns,
    sh::run,
};

/// Polls `done` every 200 ms until it holds, or panics after `limit` saying `what` (and `why()`).
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
    why: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            why()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// kube-apiserver, kube-scheduler and kube-controller-manager in `netns`.
pub struct ControlPlane {
    pub api: KubeApi,
    netns: String,
    dir: PathBuf,
    admin: PathBuf,
    scheduler: Child,
    controller_manager: Child,
}

impl ControlPlane {
    /// Starts the control plane in `netns`, reachable from other nodes at `address` (one of
    /// `netns`'s addresses: the lab node's primary).
    pub fn start(netns: &Netns, address: &str) -> ControlPlane {
        let api = KubeApi::start_at(netns, Some(address));
        let dir = std::env::temp_dir().join(crate::unique_name("control"));
        fs::create_dir_all(&dir).unwrap();
        let admin = api.kubeconfig(&dir, "admin", "lab-admin", "system:masters");
        let spawn = |program: &str, args: Vec<String>| {
            let log = fs::File::create(dir.join(format!("{program}.log"))).unwrap();
            Command::new("nsenter")
                .arg(format!("--net={}", netns.path()))
                .arg(bin(program))
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start")
        };
        let file = |p: PathBuf| p.display().to_string();
        let scheduler_config = api.kubeconfig(
            &dir,
            "scheduler",
            "system:kube-scheduler",
            "system:kube-scheduler",
        );
        let scheduler = spawn(
            "kube-scheduler",
            vec![
                format!("--kubeconfig={}", file(scheduler_config)),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--port=0".into(),
            ],
        );
        let manager_config = api.kubeconfig(
            &dir,
            "controller-manager",
            "system:kube-controller-manager",
            "system:kube-controller-manager",
        );
        let (ca, _) = api.ca();
        let controller_manager = spawn(
            "kube-controller-manager",
            vec![
                format!("--kubeconfig={}", file(manager_config)),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--port=0".into(),
                "--use-service-account-credentials=true".into(),
                format!(
                    "--service-account-private-key-file={}",
                    file(api.service_account_key())
                ),
                format!("--root-ca-file={}", file(ca)),
                // The lab's nodes are watched closely: a node that stops reporting is noticed soon.
                "--node-monitor-grace-period=20s".into(),
                "--node-monitor-period=2s".into(),
            ],
        );
        let plane = ControlPlane {
            api,
            netns: netns.path(),
            dir,
            admin,
            scheduler,
            controller_manager,
        };
        // The token controller has made the default namespace's service account: pods can start.
        wait_for(
            "the default service account",
            Duration::from_secs(60),
            || {
                plane
                    .api
                    .call(
                        "GET",
                        "/api/v1/namespaces/default/serviceaccounts/default",
                        None,
                    )
                    .0
                    == 200
            },
            || plane.log("kube-controller-manager"),
        );
        plane
    }

    /// The last lines of a component's log.
    pub fn log(&self, component: &str) -> String {
        let log = fs::read_to_string(self.dir.join(format!("{component}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(30).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// kubectl as the cluster's admin.
    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns))
            .arg(bin("kubectl"))
            .arg(format!("--kubeconfig={}", self.admin.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// kubectl as the cluster's admin; panics unless it succeeds; returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get <what> -o json`.
    pub fn get(&self, what: &[&str]) -> Value {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl(&args)).expect("kubectl prints JSON")
    }

    /// The Ready condition of node `name`: (status, reason, message).
    pub fn node_ready(&self, name: &str) -> (String, String) {
        let node = self.get(&["node", name]);
        let conditions = node["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions
            .iter()
            .find(|c| c["type"] == "Ready")
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_owned(),
                    c["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .unwrap_or_default()
    }

    /// Installs eniflow as operators do, `kubectl apply -k`, through an overlay of deploy/ that
    /// sets the DaemonSet's image and gives the agent `env`.
    pub fn install_eniflow(&self, image: &str, env: &[(String, String)]) {
        let overlay = eniflow_overlay(&self.dir.join("overlay"), image, env);
        self.kubectl(&["apply", "-k", &overlay.display().to_string()]);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [&mut self.scheduler, &mut self.controller_manager] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("ENIFLOW_KEEP_KUBE").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Where a containerd the lab starts keeps its things.
pub struct ContainerdPaths<'a> {
    pub root: &'a Path,
    pub state: &'a Path,
    pub socket: &'a Path,
    pub cni_bin: &'a Path,
    pub cni_conf: &'a Path,
    pub runc_root: &'a Path,
}

/// containerd's configuration as a node without systemd needs it: CRI with the lab's sandbox
/// image, runc with cgroupfs, oom_score_adj kept within what root may set here.
pub fn containerd_config(paths: &ContainerdPaths) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
"#,
        root = paths.root.display(),
        state = paths.state.display(),
        socket = paths.socket.display(),
        sandbox = images::SANDBOX_IMAGE,
        bin = paths.cni_bin.display(),
        conf = paths.cni_conf.display(),
        runc = paths.runc_root.display(),
    )
}

/// The v1 cgroup hierarchies kubelet's cgroupfs driver uses (each gets the node's cgroup root).
const HIERARCHIES: &[&str] = &[
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd",
];

/// kubelet refuses to start with --protect-kernel-defaults unless these hold; inside the node's
/// mount namespace files with these values cover the machine's, which stay untouched.
const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// One Kubernetes node on a lab instance: containerd and kubelet in its network namespace.
pub struct KubeletNode {
    pub name: String,
    netns: String,
    dir: PathBuf,
    cgroup: String,
    holder: Child,
    containerd: Option<Child>,
    kubelet: Option<Child>,
    kube_proxy: Option<Child>,
}

impl KubeletNode {
    /// Starts containerd and kubelet for node `name` (address `node_ip`, at most `max_pods`
    /// pods) in `netns`, with `images` (archives) imported, registered with `plane` and with
    /// `taints` (kubelet's `--register-with-taints`).
    pub fn start(
        plane: &ControlPlane,
        netns: &Netns,
        name: &str,
        node_ip: &str,
        max_pods: u32,
        images: &[PathBuf],
        taints: &[&str],
    ) -> KubeletNode {
        let dir = std::env::temp_dir().join(crate::unique_name("kubelet"));
        fs::create_dir_all(&dir).unwrap();
        let cgroup = crate::unique_name("node");
        for hierarchy in HIERARCHIES {
            let root = Path::new("/sys/fs/cgroup").join(hierarchy);
            let path = root.join(&cgroup);
            fs::create_dir_all(path.join("runtime")).unwrap();
            if *hierarchy == "cpuset" {
                for dir in [path.clone(), path.join("runtime")] {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let value = fs::read_to_string(root.join(file)).unwrap();
                        fs::write(dir.join(file), value.trim()).unwrap();
                    }
                }
            }
        }
        // The holder keeps the node's mount namespace; mounts made there stay there.
        let holder = Command::new("unshare")
            .args(["-m", "--propagation", "slave", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the mount namespace holder");
        let mut node = KubeletNode {
            name: name.to_owned(),
            netns: netns.path(),
            dir: dir.clone(),
            cgroup,
            holder,
            containerd: None,
            kubelet: None,
            kube_proxy: None,
        };
        node.wait_for_holder();
        node.prepare_mounts();
        node.start_containerd();
        for archive in std::iter::once(images::sandbox_archive(&dir.join("busybox")))
            .chain(images.iter().cloned())
        {
            node.ctr(&["images", "import", &archive.display().to_string()]);
        }
        let kubeconfig = plane.api.kubeconfig(
            &dir,
            "kubelet",
            &format!("system:node:{name}"),
            "system:nodes",
        );
        let file = |p: &Path| p.display().to_string();
        let mut args = vec![
            format!("--kubeconfig={}", file(&kubeconfig)),
            "--root-dir=/var/lib/kubelet".into(),
            format!("--cert-dir={}", file(&dir.join("kubelet-pki"))),
            "--container-runtime=remote".into(),
            format!(
                "--container-runtime-endpoint=unix://{}",
                file(&node.socket())
            ),
            "--cgroup-driver=cgroupfs".into(),
            format!("--cgroup-root=/{}", node.cgroup),
            "--fail-swap-on=false".into(),
            "--protect-kernel-defaults=true".into(),
            format!("--hostname-override={name}"),
            format!("--node-ip={node_ip}"),
            format!("--max-pods={max_pods}"),
            // The API server reaches kubelets at their node address (exec, logs).
            format!("--address={node_ip}"),
            "--read-only-port=0".into(),
            "--healthz-bind-address=127.0.0.1".into(),
            "--anonymous-auth=false".into(),
            format!("--client-ca-file={}", file(&plane.api.ca().0)),
            "--node-status-update-frequency=2s".into(),
            // The lab's disk is shared with everything else: never evict for it.
            "--eviction-hard=memory.available<1Mi,nodefs.available<1%,imagefs.available<1%".into(),
            "--image-gc-high-threshold=100".into(),
            "--serialize-image-pulls=false".into(),
        ];
        if !taints.is_empty() {
            args.push(format!("--register-with-taints={}", taints.join(",")));
        }
        let kubelet = node.spawn("kubelet", &bin("kubelet").display().to_string(), &args);
        node.kubelet = Some(kubelet);
        // Services by iptables in the node's namespace; the machine's conntrack settings are
        // left alone (0: do not touch).
        let proxy_config = plane.api.kubeconfig(
            &dir,
            "kube-proxy",
            "system:kube-proxy",
            "system:node-proxier",
        );
        let args = vec![
            format!("--kubeconfig={}", file(&proxy_config)),
            format!("--hostname-override={name}"),
            "--proxy-mode=iptables".into(),
            "--conntrack-max-per-core=0".into(),
            "--conntrack-tcp-timeout-established=0".into(),
            "--conntrack-tcp-timeout-close-wait=0".into(),
            "--metrics-bind-address=127.0.0.1:10249".into(),
            "--healthz-bind-address=127.0.0.1:10256".into(),
        ];
        let proxy = node.spawn(
            "kube-proxy",
            &bin("kube-proxy").display().to_string(),
            &args,
        );
        node.kube_proxy = Some(proxy);
        wait_for(
            &format!("node {name} registered"),
            Duration::from_secs(60),
            || {
                plane
                    .api
                    .call("GET", &format!("/api/v1/nodes/{name}"), None)
                    .0
                    == 200
            },
            || node.log("kubelet"),
        );
        node
    }

    fn wait_for_holder(&self) {
        let mine = fs::read_link("/proc/self/ns/mnt").unwrap();
        let theirs = format!("/proc/{}/ns/mnt", self.holder.id());
        wait_for(
            "the node's mount namespace",
            Duration::from_secs(10),
            || fs::read_link(&theirs).is_ok_and(|ns| ns != mine),
            String::new,
        );
    }

    /// A command inside the node: its mount namespace and the lab node's network namespace.
    fn inside(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg(format!("--net={}", self.netns))
            .arg(program);
        cmd
    }

    /// Runs a shell script inside the node's mount namespace; panics unless it succeeds.
    fn sh(&self, script: &str) {
        let out = self.inside("sh").args(["-ec", script]).output().unwrap();
        assert!(
            out.status.success(),
            "in node {}: {script}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn prepare_mounts(&self) {
        let scratch = |what: &str| {
            let path = self.dir.join(what);
            fs::create_dir_all(&path).unwrap();
            path.display().to_string()
        };
        let cni_bin = scratch("cni-bin");
        // The reference plugins a node image ships (eniflow chains portmap by default).
        for plugin in fs::read_dir("/usr/lib/cni").expect("containernetworking-plugins") {
            let plugin = plugin.unwrap().path();
            fs::copy(
                &plugin,
                Path::new(&cni_bin).join(plugin.file_name().unwrap()),
            )
            .unwrap();
        }
        let sysctls = scratch("sysctls");
        let mut binds = String::new();
        for (n, (key, value)) in KUBELET_SYSCTLS.iter().enumerate() {
            let file = format!("{sysctls}/{n}");
            fs::write(&file, format!("{value}\n")).unwrap();
            binds.push_str(&format!("mount --bind {file} /proc/sys/{key}\n"));
        }
        self.sh(&format!(
            "for dir in /run /var/lib /var/log /opt; do mount -t tmpfs -o mode=755 tmpfs $dir; done
             mkdir -p /opt/cni/bin /run/netns /var/lib/kubelet
             mount --bind {cni_bin} /opt/cni/bin
             mount --bind {conf} /etc/cni/net.d
             mount -t bpf bpf /sys/fs/bpf
             {binds}
             mount --make-rshared /",
            conf = scratch("net.d"),
        ));
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Starts `program` inside the node, in the node's cgroup tree, logging to `<name>.log`.
    fn spawn(&self, name: &str, program: &str, args: &[String]) -> Child {
        let log = fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        // Joins the node's cgroups first, so everything it starts (shims, containers) is found
        // there at the end.
        let procs: Vec<String> = HIERARCHIES
            .iter()
            .map(|h| format!("/sys/fs/cgroup/{h}/{}/runtime/cgroup.procs", self.cgroup))
            .collect();
        let join = procs
            .iter()
            .map(|p| format!("echo $$ > {p}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut cmd = self.inside("sh");
        cmd.arg("-c")
            .arg(format!("{join}; exec \"$0\" \"$@\""))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"))
    }

    fn start_containerd(&mut self) {
        let dir = &self.dir;
        let config = containerd_config(&ContainerdPaths {
            root: &dir.join("containerd"),
            state: Path::new("/run/containerd"),
            socket: &self.socket(),
            cni_bin: Path::new("/opt/cni/bin"),
            cni_conf: Path::new("/etc/cni/net.d"),
            runc_root: Path::new("/run/runc"),
        });
        fs::write(dir.join("containerd.toml"), config).unwrap();
        let args = vec![
            "--config".to_owned(),
            dir.join("containerd.toml").display().to_string(),
        ];
        self.containerd = Some(self.spawn("containerd", "containerd", &args));
        wait_for(
            "containerd's socket",
            Duration::from_secs(30),
            || self.socket().exists(),
            || self.log("containerd"),
        );
    }

    /// `ctr` on this node's containerd, in the CRI's namespace; returns stdout.
    pub fn ctr(&self, args: &[&str]) -> String {
        let socket = self.socket().display().to_string();
        let mut full = vec!["--address", socket.as_str(), "-n", "k8s.io"];
        full.extend_from_slice(args);
        run("ctr", &full)
    }

    /// The last lines of `component`'s log (kubelet, containerd).
    pub fn log(&self, component: &str) -> String {
        let log = fs::read_to_string(self.dir.join(format!("{component}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(40).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The logs of `namespace`'s pods whose names start with `pod`, as the node keeps them.
    pub fn pod_logs(&self, namespace: &str, pod: &str) -> String {
        let out = self
            .inside("sh")
            .arg("-c")
            .arg(format!(
                "tail -n 30 /var/log/pods/{namespace}_{pod}*/*/*.log"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The first lines of the kubelet's log that contain `needle`.
    pub fn kubelet_log_matching(&self, needle: &str) -> String {
        let log = fs::read_to_string(self.dir.join("kubelet.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(needle))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Writes a CNI network configuration into the node's /etc/cni/net.d (another CNI than
    /// eniflow, for comparisons).
    pub fn write_cni_config(&self, file: &str, text: &str) {
        fs::write(self.dir.join("net.d").join(file), text).unwrap();
    }

    /// Removes what `write_cni_config` wrote.
    pub fn remove_cni_config(&self, file: &str) {
        fs::remove_file(self.dir.join("net.d").join(file)).unwrap();
    }

    /// A file of the node as its processes see it (e.g. /etc/cni/net.d/10-eniflow.conflist).
    pub fn read(&self, path: &str) -> Option<String> {
        let out = self.inside("cat").arg(path).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Allocations in the agent's checkpoint on this node, by pod address.
    pub fn allocations(&self) -> Vec<String> {
        let Some(text) = self.read("/run/eniflow/ipam.json") else {
            return Vec::new();
        };
        let saved: Value = serde_json::from_str(&text).expect("the checkpoint is JSON");
        saved["allocations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a["ipv4"].as_str().map(str::to_owned))
            .collect()
    }

    /// The pods in the agent's pinned `pods` map on this node (bpftool, in the node's mounts).
    pub fn pods_map_entries(&self) -> usize {
        let pods = format!(
            "/sys/fs/bpf/eniflow/{}/maps/{}",
            eniflow_common::PIN_VERSION,
            eniflow_common::maps::PODS
        );
        let out = self
            .inside("bpftool")
            .args(["-j", "map", "dump", "pinned", &pods])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bpftool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let entries: Value = serde_json::from_slice(&out.stdout).expect("bpftool prints JSON");
        entries.as_array().map_or(0, Vec::len)
    }

    /// The host-side pod veths in the node's namespace (VPC CNI's and eniflow's `eni` prefix).
    pub fn pod_veths(&self) -> Vec<String> {
        let out = self
            .inside("ip")
            .args(["-j", "link", "show", "type", "veth"])
            .output()
            .unwrap();
        let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        links
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .filter(|name| name.starts_with("eni"))
            .collect()
    }

    /// Every process in the node's cgroup tree.
    fn processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let mut dirs = vec![Path::new("/sys/fs/cgroup/pids").join(&self.cgroup)];
        while let Some(dir) = dirs.pop() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|p| p.parse::<i32>().ok()));
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        pids
    }
}

/// Removes `dir` and the cgroups below it, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                remove_cgroup(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        for child in [self.kubelet.take(), self.kube_proxy.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        // Everything the node started is in its cgroups: containerd, its shims, the pods.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pids = self.processes();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: a process in the cgroup tree this node created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(mut containerd) = self.containerd.take() {
            let _ = containerd.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        for hierarchy in HIERARCHIES.iter().chain(&["unified"]) {
            remove_cgroup(
                &Path::new("/sys/fs/cgroup")
                    .join(hierarchy)
                    .join(&self.cgroup),
            );
        }
        if std::env::var_os("ENIFLOW_KEEP_KUBE").is_none() {
            // Snapshots were mounted only inside the node's namespace, gone with the holder.
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The environment that points eniflow's agent at the lab's EC2 (which takes any credentials);
/// the API it finds in the cluster's way (KUBERNETES_SERVICE_HOST, through kube-proxy).
pub fn lab_agent_env() -> Vec<(String, String)> {
    crate::agent::LAB_NODE_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes a kustomize overlay of deploy/ into `dir`: the DaemonSet's image set to `image` and
/// the agent given `env`; deploy/'s own files are used as they are. Returns `dir`.
fn eniflow_overlay(dir: &Path, image: &str, env: &[(String, String)]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let deploy = crate::agent::workspace().join("deploy");
    // kubectl 1.20's kustomize takes bases only as relative paths.
    let up = dir
        .canonicalize()
        .unwrap()
        .components()
        .count()
        .saturating_sub(1);
    let base = format!(
        "{}{}",
        "../".repeat(up),
        deploy.display().to_string().trim_start_matches('/')
    );
    let (name, tag) = image.rsplit_once(':').expect("image name:tag");
    fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "bases:\n  - {base}\nimages:\n  - name: eniflow\n    newName: {name}\n    newTag: \"{tag}\"\npatchesStrategicMerge:\n  - lab.yaml\n"
        ),
    )
    .unwrap();
    let env: Vec<Value> = env
        .iter()
        .map(|(k, v)| serde_json::json!({ "name": k, "value": v }))
        .collect();
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": "eniflow-agent", "namespace": "kube-system" },
        "spec": { "template": { "spec": { "containers": [{ "name": "agent", "env": env }] } } },
    });
    // JSON is YAML.
    fs::write(dir.join("lab.yaml"), patch.to_string()).unwrap();
    dir.to_owned()
}

/// What the DaemonSet runs (`image:` in deploy/daemonset.yaml, as the CRI names it).
pub fn deployed_image() -> String {
    format!("docker.io/library/eniflow:{}", env!("CARGO_PKG_VERSION"))
}

/// The node's max pods as its bootstrap computes it, before kubelet starts.
pub fn bootstrap_max_pods(instance_type: &str, pod_eni: bool) -> u32 {
    let out = std::process::Command::new(crate::agent::binary("eniflow-agent"))
        .args(["max-pods", "--instance-type", instance_type])
        .args(pod_eni.then_some("--pod-eni"))
        .output()
        .expect("run eniflow-agent max-pods");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number")
}

/// The agent's pods in kube-system: (name, phase, ready).
pub fn agent_pods(plane: &ControlPlane) -> Vec<(String, String, bool)> {
    let pods = plane.get(&[
        "pods",
        "-n",
        "kube-system",
        "-l",
        "app.kubernetes.io/name=eniflow",
    ]);
    pods["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["status"]["phase"].as_str().unwrap_or_default().to_owned(),
                ready,
            )
        })
        .collect()
}

/// A Deployment of busybox httpd pods, each passing a kubelet HTTP readiness probe.
pub fn web_deployment(name: &str, replicas: u32) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "web",
                        "image": images::BUSYBOX_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/busybox", "sh", "-c",
                            "mkdir -p /www && echo $HOSTNAME > /www/index.html && exec /busybox httpd -f -p 8080 -h /www"],
                        "readinessProbe": {
                            "httpGet": { "path": "/", "port": 8080 },
                            "periodSeconds": 2,
                        },
                    }],
                },
            },
        },
    })
    .to_string()
}

/// One pod of a Deployment as the API reports it.
#[derive(Debug, Clone)]
pub struct WebPod {
    pub name: String,
    pub ip: String,
    pub node: String,
    pub ready: bool,
}

/// The Deployment's pods (those not being deleted).
pub fn web_pods(plane: &ControlPlane, app: &str) -> Vec<WebPod> {
    let pods = plane.get(&["pods", "-n", "default", "-l", &format!("app={app}")]);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    pods["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| WebPod {
            name: text(&p["metadata"]["name"]),
            ip: text(&p["status"]["podIP"]),
            node: text(&p["spec"]["nodeName"]),
            ready: p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            }),
        })
        .collect()
}
