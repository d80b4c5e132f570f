//! The JSON the shim prints: a CNI result in the requested spec version's shape, or a CNI error.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::{error::CniError, plumbing::GATEWAY};

fn mac(bytes: &[u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What ADD made, as the result lists it.
pub struct Added<'a> {
    pub cni_version: &'a str,
    pub host_veth: &'a str,
    pub host_mac: [u8; 6],
    pub ifname: &'a str,
    pub pod_mac: [u8; 6],
    pub netns: &'a str,
    pub ipv4: Ipv4Addr,
}

/// The ADD result: the host veth and the pod's interface, its /32 with the link-local gateway,
/// the default route. Versions before 1.0.0 tag each address with `"version": "4"`.
pub fn added(a: &Added) -> Value {
    let mut ip = json!({
        "address": format!("{}/32", a.ipv4),
        "gateway": GATEWAY.to_string(),
        "interface": 1,
    });
    if a.cni_version.starts_with("0.") {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": a.cni_version,
        "interfaces": [
            { "name": a.host_veth, "mac": mac(&a.host_mac) },
            { "name": a.ifname, "mac": mac(&a.pod_mac), "sandbox": a.netns },
        ],
        "ips": [ip],
        "routes": [{ "dst": "0.0.0.0/0", "gw": GATEWAY.to_string() }],
        "dns": {},
    })
}

/// A CNI error object.
pub fn error(cni_version: &str, e: &CniError) -> Value {
    json!({ "cniVersion": cni_version, "code": e.code, "msg": e.msg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_follow_the_requested_version() {
        let a = |cni_version| Added {
            cni_version,
            host_veth: "eni0123456789a",
            host_mac: [2, 0, 0, 0, 0, 1],
            ifname: "eth0",
            pod_mac: [2, 0, 0, 0, 0, 2],
            netns: "/run/netns/p",
            ipv4: Ipv4Addr::new(10, 0, 1, 9),
        };
        let old = added(&a("0.4.0"));
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["interfaces"][1]["mac"], "02:00:00:00:00:02");
        let new = added(&a("1.1.0"));
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["ips"][0]["address"], "10.0.1.9/32");
        assert_eq!(new["cniVersion"], "1.1.0");
    }
}
