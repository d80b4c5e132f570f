//! What IMDSv2 says about the instance the agent runs on: its id, type and zone, and the primary
//! ENI's subnet and security groups (where new ENIs go without custom networking).

use aws_config::imds;

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

impl Instance {
    pub async fn read(client: &imds::Client) -> Result<Instance, ImdsError> {
        let get = |path: String| async move {
            client
                .get(&path)
                .await
                .map(|v| v.as_ref().trim().to_owned())
                .map_err(|e| ImdsError {
                    path,
                    message: e.to_string(),
                })
        };
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
