//! Custom networking: pods take addresses from ENIs in the subnet (and with the security groups)
//! of an ENIConfig, chosen for the node as VPC CNI chooses it: the node label
//! `vpc.amazonaws.com/externalEniConfig`, else the annotation ENI_CONFIG_ANNOTATION_DEF, else the
//! label ENI_CONFIG_LABEL_DEF, else `default`. The primary ENI carries no pods then.
//!
//! Off a cluster, ENIConfigs come from a file: `kubectl get eniconfigs -o json` output (a List),
//! or one ENIConfig object.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use crate::kube::{Cluster, KubeError};

/// An ENIConfig cannot be read or chosen: the file, object or flag is named.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EniConfigError(pub String);

impl From<KubeError> for EniConfigError {
    fn from(e: KubeError) -> Self {
        EniConfigError(e.to_string())
    }
}

/// Where the ENIConfigs and the node's labels come from off a cluster.
#[derive(clap::Args, Clone, Debug)]
pub struct EniConfigArgs {
    /// ENIConfigs for custom networking off a cluster (`kubectl get eniconfigs -o json`).
    #[arg(long, env = "ENIFLOW_ENI_CONFIGS")]
    pub eni_configs: Option<std::path::PathBuf>,
    /// The node's labels, `k=v,...` (kubelet's --node-labels); they choose the ENIConfig.
    #[arg(long, env = "ENIFLOW_NODE_LABELS", default_value = "")]
    pub node_labels: String,
    /// The node's annotations, `k=v,...`; they choose the ENIConfig.
    #[arg(long, env = "ENIFLOW_NODE_ANNOTATIONS", default_value = "")]
    pub node_annotations: String,
}

/// The label that names an ENIConfig directly (VPC CNI).
pub const EXTERNAL_LABEL: &str = "vpc.amazonaws.com/externalEniConfig";
/// ENI_CONFIG_LABEL_DEF and ENI_CONFIG_ANNOTATION_DEF's default.
pub const DEFAULT_KEY: &str = "k8s.amazonaws.com/eniConfig";
/// The ENIConfig used when nothing names one.
pub const DEFAULT_NAME: &str = "default";
/// The label kubelet puts on every node with its zone: a common ENI_CONFIG_LABEL_DEF.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniConfig {
    pub name: String,
    pub subnet: String,
    /// Empty: the primary ENI's security groups.
    pub security_groups: Vec<String>,
}

#[derive(Deserialize)]
struct Object {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    items: Vec<Object>,
    #[serde(default)]
    metadata: Metadata,
    spec: Option<Spec>,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    subnet: String,
    #[serde(default)]
    security_groups: Vec<String>,
}

/// Parses ENIConfigs (a List or one object).
pub fn parse(text: &[u8]) -> Result<Vec<EniConfig>, EniConfigError> {
    let top: Object = serde_json::from_slice(text)
        .map_err(|e| EniConfigError(format!("not ENIConfig JSON: {e}")))?;
    let objects = if top.kind.ends_with("List") || !top.items.is_empty() {
        top.items
    } else {
        vec![top]
    };
    objects
        .into_iter()
        .map(|o| {
            let name = o.metadata.name;
            let spec = o
                .spec
                .ok_or_else(|| EniConfigError(format!("ENIConfig {name:?} has no spec")))?;
            if name.is_empty() || spec.subnet.is_empty() {
                return Err(EniConfigError(format!(
                    "ENIConfig {name:?}: metadata.name and spec.subnet are required"
                )));
            }
            Ok(EniConfig {
                name,
                subnet: spec.subnet,
                security_groups: spec.security_groups,
            })
        })
        .collect()
}

/// Reads ENIConfigs from `path`.
pub fn read(path: &Path) -> Result<Vec<EniConfig>, EniConfigError> {
    let named = |e: &dyn std::fmt::Display| EniConfigError(format!("{}: {e}", path.display()));
    let text = std::fs::read(path).map_err(|e| named(&e))?;
    parse(&text).map_err(|e| named(&e))
}

/// The ENIConfig name for a node with these labels and annotations.
pub fn chosen_name(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    label_key: &str,
    annotation_key: &str,
) -> String {
    labels
        .get(EXTERNAL_LABEL)
        .or_else(|| annotations.get(annotation_key))
        .or_else(|| labels.get(label_key))
        .filter(|name| !name.is_empty())
        .cloned()
        .unwrap_or_else(|| DEFAULT_NAME.to_owned())
}

/// The ENIConfig name for the node, from its labels (the zone label added from `zone` when
/// absent, as kubelet sets it) and annotations.
pub fn chosen_for_node(
    knobs: &super::Knobs,
    mut labels: BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    zone: &str,
) -> String {
    labels
        .entry(ZONE_LABEL.into())
        .or_insert_with(|| zone.to_owned());
    chosen_name(
        &labels,
        annotations,
        &knobs.eni_config_label,
        &knobs.eni_config_annotation,
    )
}

/// The ENIConfig `name` from `file`.
pub fn from_file(file: &Path, name: &str) -> Result<EniConfig, EniConfigError> {
    read(file)?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| {
            EniConfigError(format!(
                "ENIConfig {name:?}, chosen for this node, is not in {}",
                file.display()
            ))
        })
}

/// The cluster's ENIConfig `name` (the CRD VPC CNI defines; deploy/ carries it).
pub async fn from_api(kube: &crate::kube::Kube, name: &str) -> Result<EniConfig, EniConfigError> {
    let path = format!("{COLLECTION}/{name}");
    let object = kube.get(&path).await?.ok_or_else(|| {
        EniConfigError(format!(
            "ENIConfig {name:?}, chosen for this node, does not exist in the cluster"
        ))
    })?;
    parse(object.to_string().as_bytes())?
        .pop()
        .ok_or_else(|| EniConfigError(format!("ENIConfig {name:?}: the API answered no object")))
}

/// The ENIConfigs' collection in the API.
pub const COLLECTION: &str = "/apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs";

/// Follows the node's choice of ENIConfig in a cluster: its Node (labels, annotations) and the
/// ENIConfigs are watched, and the receiver gets each newly chosen ENIConfig, starting from
/// `current` (the one read at start). A choice that cannot be followed (the ENIConfig named does
/// not exist, or does not parse) is logged and skipped: new ENIs stay with the last good one.
pub fn follow(
    knobs: &super::Knobs,
    cluster: &Cluster,
    zone: &str,
    current: EniConfig,
) -> tokio::sync::watch::Receiver<EniConfig> {
    let node_path = format!("/api/v1/nodes?fieldSelector=metadata.name={}", cluster.node);
    let mut nodes = crate::watched::follow(
        cluster.kube.clone(),
        node_path,
        format!("watch of node {}", cluster.node),
    );
    let mut configs = crate::watched::follow(
        cluster.kube.clone(),
        COLLECTION.into(),
        "watch of the ENIConfigs".into(),
    );
    let (knobs, zone, node) = (knobs.clone(), zone.to_owned(), cluster.node.clone());
    let (publish, receiver) = tokio::sync::watch::channel(current);
    tokio::spawn(async move {
        let mut refused: Option<String> = None;
        loop {
            tokio::select! {
                changed = nodes.changed() => if changed.is_err() { return },
                changed = configs.changed() => if changed.is_err() { return },
                _ = publish.closed() => return,
            }
            let (Some(nodes), Some(configs)) = (nodes.borrow().clone(), configs.borrow().clone())
            else {
                continue; // not listed yet
            };
            let Some(object) = nodes.get(&node) else {
                continue;
            };
            let labels = crate::kube::metadata_map(object, "labels");
            let annotations = crate::kube::metadata_map(object, "annotations");
            let name = chosen_for_node(&knobs, labels, &annotations, &zone);
            let chosen = match configs.get(&name) {
                Some(object) => parse(object.to_string().as_bytes()).and_then(|mut c| {
                    c.pop()
                        .ok_or_else(|| EniConfigError(format!("ENIConfig {name:?}: no object")))
                }),
                None => Err(EniConfigError(format!(
                    "ENIConfig {name:?}, chosen for this node, does not exist in the cluster"
                ))),
            };
            match chosen {
                Ok(config) => {
                    refused = None;
                    publish.send_if_modified(|current| {
                        let changed = *current != config;
                        *current = config;
                        changed
                    });
                }
                Err(e) => {
                    let why = e.to_string();
                    if refused.as_ref() != Some(&why) {
                        let last = publish.borrow().name.clone();
                        tracing::error!(
                            "custom networking: {why}; new ENIs stay with ENIConfig {last}"
                        );
                        refused = Some(why);
                    }
                }
            }
        }
    });
    receiver
}

/// Parses `k=v,k2=v2` (kubelet's --node-labels form).
pub fn parse_pairs(text: &str) -> Result<BTreeMap<String, String>, EniConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| EniConfigError(format!("{pair:?} is not key=value")))
        })
        .collect()
}

/// Custom networking's ENIConfig for this node, chosen by the node's labels and annotations
/// (from its Node in a cluster, else the flags) and read from --eni-configs or the cluster.
pub async fn for_node(
    knobs: &super::Knobs,
    args: &EniConfigArgs,
    cluster: Option<&Cluster>,
    zone: &str,
) -> Result<EniConfig, EniConfigError> {
    let flag = |name: &str, e: EniConfigError| EniConfigError(format!("--{name}: {e}"));
    let (labels, annotations) = match cluster {
        Some(cluster) => cluster.node_metadata().await?,
        None => (
            parse_pairs(&args.node_labels).map_err(|e| flag("node-labels", e))?,
            parse_pairs(&args.node_annotations).map_err(|e| flag("node-annotations", e))?,
        ),
    };
    let name = chosen_for_node(knobs, labels, &annotations, zone);
    let config = match (&args.eni_configs, cluster) {
        (Some(file), _) => from_file(file, &name)?,
        (None, Some(cluster)) => from_api(&cluster.kube, &name).await?,
        (None, None) => return Err(EniConfigError("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true needs the ENIConfigs: the Kubernetes API in a cluster, else --eni-configs (ENIFLOW_ENI_CONFIGS)".into())),
    };
    tracing::info!(
        "custom networking: ENIConfig {} (subnet {})",
        config.name,
        config.subnet
    );
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_lists_and_single_objects_parse() {
        let list = br#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"crd.k8s.amazonaws.com/v1alpha1","kind":"ENIConfig",
             "metadata":{"name":"us-west-2a"},"spec":{"subnet":"subnet-a","securityGroups":["sg-1"]}},
            {"apiVersion":"crd.k8s.amazonaws.com/v1alpha1","kind":"ENIConfig",
             "metadata":{"name":"default"},"spec":{"subnet":"subnet-d"}}]}"#;
        let configs = parse(list).unwrap();
        assert_eq!(configs.len(), 2);
        assert_eq!(configs[0].security_groups, ["sg-1"]);
        assert!(configs[1].security_groups.is_empty());
        let one = br#"{"kind":"ENIConfig","metadata":{"name":"x"},"spec":{"subnet":"subnet-x"}}"#;
        assert_eq!(parse(one).unwrap()[0].subnet, "subnet-x");
        let bad = br#"{"kind":"ENIConfig","metadata":{"name":"x"},"spec":{}}"#;
        assert!(parse(bad).unwrap_err().0.contains("spec.subnet"));
    }

    #[test]
    fn the_name_is_chosen_as_vpc_cni_chooses_it() {
        let pairs = |t: &str| parse_pairs(t).unwrap();
        let none = BTreeMap::new();
        let choose =
            |labels: &BTreeMap<String, String>,
             annotations: &BTreeMap<String, String>,
             key: &str| { chosen_name(labels, annotations, key, DEFAULT_KEY) };
        assert_eq!(choose(&none, &none, DEFAULT_KEY), "default");
        let zone = pairs("topology.kubernetes.io/zone=us-west-2a");
        assert_eq!(choose(&zone, &none, ZONE_LABEL), "us-west-2a");
        let annotated = pairs("k8s.amazonaws.com/eniConfig=from-annotation");
        assert_eq!(choose(&zone, &annotated, ZONE_LABEL), "from-annotation");
        let external =
            pairs("vpc.amazonaws.com/externalEniConfig=ext,topology.kubernetes.io/zone=z");
        assert_eq!(choose(&external, &annotated, ZONE_LABEL), "ext");
        assert!(parse_pairs("a=b,c").unwrap_err().0.contains("\"c\""));
    }
}
