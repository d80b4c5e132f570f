//! The agent's files on disk (checkpoints, the conflist, max pods): written so that a crash at
//! any moment leaves the old file or the new one, with times in unix milliseconds.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

/// Where the agent keeps its state and finds VPC CNI's: `run` and `uninstall --handback` take
/// the same settings.
#[derive(clap::Args, Clone, Debug)]
pub struct NodeFiles {
    /// eniflow's allocation checkpoint (its branch pods and takeover report sit beside it).
    #[arg(
        long,
        env = "ENIFLOW_CHECKPOINT",
        default_value = "/var/run/eniflow/ipam.json"
    )]
    pub checkpoint: PathBuf,
    /// VPC CNI's checkpoint: imported when eniflow has none (a node moving from aws-node),
    /// written by a handback.
    #[arg(
        long,
        env = "AWS_VPC_K8S_CNI_BACKING_STORE",
        default_value = "/var/run/aws-node/ipam.json"
    )]
    pub vpc_cni_checkpoint: PathBuf,
    /// Written once the agent serves CNI requests: its presence marks the node network-ready.
    #[arg(
        long,
        env = "ENIFLOW_CNI_CONFLIST",
        default_value = "/etc/cni/net.d/10-eniflow.conflist"
    )]
    pub cni_conflist: PathBuf,
}

impl NodeFiles {
    /// The security-group pods' checkpoint.
    pub fn branch_pods(&self) -> PathBuf {
        self.checkpoint.with_file_name("branch-pods.json")
    }

    /// What the last takeover from aws-node found, removed and kept.
    pub fn takeover_report(&self) -> PathBuf {
        self.checkpoint.with_file_name("takeover.json")
    }
}

/// Writes `body` to `path` through a temporary file, fsync, rename and a directory fsync: a
/// crash at any moment leaves the old file or the new one, never a torn one.
pub fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(body)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Wall-clock milliseconds since the epoch: what the checkpoints record times in.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
