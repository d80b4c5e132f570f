//! Container images for the lab's runtimes, made here because no registry is reachable: busybox
//! as the sandbox ("pause") image and the workload image, and eniflow's own image as
//! `cargo xtask image --debug` builds it.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use serde_json::json;

use crate::sh::run;

/// The sandbox image containerd's CRI runs for every pod: busybox sleeping.
pub const SANDBOX_IMAGE: &str = "eniflow.local/pause:1";
/// The same busybox under the name workloads use (httpd for HTTP probes, ping, wget, nc).
pub const BUSYBOX_IMAGE: &str = "eniflow.local/busybox:1";

/// Writes busybox-static as a docker-archive under `dir` (tagged SANDBOX_IMAGE and
/// BUSYBOX_IMAGE) and returns the archive, for `ctr images import`.
pub fn sandbox_archive(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("busybox")).expect("busybox-static");
    let layer = dir.join("layer.tar");
    let text = |p: &Path| p.display().to_string();
    run(
        "tar",
        &["-C", &text(&rootfs), "-cf", &text(&layer), "busybox"],
    );
    let digest = run("sha256sum", &[&text(&layer)]);
    let digest = digest.split_whitespace().next().unwrap();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": ["/busybox", "sleep", "2147483647"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{digest}")] },
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let manifest = json!([{
        "Config": "config.json",
        "RepoTags": [SANDBOX_IMAGE, BUSYBOX_IMAGE],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = dir.join("busybox.tar");
    run(
        "tar",
        &[
            "-C",
            &text(dir),
            "-cf",
            &text(&archive),
            "manifest.json",
            "config.json",
            "layer.tar",
        ],
    );
    archive
}

/// eniflow's image as operators get it (`cargo xtask image`), from the debug binaries the
/// tests run; built once per test process. Returns the OCI archive.
pub fn eniflow_archive() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let xtask = crate::agent::binary("xtask");
            run(&xtask.display().to_string(), &["image", "--debug"]);
            let archive = crate::agent::workspace()
                .join("target")
                .join(format!("eniflow-{}.oci.tar", env!("CARGO_PKG_VERSION")));
            assert!(
                archive.exists(),
                "xtask image made no {}",
                archive.display()
            );
            archive
        })
        .clone()
}
