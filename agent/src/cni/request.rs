//! What a CNI request asks, checked: the network configuration (cniVersion, name, mtu), the
//! container, its namespace and interface, and the pod from CNI_ARGS. Every refusal carries the
//! CNI error code and a one-line message naming what was wrong.

use std::{collections::BTreeSet, path::PathBuf};

use eniflow_api::{cni_errors, v1::CniRequest, SUPPORTED_CNI_VERSIONS};
use serde_json::Value;

use super::error::CniError;

/// Interface names are at most 15 bytes (IFNAMSIZ − 1).
const IFNAME_MAX: usize = 15;
/// The default pod MTU: VPC CNI's AWS_VPC_ENI_MTU default, jumbo frames inside a VPC.
pub const DEFAULT_MTU: u32 = 9001;

#[derive(Clone, Debug)]
pub struct Request {
    pub cni_version: String,
    /// The network's name (the config's `name`): part of an allocation's key.
    pub network: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub mtu: u32,
    /// The whole configuration, for GC's `cni.dev/attachments`.
    pub config: Value,
}

/// Parses and checks a request; `needs_container` is false for STATUS and GC, which name none.
pub fn parse(request: &CniRequest, needs_container: bool) -> Result<Request, CniError> {
    let config: Value = serde_json::from_slice(&request.config).map_err(|e| {
        CniError::new(
            cni_errors::DECODE_FAILURE,
            format!("the network configuration is not JSON: {e}"),
        )
    })?;
    let field = |name: &str| config.get(name).and_then(Value::as_str);
    let cni_version = field("cniVersion").ok_or_else(|| {
        CniError::new(
            cni_errors::INVALID_CONFIG,
            "the configuration has no cniVersion",
        )
    })?;
    if !SUPPORTED_CNI_VERSIONS.contains(&cni_version) {
        return Err(CniError::new(
            cni_errors::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {cni_version:?} is not supported (eniflow speaks {})",
                SUPPORTED_CNI_VERSIONS.join(", ")
            ),
        ));
    }
    let network = field("name").filter(|n| !n.is_empty()).ok_or_else(|| {
        CniError::new(cni_errors::INVALID_CONFIG, "the configuration has no name")
    })?;
    let mtu = match config.get("mtu") {
        None => DEFAULT_MTU,
        Some(v) => v
            .as_u64()
            .filter(|m| (576..=9001).contains(m))
            .map(|m| m as u32)
            .ok_or_else(|| {
                CniError::new(
                    cni_errors::INVALID_CONFIG,
                    format!("mtu {v} is not a number from 576 to 9001"),
                )
            })?,
    };
    let env = |name: &str, value: &str| {
        if value.is_empty() && needs_container {
            Err(CniError::new(
                cni_errors::INVALID_ENV,
                format!("{name} is not set"),
            ))
        } else {
            Ok(value.to_owned())
        }
    };
    let container_id = env("CNI_CONTAINERID", &request.container_id)?;
    let ifname = env("CNI_IFNAME", &request.ifname)?;
    if ifname.len() > IFNAME_MAX || ifname.contains(['/', ' ']) {
        return Err(CniError::new(
            cni_errors::INVALID_ENV,
            format!("CNI_IFNAME {ifname:?} is not a valid interface name"),
        ));
    }
    // May be empty: a runtime's second DEL (after the sandbox's namespace is gone) names none.
    let netns = PathBuf::from(&request.netns);
    let mut pod_namespace = String::new();
    let mut pod_name = String::new();
    for pair in request.args.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::new(
                cni_errors::INVALID_ENV,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            ));
        };
        match key {
            "K8S_POD_NAMESPACE" => pod_namespace = value.to_owned(),
            "K8S_POD_NAME" => pod_name = value.to_owned(),
            _ => {}
        }
    }
    Ok(Request {
        cni_version: cni_version.to_owned(),
        network: network.to_owned(),
        container_id,
        netns,
        ifname,
        pod_namespace,
        pod_name,
        mtu,
        config,
    })
}

/// GC's valid attachments as (container id, ifname): the spec's `cni.dev/valid-attachments`
/// (CNI 1.1) and the `cni.dev/attachments` some runtimes send, together. None when the request
/// has neither list: then no pod may be taken for gone.
pub fn valid_attachments(config: &Value) -> Option<BTreeSet<(String, String)>> {
    let lists: Vec<&Vec<Value>> = ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .iter()
        .filter_map(|key| config.get(*key)?.as_array())
        .collect();
    if lists.is_empty() {
        return None;
    }
    Some(
        lists
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a.get("containerID")?.as_str()?.to_owned(),
                    a.get("ifname")?.as_str()?.to_owned(),
                ))
            })
            .collect(),
    )
}

/// The host end's name, as VPC CNI names it: `prefix` + the first 11 hex digits of the SHA-1 of
/// "namespace.pod" (of the container id when the runtime names no pod). Pods moved over from
/// aws-node keep their veth names, so their allocations are recognised.
pub fn host_veth_name(
    prefix: &str,
    pod_namespace: &str,
    pod_name: &str,
    container_id: &str,
) -> String {
    use sha1::{Digest, Sha1};
    let key = if pod_name.is_empty() {
        container_id.to_owned()
    } else {
        format!("{pod_namespace}.{pod_name}")
    };
    let digest = Sha1::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(config: &str, args: &str) -> CniRequest {
        CniRequest {
            protocol: eniflow_api::PROTOCOL,
            container_id: "c1".into(),
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
            args: args.into(),
            config: config.as_bytes().to_vec(),
        }
    }

    #[test]
    fn bad_requests_get_the_right_code() {
        for (config, args, code, named) in [
            ("{", "", cni_errors::DECODE_FAILURE, "not JSON"),
            (
                r#"{"name":"n"}"#,
                "",
                cni_errors::INVALID_CONFIG,
                "cniVersion",
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"n"}"#,
                "",
                cni_errors::INCOMPATIBLE_VERSION,
                "0.2.0",
            ),
            (
                r#"{"cniVersion":"1.0.0"}"#,
                "",
                cni_errors::INVALID_CONFIG,
                "name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mtu":70000}"#,
                "",
                cni_errors::INVALID_CONFIG,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                "K8S_POD_NAME",
                cni_errors::INVALID_ENV,
                "CNI_ARGS",
            ),
        ] {
            let err = parse(&request(config, args), true).unwrap_err();
            assert_eq!(err.code, code, "{config} {args}: {err:?}");
            assert!(err.msg.contains(named), "{err:?}");
        }
        let mut no_ifname = request(r#"{"cniVersion":"1.0.0","name":"n"}"#, "");
        no_ifname.ifname.clear();
        assert!(parse(&no_ifname, true)
            .unwrap_err()
            .msg
            .contains("CNI_IFNAME"));
        assert!(
            parse(&no_ifname, false).is_ok(),
            "STATUS and GC name no container"
        );
    }

    #[test]
    fn pods_and_host_veths() {
        let r = parse(
            &request(
                r#"{"cniVersion":"0.4.0","name":"eniflow"}"#,
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
            true,
        )
        .unwrap();
        assert_eq!(
            (r.pod_namespace.as_str(), r.pod_name.as_str(), r.mtu),
            ("default", "web-0", 9001)
        );
        let a = host_veth_name("eni", "default", "web-0", "c1");
        assert_eq!(a.len(), 14);
        // `printf default.web-0 | sha1sum` = 0d7763386da2...: the name aws-node gave the pod.
        assert_eq!(a, "eni0d7763386da");
        assert_eq!(
            a,
            host_veth_name("eni", "default", "web-0", "c2"),
            "named by pod, not container"
        );
        assert_ne!(a, host_veth_name("eni", "default", "web-1", "c1"));
        assert_ne!(
            host_veth_name("eni", "", "", "c1"),
            host_veth_name("eni", "", "", "c2")
        );
    }
}
