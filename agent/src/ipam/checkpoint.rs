//! The allocations on disk: written atomically (temp file, fsync, rename, fsync of the directory)
//! before an assign or release is acknowledged, read back on start. A versioned format; VPC CNI's
//! `ipam.json` is imported so a node moves from aws-node to eniflow without restarting its pods.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::pool::{Allocation, Owner};
use crate::files::write_atomically;

/// This format's version tag.
pub const VERSION: &str = "eniflow-ipam/1";
/// VPC CNI's checkpoint version tag (AWS_VPC_K8S_CNI_BACKING_STORE).
pub const VPC_CNI_VERSION: &str = "vpc-cni-ipam/1";

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: String,
    pub allocations: Vec<Allocation>,
    /// Released addresses still cooling, with their release time (unix ms).
    pub cooling: Vec<Cooling>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cooling {
    pub ipv4: Ipv4Addr,
    pub released_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Format { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `checkpoint` so that a crash at any moment leaves the old file or the new one.
pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    let body = serde_json::to_vec(checkpoint).map_err(|e| format_error(path)(e.to_string()))?;
    write_atomically(path, &body).map_err(io(path))
}

/// The file's bytes; None when it does not exist.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, CheckpointError> {
    match fs::read(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

fn format_error(path: &Path) -> impl Fn(String) -> CheckpointError + '_ {
    move |message| CheckpointError::Format {
        path: path.to_owned(),
        message,
    }
}

/// Reads eniflow's checkpoint; None when there is none yet.
pub fn load(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    read_if_present(path)?
        .map(|text| decode(path, &text))
        .transpose()
}

/// eniflow's checkpoint from the bytes of the file at `path` (named in errors).
pub fn decode(path: &Path, text: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let format = format_error(path);
    let checkpoint: Checkpoint = serde_json::from_slice(text).map_err(|e| format(e.to_string()))?;
    if checkpoint.version != VERSION {
        return Err(format(format!(
            "version {:?} is not {VERSION:?}",
            checkpoint.version
        )));
    }
    Ok(checkpoint)
}

#[derive(Serialize, Deserialize)]
struct VpcCni {
    version: String,
    #[serde(default)]
    allocations: Vec<VpcCniAllocation>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VpcCniAllocation {
    network_name: String,
    #[serde(rename = "containerID")]
    container_id: String,
    if_name: String,
    ipv4: Option<Ipv4Addr>,
    /// Nanoseconds.
    #[serde(default)]
    allocation_timestamp: u64,
    #[serde(default)]
    metadata: VpcCniMetadata,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VpcCniMetadata {
    #[serde(default)]
    k8s_pod_namespace: String,
    #[serde(default)]
    k8s_pod_name: String,
    #[serde(default = "one")]
    interfaces_count: u32,
}

fn one() -> u32 {
    1
}

/// VPC CNI's network name (its conflist's), which its checkpoint's allocations carry.
pub const VPC_CNI_NETWORK: &str = "aws-cni";

/// Reads VPC CNI's checkpoint as eniflow allocations (their ENI is filled in on restore); None
/// when there is none.
pub fn import_vpc_cni(path: &Path) -> Result<Option<Vec<Allocation>>, CheckpointError> {
    read_if_present(path)?
        .map(|text| decode_vpc_cni(path, &text))
        .transpose()
}

/// VPC CNI's checkpoint from the bytes of the file at `path` (named in errors). IPv6-only
/// allocations are skipped: eniflow's pool is IPv4. Allocations of VPC CNI's network take
/// eniflow's network name: the runtime's DEL and GC of a migrated pod come through eniflow's
/// conflist, and would find nothing under `aws-cni`.
pub fn decode_vpc_cni(path: &Path, text: &[u8]) -> Result<Vec<Allocation>, CheckpointError> {
    let format = format_error(path);
    let old: VpcCni = serde_json::from_slice(text).map_err(|e| format(e.to_string()))?;
    if old.version != VPC_CNI_VERSION {
        return Err(format(format!(
            "version {:?} is not VPC CNI's {VPC_CNI_VERSION:?}",
            old.version
        )));
    }
    Ok(old
        .allocations
        .into_iter()
        .filter_map(|a| {
            Some(Allocation {
                owner: Owner {
                    network: if a.network_name == VPC_CNI_NETWORK {
                        crate::cni::conflist::NETWORK.to_owned()
                    } else {
                        a.network_name
                    },
                    container_id: a.container_id,
                    ifname: a.if_name,
                },
                ipv4: a.ipv4?,
                eni: String::new(),
                pod_namespace: a.metadata.k8s_pod_namespace,
                pod_name: a.metadata.k8s_pod_name,
                allocated_at_ms: a.allocation_timestamp / 1_000_000,
            })
        })
        .collect())
}

/// `allocations` in VPC CNI's checkpoint format (the way back to aws-node), under VPC CNI's
/// network name: aws-node then answers the DELs of these pods.
pub fn encode_vpc_cni(allocations: &[Allocation]) -> Vec<u8> {
    let file = VpcCni {
        version: VPC_CNI_VERSION.to_owned(),
        allocations: allocations
            .iter()
            .map(|a| VpcCniAllocation {
                network_name: VPC_CNI_NETWORK.to_owned(),
                container_id: a.owner.container_id.clone(),
                if_name: a.owner.ifname.clone(),
                ipv4: Some(a.ipv4),
                allocation_timestamp: a.allocated_at_ms * 1_000_000,
                metadata: VpcCniMetadata {
                    k8s_pod_namespace: a.pod_namespace.clone(),
                    k8s_pod_name: a.pod_name.clone(),
                    interfaces_count: 1,
                },
            })
            .collect(),
    };
    serde_json::to_vec(&file).expect("a checkpoint serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "eniflow-checkpoint-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_version_check() {
        let d = dir();
        let path = d.join("ipam.json");
        assert!(load(&path).unwrap().is_none());
        let c = Checkpoint {
            version: VERSION.into(),
            allocations: vec![Allocation {
                owner: Owner {
                    network: "eniflow".into(),
                    container_id: "abc".into(),
                    ifname: "eth0".into(),
                },
                ipv4: "10.0.1.5".parse().unwrap(),
                eni: "eni-1".into(),
                pod_namespace: "default".into(),
                pod_name: "web".into(),
                allocated_at_ms: 7,
            }],
            cooling: vec![Cooling {
                ipv4: "10.0.1.6".parse().unwrap(),
                released_at_ms: 9,
            }],
        };
        save(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap().unwrap(), c);
        fs::write(
            &path,
            br#"{"version":"eniflow-ipam/9","allocations":[],"cooling":[]}"#,
        )
        .unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("eniflow-ipam/9"), "{err}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn vpc_cni_checkpoints_import() {
        let d = dir();
        fs::create_dir_all(&d).unwrap();
        let path = d.join("aws-node.json");
        fs::write(
            &path,
            br#"{"version":"vpc-cni-ipam/1","allocations":[
              {"networkName":"aws-cni","containerID":"c1","ifName":"eth0","ipv4":"10.0.1.7",
               "allocationTimestamp":1700000000123456789,
               "metadata":{"k8sPodNamespace":"kube-system","k8sPodName":"coredns-1","interfacesCount":1}},
              {"networkName":"aws-cni","containerID":"c2","ifName":"eth0","ipv6":"2001:db8::1",
               "allocationTimestamp":1,"metadata":{}}]}"#,
        )
        .unwrap();
        let imported = import_vpc_cni(&path).unwrap().unwrap();
        assert_eq!(imported.len(), 1);
        assert_eq!(imported[0].owner.container_id, "c1");
        assert_eq!(imported[0].ipv4, "10.0.1.7".parse::<Ipv4Addr>().unwrap());
        assert_eq!(imported[0].pod_name, "coredns-1");
        assert_eq!(imported[0].allocated_at_ms, 1_700_000_000_123);
        // Migrated pods are eniflow's network's now: their DEL comes through eniflow's conflist.
        assert_eq!(imported[0].owner.network, crate::cni::conflist::NETWORK);
        // And back: the same allocation in VPC CNI's format, under VPC CNI's name.
        let back: serde_json::Value = serde_json::from_slice(&encode_vpc_cni(&imported)).unwrap();
        assert_eq!(back["version"], VPC_CNI_VERSION);
        let a = &back["allocations"][0];
        assert_eq!(a["networkName"], VPC_CNI_NETWORK);
        assert_eq!(a["containerID"], "c1");
        assert_eq!(a["ipv4"], "10.0.1.7");
        assert_eq!(a["allocationTimestamp"], 1_700_000_000_123_000_000u64);
        assert_eq!(a["metadata"]["k8sPodName"], "coredns-1");
        assert_eq!(a["metadata"]["interfacesCount"], 1);
        let _ = fs::remove_dir_all(&d);
    }
}
