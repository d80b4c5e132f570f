//! containerd 1.6's CRI, the path kubelet uses, bringing pods up and down through the conflist the
//! agent wrote (eniflow, portmap, bandwidth, tuning): RunPodSandbox gives each pod a VPC address
//! that a remote VPC host reaches; StopPodSandbox and RemovePodSandbox (each a whole DEL chain)
//! leave no veth and no allocation behind.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use eniflow_tests::{
    agent,
    cluster::{containerd_config, ContainerdPaths},
    cni::{self, PodNode},
    images,
    lab::emulator::venv,
    require_root,
};
use serde_json::{json, Value};

/// containerd started by this test in the node's network namespace, with private root, state and
/// socket; killed and its directories removed when dropped.
struct Containerd {
    child: Child,
    dir: PathBuf,
}

impl Containerd {
    fn start(node: &PodNode) -> Containerd {
        let dir = PathBuf::from(node.files.path("containerd"));
        let bin = dir.join("cni-bin");
        cni::plugin_dir(&bin);
        let config = containerd_config(&ContainerdPaths {
            root: &dir.join("root"),
            state: &dir.join("state"),
            socket: &dir.join("containerd.sock"),
            cni_bin: &bin,
            cni_conf: Path::new(&node.files.cni_conf_dir()),
            runc_root: &dir.join("runc"),
        });
        std::fs::write(dir.join("config.toml"), config).unwrap();
        // In the node's network namespace (where a kubelet's runtime runs), not its mounts: the
        // pod namespaces containerd bind-mounts must be visible to the agent.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.lab.node.netns.path()))
            .arg("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("start containerd");
        let containerd = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd.import_sandbox_image();
        containerd
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Imports the sandbox image (busybox-static sleeping).
    fn import_sandbox_image(&self) {
        let archive = images::sandbox_archive(&self.dir.join("image"));
        run(
            "ctr",
            &[
                "--address",
                &self.socket().to_string_lossy(),
                "-n",
                "k8s.io",
                "images",
                "import",
                &archive.to_string_lossy(),
            ],
        );
    }

    /// Runs the CRI client script; returns its JSON answer.
    fn cri(&self, args: &[&str]) -> Value {
        let script = agent::workspace().join("tests/lab/cri_client.py");
        let out = Command::new(venv().join("bin/python"))
            .arg(script)
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run the CRI client");
        assert!(
            out.status.success(),
            "CRI {args:?}: {}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("the CRI client prints JSON")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Sandboxes a failed test left: through the CRI, so containerd tears them down itself.
        let script = agent::workspace().join("tests/lab/cri_client.py");
        let _ = Command::new(venv().join("bin/python"))
            .arg(script)
            .arg(self.socket())
            .arg("cleanup")
            .output();
        // SAFETY: the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims that outlived it are ours: they name our socket.
        let socket = self.socket().display().to_string();
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &socket])
            .output();
        // libcni's cache of our sandboxes (the real runtime's path; emptied by DEL).
        cni::remove_cni_cache_if_empty();
        // containerd 1.6 keeps shim sockets here whatever its state directory.
        let _ = std::fs::remove_dir("/run/containerd/s");
        let _ = std::fs::remove_dir("/run/containerd");
        // Shims containerd started for sandboxes are gone with RemovePodSandbox; mounts under
        // its root are released before the directory goes.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("root"))
            .output();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("state"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_and_removes_pods_through_the_agents_conflist() {
    require_root();
    let chain = json!([
        { "type": "portmap", "capabilities": { "portMappings": true } },
        { "type": "bandwidth", "capabilities": { "bandwidth": true } },
        { "type": "tuning", "sysctl": { "net.core.somaxconn": "512" } },
    ])
    .to_string();
    let node = PodNode::start_with(&["--cni-chain", &chain]).await;
    let conflist: Value = serde_json::from_slice(
        &std::fs::read(node.files.conflist()).expect("the agent's conflist"),
    )
    .unwrap();
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["eniflow-cni", "portmap", "bandwidth", "tuning"]);
    let containerd = Containerd::start(&node);

    let names: Vec<String> = (0..6).map(|n| format!("web-{n}")).collect();
    let mut args = vec!["run"];
    args.extend(names.iter().map(String::as_str));
    let pods = containerd.cri(&args);
    let pods = pods.as_array().unwrap();
    let mut ips: Vec<&str> = pods.iter().map(|p| p["ip"].as_str().unwrap()).collect();
    assert!(ips.iter().all(|ip| ip.starts_with("10.0.")), "{pods:?}");
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 6, "an address handed out twice: {pods:?}");
    assert_eq!(node.allocations(), 6);
    assert_eq!(node.host_veths().len(), 6);
    let remote = &node.lab.hosts[0].netns;
    for ip in &ips {
        assert!(
            cni::pings(remote, ip),
            "a remote VPC host cannot reach the pod at {ip}"
        );
    }

    let ids: Vec<&str> = pods.iter().map(|p| p["id"].as_str().unwrap()).collect();
    let mut args = vec!["stop-remove"];
    args.extend(ids);
    containerd.cri(&args);
    assert_eq!(
        node.allocations(),
        0,
        "allocations outlived RemovePodSandbox"
    );
    assert!(
        node.host_veths().is_empty(),
        "veths outlived RemovePodSandbox"
    );
    let log = std::fs::read_to_string(node.files.path("cni.log")).unwrap_or_default();
    let dels = log.lines().filter(|l| l.starts_with("DEL ")).count();
    assert!(
        dels >= 12,
        "containerd runs DEL on stop and on remove; the shim logged {dels}:\n{log}"
    );
}
