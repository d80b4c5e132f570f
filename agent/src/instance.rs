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

/// What IMDS answers for one ENI, as text: its `macs/` entry and five of its keys.
#[derive(Clone, Debug, Default)]
pub struct EniAnswers {
    pub mac: String,
    pub local_ipv4s: String,
    pub subnet_cidr: String,
    pub device_number: String,
    pub vpc_cidrs: String,
    pub interface_id: String,
}

const MACS: &str = "/latest/meta-data/network/interfaces/macs/";

/// IMDS's `macs/` listing: one MAC per line, each with a trailing slash.
pub fn listed_macs(listing: &str) -> impl Iterator<Item = &str> {
    listing
        .lines()
        .map(|line| line.trim().trim_end_matches('/'))
        .filter(|mac| !mac.is_empty())
}

impl EniAnswers {
    /// The ENI these answers describe; the error names the key that was wrong.
    pub fn parse(&self) -> Result<ImdsEni, ImdsError> {
        let key = |k: &str| format!("{MACS}{}/{k}", self.mac);
        let bad = |path: String, message: String| ImdsError { path, message };
        let mac = parse_mac(&self.mac)
            .ok_or_else(|| bad(MACS.into(), format!("{:?} is not a MAC address", self.mac)))?;
        let primary = self
            .local_ipv4s
            .lines()
            .next()
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| bad(key("local-ipv4s"), "no primary address".into()))?;
        let subnet = parse_cidr(&self.subnet_cidr).ok_or_else(|| {
            bad(
                key("subnet-ipv4-cidr-block"),
                format!("{:?} is not a CIDR", self.subnet_cidr),
            )
        })?;
        let device_index = self.device_number.parse().map_err(|_| {
            bad(
                key("device-number"),
                format!("{:?} is not a number", self.device_number),
            )
        })?;
        Ok(ImdsEni {
            id: self.interface_id.clone(),
            mac,
            device_index,
            primary,
            subnet,
            vpc_cidrs: self.vpc_cidrs.lines().filter_map(parse_cidr).collect(),
        })
    }
}

/// Every ENI IMDS lists for this instance.
pub async fn read_enis(client: &imds::Client) -> Result<Vec<ImdsEni>, ImdsError> {
    let get = |path: String| get(client, path);
    let mut out = Vec::new();
    for mac in listed_macs(&get(MACS.to_owned()).await?) {
        let key = |k: &str| format!("{MACS}{mac}/{k}");
        let answers = EniAnswers {
            mac: mac.to_owned(),
            local_ipv4s: get(key("local-ipv4s")).await?,
            subnet_cidr: get(key("subnet-ipv4-cidr-block")).await?,
            device_number: get(key("device-number")).await?,
            vpc_cidrs: get(key("vpc-ipv4-cidr-blocks")).await?,
            interface_id: get(key("interface-id")).await?,
        };
        out.push(answers.parse()?);
    }
    Ok(out)
}
