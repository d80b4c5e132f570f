//! eniflow-agent as a real process, as a node would run it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Whether this process runs the release build of the workspace's binaries: `cargo xtask
/// bench` says so with `ENIFLOW_PROFILE=release`; the tests run the debug build.
fn release() -> bool {
    std::env::var("ENIFLOW_PROFILE").is_ok_and(|p| p == "release")
}

/// Path to a freshly built workspace binary (built once per test process, so the tests never
/// run a stale agent).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Exactly what `cargo xtask test`, `demo` and `bench` build first, so this is a no-op
        // there: another package selection would unify features differently and rebuild the SDK.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(&cargo);
        build
            .args(["build", "--quiet", "--workspace", "--bins"])
            .args(release().then_some("--release"))
            .current_dir(workspace());
        // `cargo test` gives this process the tests package's CARGO_* variables; build scripts
        // that watch them (ring's) would see a change and rebuild half the dependency tree.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(is_package_variable) {
                build.env_remove(name);
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target
        .join(if release() { "release" } else { "debug" })
        .join(name)
}

/// The variables cargo sets for one package's build or run, as opposed to configuration.
fn is_package_variable(name: &str) -> bool {
    name == "OUT_DIR"
        || name == "CARGO_MANIFEST_DIR"
        || name == "CARGO_MANIFEST_PATH"
        || name == "CARGO_CRATE_NAME"
        || name == "CARGO_PRIMARY_PACKAGE"
        || name == "CARGO_TARGET_TMPDIR"
        || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_")
}

/// A running `eniflow-agent run`; killed (SIGKILL) if still running when dropped.
pub struct Agent {
    child: Option<Child>,
    ready: PathBuf,
}

impl Agent {
    /// Starts the agent in `netns` (a /run/netns path) attaching to `interfaces`, data plane
    /// only (no address pool), and waits until it reports every interface attached.
    pub fn start(netns: &str, bpffs_root: &Path, interfaces: &[&str], mode: &str) -> Self {
        let interfaces = interfaces.join(",");
        let args = [
            "--interfaces",
            &interfaces,
            "--attach-mode",
            mode,
            "--ipam=false",
        ];
        Self::start_with(netns, bpffs_root, &args, &[])
    }

    /// Starts `eniflow-agent run <args>` in `netns` with extra environment `env`, and waits until
    /// it is ready.
    pub fn start_with(netns: &str, bpffs_root: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_logging(netns, bpffs_root, args, env, Stdio::inherit())
    }

    /// The same, with the agent's stderr (its logs) going to `logs`.
    pub fn start_logging(
        netns: &str,
        bpffs_root: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        logs: Stdio,
    ) -> Self {
        let mut agent = Self::spawn_logging(netns, bpffs_root, args, env, logs);
        agent.wait_ready();
        agent
    }

    /// Starts the agent without waiting for it to be ready.
    pub fn spawn_logging(
        netns: &str,
        bpffs_root: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        logs: Stdio,
    ) -> Self {
        let ready = std::env::temp_dir().join(format!("{}.ready", crate::unique_name("agent")));
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(binary("eniflow-agent"))
            .arg("--netns")
            .arg(netns)
            .arg("--bpffs-root")
            .arg(bpffs_root)
            .arg("run")
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(logs)
            .spawn()
            .expect("start eniflow-agent");
        Self {
            child: Some(child),
            ready,
        }
    }

    /// Waits until the agent writes its ready file: every interface attached and the pool's
    /// first refill pass over.
    pub fn wait_ready(&mut self) {
        let child = self.child.as_mut().expect("the agent runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ready.exists() {
            if let Some(status) = child.try_wait().expect("poll agent") {
                panic!("eniflow-agent exited before it was ready: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "eniflow-agent not ready after 20 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// SIGTERM, then waits: a clean stop.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGKILL, then waits: a crash.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: the pid of a child we started and have not reaped yet.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.ready);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// `eniflow-agent --netns <netns> --bpffs-root <root> <args>`, stdin closed.
fn agent_command(netns: &str, bpffs_root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary("eniflow-agent"));
    command
        .arg("--netns")
        .arg(netns)
        .arg("--bpffs-root")
        .arg(bpffs_root)
        .args(args)
        .stdin(Stdio::null());
    command
}

/// Starts a long-running agent command (`monitor`) with its stdout piped; the caller waits for
/// it or kills it (by its PID).
pub fn spawn(netns: &str, bpffs_root: &Path, args: &[&str]) -> std::process::Child {
    agent_command(netns, bpffs_root, args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run eniflow-agent")
}

/// Runs a one-shot agent command (`status`, `uninstall`) and returns its output.
pub fn command(netns: &str, bpffs_root: &Path, args: &[&str]) -> Output {
    agent_command(netns, bpffs_root, args)
        .output()
        .expect("run eniflow-agent")
}

/// EC2 and IMDS inside a lab node, where an EC2 instance finds them; the lab takes any
/// credentials.
pub const LAB_NODE_ENV: &[(&str, &str)] = &[
    ("AWS_EC2_ENDPOINT", "http://169.254.169.254"),
    ("AWS_ACCESS_KEY_ID", "lab"),
    ("AWS_SECRET_ACCESS_KEY", "lab"),
];

/// The files the agent's pool writes, in a scratch directory removed when dropped.
pub struct PoolFiles {
    dir: PathBuf,
}

impl PoolFiles {
    pub fn new(what: &str) -> PoolFiles {
        let dir = std::env::temp_dir().join(crate::unique_name(what));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        PoolFiles { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    pub fn checkpoint(&self) -> String {
        self.path("ipam.json")
    }

    pub fn max_pods(&self) -> String {
        self.path("max-pods")
    }

    pub fn socket(&self) -> String {
        self.path("agent.sock")
    }

    /// The CNI configuration directory the agent writes its conflist into.
    pub fn cni_conf_dir(&self) -> String {
        self.path("net.d")
    }

    pub fn conflist(&self) -> String {
        format!("{}/10-eniflow.conflist", self.cni_conf_dir())
    }

    /// `run` arguments that put everything the agent writes here (and no VPC CNI checkpoint to
    /// import): nothing of the machine's own /run or /etc/cni is touched.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--checkpoint".into(),
            self.checkpoint(),
            "--max-pods-file".into(),
            self.max_pods(),
            "--vpc-cni-checkpoint".into(),
            self.path("aws-node-ipam.json"),
            "--socket".into(),
            self.socket(),
            "--cni-conflist".into(),
            self.conflist(),
            "--cni-log-file".into(),
            self.path("cni.log"),
        ]
    }
}

impl Drop for PoolFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
