//! podman 4.3 with its CNI backend running a container on the eniflow network the agent's
//! conflist defines: the container gets a VPC address from the pool and reaches a remote VPC
//! host; when it exits (`--rm`) podman's DEL releases the address and removes the veth.

use std::process::Command;

use eniflow_tests::{
    cni::{self, PodNode},
    require_root,
};

/// podman with every piece of its state in `dir` (storage, run root, tmp, events), the CNI
/// backend reading the agent's conflist, runc as the runtime (crun fails on this machine's
/// hybrid cgroups), run in the node's network namespace where a node's runtime runs.
fn podman(node: &PodNode, dir: &str, args: &[&str]) -> std::process::Output {
    let bin = format!("{dir}/cni-bin");
    if !std::path::Path::new(&bin).exists() {
        cni::plugin_dir(std::path::Path::new(&bin));
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "{dir}/events.log"
tmp_dir = "{dir}/tmp"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}"]
network_config_dir = "{conf}"
"#,
            conf = node.files.cni_conf_dir()
        );
        std::fs::write(format!("{dir}/containers.conf"), conf).unwrap();
    }
    Command::new("nsenter")
        .arg(format!("--net={}", node.lab.node.netns.path()))
        .arg("podman")
        .args([
            "--root",
            &format!("{dir}/storage"),
            "--runroot",
            &format!("{dir}/run"),
        ])
        .args(["--storage-driver", "vfs"])
        .args(args)
        .env("CONTAINERS_CONF", format!("{dir}/containers.conf"))
        .output()
        .expect("run podman")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_runs_a_container_on_the_eniflow_network() {
    require_root();
    let node = PodNode::start().await;
    let dir = node.files.path("podman");
    let rootfs = format!("{dir}/rootfs");
    for sub in ["etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(format!("{rootfs}/{sub}")).unwrap();
    }
    std::fs::copy("/bin/busybox", format!("{rootfs}/busybox")).expect("busybox-static");

    let remote = node.lab.hosts[0].primary_ip.clone();
    let script = format!("/busybox ip -4 -o addr show eth0 && /busybox ping -c 2 -W 2 {remote}");
    let out = podman(
        &node,
        &dir,
        &[
            "run",
            "--rm",
            "--network",
            "eniflow",
            "--rootfs",
            &rootfs,
            "/busybox",
            "sh",
            "-c",
            &script,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "podman run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("inet 10.0."),
        "no VPC address on eth0:\n{stdout}"
    );
    assert!(
        stdout.contains("2 packets received"),
        "no replies from {remote}:\n{stdout}"
    );

    // `--rm`: podman's cleanup (run by conmon as the container exits, so maybe after `podman
    // run` returns) calls DEL, which releases the address and removes the veth.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while node.allocations() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "podman never released the address"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        node.host_veths().is_empty(),
        "the veth outlived the container"
    );
    let log = std::fs::read_to_string(node.files.path("cni.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.starts_with("ADD ")) && log.lines().any(|l| l.starts_with("DEL ")),
        "{log}"
    );
    cni::remove_cni_cache_if_empty();
}
