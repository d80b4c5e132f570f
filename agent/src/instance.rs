//! What IMDSv2 says about the instance the agent runs on: its id, type and zone, and the primary
//! ENI's subnet and security groups (where new ENIs go without custom networking).

use std::net::Ipv4Addr;

use aws_config::imds;

use crate::addressing::{parse_cidr, parse_mac};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub region: String,
    pub primary_eni: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub security_groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("instance metadata {path}: {message}")]
pub struct ImdsError {
    path: String,
    message: String,
}

/// An IMDSv2 client; `endpoint` None means the SDK's default (169.254.169.254, or
/// AWS_EC2_METADATA_SERVICE_ENDPOINT).
pub fn client(endpoint: Option<&str>) -> Result<imds::Client, ImdsError> {
    let mut builder = imds::Client::builder();
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint(endpoint).map_err(|e| ImdsError {
            path: endpoint.to_owned(),
            message: format!("not a usable endpoint: {e}"),
        })?;
    }
    Ok(builder.build())
}

/// One IMDS value, trimmed; the error names the path.
async fn get(client: &imds::Client, path: String) -> Result<String, ImdsError> {
    client
        .get(&path)
        .await
        .map(|v| v.as_ref().trim().to_owned())
        .map_err(|e| ImdsError {
            path,
            message: e.to_string(),
        })
}

impl Instance {
    pub async fn read(client: &imds::Client) -> Result<Instance, ImdsError> {
        let get = |path: String| get(client, path);
        let mac = get("/latest/meta-data/mac".into()).await?;
        let eni = |key: &str| format!("/latest/meta-data/network/interfaces/macs/{mac}/{key}");
        Ok(Instance {
            id: get("/latest/meta-data/instance-id".into()).await?,
            instance_type: get("/latest/meta-data/instance-type".into()).await?,
            availability_zone: get("/latest/meta-data/placement/availability-zone".into()).await?,
            region: get("/latest/meta-data/placement/region".into()).await?,
            primary_eni: get(eni("interface-id")).await?,
            subnet_id: get(eni("subnet-id")).await?,
            vpc_id: get(eni("vpc-id")).await?,
            security_groups: get(eni("security-group-ids"))
                .await?
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// An ENI as IMDS describes it.
#[derive(Clone, Debug)]
pub struct ImdsEni {
    pub id: String,
    pub mac: [u8; 6],
    pub device_index: u32,
    pub primary: Ipv4Addr,
    pub subnet: (Ipv4Addr, u8),
    pub vpc_cidrs: Vec<(Ipv4Addr, u8)>,
}

/// Every ENI IMDS lists for this instance.
pub async fn read_enis(client: &imds::Client) -> Result<Vec<ImdsEni>, ImdsError> {
    let get = |path: String| get(client, path);
    let bad = |path: String, message: String| ImdsError { path, message };
    let base = "/latest/meta-data/network/interfaces/macs/";
    let mut out = Vec::new();
    for line in get(base.to_owned()).await?.lines() {
        let mac_text = line.trim().trim_end_matches('/');
        if mac_text.is_empty() {
            continue;
        }
        let key = |k: &str| format!("{base}{mac_text}/{k}");
        let mac = parse_mac(mac_text)
            .ok_or_else(|| bad(base.into(), format!("{mac_text:?} is not a MAC address")))?;
        let primary = get(key("local-ipv4s"))
            .await?
            .lines()
            .next()
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| bad(key("local-ipv4s"), "no primary address".into()))?;
        let subnet = get(key("subnet-ipv4-cidr-block")).await?;
        let subnet = parse_cidr(&subnet).ok_or_else(|| {
            bad(
                key("subnet-ipv4-cidr-block"),
                format!("{subnet:?} is not a CIDR"),
            )
        })?;
        let device = get(key("device-number")).await?;
        let device_index = device
            .parse()
            .map_err(|_| bad(key("device-number"), format!("{device:?} is not a number")))?;
        let vpc = get(key("vpc-ipv4-cidr-blocks")).await?;
        out.push(ImdsEni {
            id: get(key("interface-id")).await?,
            mac,
            device_index,
            primary,
            subnet,
            vpc_cidrs: vpc.lines().filter_map(parse_cidr).collect(),
        });
    }
    Ok(out)
}
