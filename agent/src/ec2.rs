//! The EC2 calls the agent makes, each counted by action and outcome, with errors reduced to
//! the codes the pool acts on. The SDK retries throttling and 5xx (standard mode, tuned below);
//! whatever is left after that is the caller's to handle.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_sdk_ec2::{
    config::{http::HttpResponse, ConfigBag, Intercept, RuntimeComponents},
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    types::{
        Filter, InstanceTypeHypervisor, NetworkInterface, NetworkInterfaceAttachmentChanges,
        NetworkInterfaceCreationType, NetworkInterfaceType, ResourceType, Tag, TagSpecification,
    },
    Client,
};
use aws_smithy_runtime_api::{
    box_error::BoxError,
    client::{interceptors::context::FinalizerInterceptorContextRef, orchestrator::Metadata},
};
use tracing::Instrument;

use crate::{
    ec2_budget::Budget,
    limits::{Hypervisor, InstanceLimits},
};

/// EC2 error codes the agent treats specially (names as EC2 spells them).
pub mod codes {
    pub const ATTACHMENT_LIMIT_EXCEEDED: &str = "AttachmentLimitExceeded";
    pub const PRIVATE_IP_ADDRESS_LIMIT_EXCEEDED: &str = "PrivateIpAddressLimitExceeded";
    pub const INSUFFICIENT_CIDR_BLOCKS: &str = "InsufficientCidrBlocks";
    pub const INSUFFICIENT_FREE_ADDRESSES_IN_SUBNET: &str = "InsufficientFreeAddressesInSubnet";
    pub const UNAUTHORIZED_OPERATION: &str = "UnauthorizedOperation";
    pub const AUTH_FAILURE: &str = "AuthFailure";
    pub const NOT_FOUND: &str = "InvalidNetworkInterfaceID.NotFound";
    pub const IN_USE: &str = "InvalidNetworkInterface.InUse";
}

/// The outcome of a call EC2 never answered (no error code: a timeout, a refused connection).
pub const NO_ANSWER: &str = "no-answer";

/// Tags on every ENI eniflow creates; the leak sweep deletes only ENIs carrying them.
pub mod tags {
    pub const INSTANCE_ID: &str = "eniflow.io/instance-id";
    pub const CREATED_AT: &str = "eniflow.io/created-at";
    pub const CLUSTER_NAME: &str = "eniflow.io/cluster-name";
}

/// The description of every ENI eniflow creates starts with this.
pub const DESCRIPTION_PREFIX: &str = "eniflow: ";

#[derive(Debug, thiserror::Error)]
#[error("{action}: {message}")]
pub struct Ec2Error {
    pub action: &'static str,
    /// EC2's error code; None when no answer came (connection, timeout).
    pub code: Option<String>,
    pub message: String,
}

impl Ec2Error {
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// The agent's IAM role lacks a permission: retrying will not help.
    pub fn is_authorization(&self) -> bool {
        self.is(codes::UNAUTHORIZED_OPERATION) || self.is(codes::AUTH_FAILURE)
    }
}

/// Where EC2 is and how hard to retry.
#[derive(Clone, Debug)]
pub struct Settings {
    /// AWS_EC2_ENDPOINT (VPC CNI's name); None: the SDK's own resolution.
    pub endpoint: Option<String>,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// One attempt that has no answer after this long is abandoned (and retried): without it a
    /// connection EC2 never answers would stall the refill loop for good.
    pub attempt_timeout: Duration,
    /// A call, its retries included, gives up after this long.
    pub call_timeout: Duration,
    /// The node's share of the account's request budget, per action class.
    pub budget: crate::ec2_budget::Rates,
}

impl Default for Settings {
    /// Five attempts with backoff from 500 ms to 20 s: a throttled refill slows down instead of
    /// failing fast, while ADDs are served from the pool meanwhile. EC2 answers in well under a
    /// second; 10 s per attempt only cuts off what would never answer.
    fn default() -> Self {
        Settings {
            endpoint: None,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(120),
            budget: crate::ec2_budget::Rates::default(),
        }
    }
}

/// An ENI as the pool needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    pub attachment_id: Option<String>,
    pub device_index: u32,
    pub network_card: u32,
    pub subnet_id: String,
    /// Primary address first.
    pub addresses: Vec<Ipv4Addr>,
    /// /28 prefixes, as their first address.
    pub prefixes: Vec<Ipv4Addr>,
    /// When eniflow created it (its tag); None for ENIs eniflow did not create.
    pub created_at: Option<SystemTime>,
    pub status: String,
    /// A trunk ENI (security groups for pods): it carries branch ENIs, not pod addresses.
    pub trunk: bool,
    pub security_groups: Vec<String>,
}

impl Eni {
    pub fn ours(&self) -> bool {
        self.created_at.is_some()
    }
}

/// A subnet as subnet discovery needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub cidr: String,
    pub available: u32,
    pub tags: BTreeMap<String, String>,
}

/// What a new ENI gets at creation.
pub struct NewEni<'a> {
    pub subnet_id: &'a str,
    pub security_groups: &'a [String],
    pub instance_id: &'a str,
    pub cluster_name: Option<&'a str>,
    pub secondary_addresses: u32,
    pub prefixes: u32,
    /// A trunk ENI (security groups for pods) rather than a regular one.
    pub trunk: bool,
}

pub struct Ec2 {
    client: Client,
    calls: Mutex<BTreeMap<(&'static str, String), u64>>,
    budget: Arc<Budget>,
}

/// Counts each attempt the SDK makes, its retries included, by action and HTTP status (a call
/// that succeeded on its third try was throttled twice, which its outcome alone hides), and
/// tells the budget which attempts EC2 throttled (HTTP 503: RequestLimitExceeded).
struct CountAttempts(Arc<Budget>);

impl std::fmt::Debug for CountAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CountAttempts")
    }
}

impl Intercept for CountAttempts {
    fn name(&self) -> &'static str {
        "eniflow-count-attempts"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let action = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
        let status = context.response().map(|r| r.status().as_u16());
        crate::metrics::get().ec2_attempt(action, status);
        match status {
            Some(503) => self.0.throttled(action),
            Some(_) => self.0.answered(action),
            None => {}
        }
        Ok(())
    }
}

impl Ec2 {
    /// A client for `region` with credentials from the default chain (environment, web
    /// identity, the instance role) and eniflow's retry settings.
    pub async fn connect(settings: &Settings, region: &str) -> Ec2 {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .load()
            .await;
        Ec2::configured(aws_sdk_ec2::config::Builder::from(&shared), settings)
    }

    /// A client from `base` (region, credentials) with eniflow's retries, timeouts and attempt
    /// counting.
    pub fn configured(base: aws_sdk_ec2::config::Builder, settings: &Settings) -> Ec2 {
        let budget = Arc::new(Budget::new(settings.budget));
        let mut config = base
            .retry_config(
                aws_sdk_ec2::config::retry::RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(settings.initial_backoff)
                    .with_max_backoff(settings.max_backoff),
            )
            .timeout_config(
                aws_sdk_ec2::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .operation_timeout(settings.call_timeout)
                    .build(),
            )
            .interceptor(CountAttempts(budget.clone()));
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ec2 {
            client: Client::from_conf(config.build()),
            calls: Mutex::new(BTreeMap::new()),
            budget,
        }
    }

    /// `client` as it is, with no budget of the node's own.
    pub fn from_client(client: Client) -> Ec2 {
        Ec2 {
            client,
            calls: Mutex::new(BTreeMap::new()),
            budget: Arc::new(Budget::new("unlimited".parse().expect("a valid budget"))),
        }
    }

    /// Whether a throttled answer holds back the calls of `action`'s class now.
    pub fn backing_off(&self, action: &str) -> bool {
        self.budget.backing_off(action)
    }

    /// Calls so far: (action, outcome) → count, outcome "ok" or the error code.
    pub fn calls(&self) -> BTreeMap<(&'static str, String), u64> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends one request: counted by outcome ("ok" or the error code) and timed, here and in
    /// the agent's metrics.
    async fn call<T, E>(
        &self,
        action: &'static str,
        request: impl std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, Ec2Error>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.budget.acquire(action).await;
        let started = std::time::Instant::now();
        let span = tracing::debug_span!("ec2", action, outcome = tracing::field::Empty);
        let result = request.instrument(span.clone()).await;
        let (code, status) = match &result {
            Ok(_) => (None, Some(200)),
            Err(e) => (
                Some(e.code().unwrap_or(NO_ANSWER)),
                e.raw_response().map(|r| r.status().as_u16()),
            ),
        };
        span.record("outcome", code.unwrap_or("ok"));
        crate::metrics::get().ec2_call(action, code, status, started.elapsed());
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((action, code.unwrap_or("ok").to_owned()))
            .or_default() += 1;
        result.map_err(|e| Ec2Error {
            action,
            code: e.code().map(str::to_owned),
            message: match e.code() {
                Some(code) => format!("{code}: {}", e.message().unwrap_or("")),
                None => DisplayErrorContext(&e).to_string(),
            },
        })
    }

    /// The instance type's network limits from DescribeInstanceTypes.
    pub async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits, Ec2Error> {
        let out = self
            .call(
                "DescribeInstanceTypes",
                self.client
                    .describe_instance_types()
                    .instance_types(instance_type.into())
                    .send(),
            )
            .await?;
        let bad = |what: &str| Ec2Error {
            action: "DescribeInstanceTypes",
            code: None,
            message: format!("{instance_type}: the answer has no {what}"),
        };
        let info = out.instance_types().first().ok_or_else(|| bad("entry"))?;
        let net = info.network_info().ok_or_else(|| bad("NetworkInfo"))?;
        let number = |v: Option<i32>, what: &str| {
            v.and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(what))
        };
        let default_card = net.default_network_card_index().unwrap_or(0);
        let default_card_enis = net
            .network_cards()
            .iter()
            .find(|c| c.network_card_index().unwrap_or(0) == default_card)
            .and_then(|c| c.maximum_network_interfaces())
            .or(net.maximum_network_interfaces());
        Ok(InstanceLimits {
            vcpus: number(
                info.v_cpu_info().and_then(|v| v.default_v_cpus()),
                "DefaultVCpus",
            )?,
            hypervisor: match info.hypervisor() {
                Some(InstanceTypeHypervisor::Xen) => Hypervisor::Xen,
                Some(_) => Hypervisor::Nitro,
                None => Hypervisor::None,
            },
            network_cards: (net.network_cards().len() as u32).max(1),
            max_enis: number(net.maximum_network_interfaces(), "MaximumNetworkInterfaces")?,
            default_card_enis: number(default_card_enis, "the default card's ENI limit")?,
            ipv4_per_eni: number(
                net.ipv4_addresses_per_interface(),
                "Ipv4AddressesPerInterface",
            )?,
        })
    }

    /// The VPC's subnets in one availability zone.
    pub async fn subnets(&self, vpc_id: &str, zone: &str) -> Result<Vec<Subnet>, Ec2Error> {
        let out = self
            .call(
                "DescribeSubnets",
                self.client
                    .describe_subnets()
                    .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
                    .filters(
                        Filter::builder()
                            .name("availability-zone")
                            .values(zone)
                            .build(),
                    )
                    .send(),
            )
            .await?;
        Ok(out
            .subnets()
            .iter()
            .map(|s| Subnet {
                id: s.subnet_id().unwrap_or_default().to_owned(),
                cidr: s.cidr_block().unwrap_or_default().to_owned(),
                available: s.available_ip_address_count().unwrap_or(0).max(0) as u32,
                tags: s
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
                    .collect(),
            })
            .collect())
    }

    /// The ENIs attached to `instance_id`, by device index.
    pub async fn attached_enis(&self, instance_id: &str) -> Result<Vec<Eni>, Ec2Error> {
        let filter = Filter::builder()
            .name("attachment.instance-id")
            .values(instance_id)
            .build();
        self.describe(vec![filter], Vec::new()).await
    }

    /// Available (unattached) ENIs eniflow created, from any node of the cluster: the leak
    /// sweep's candidates.
    pub async fn detached_enis_of_ours(
        &self,
        cluster_name: Option<&str>,
    ) -> Result<Vec<Eni>, Ec2Error> {
        let mut filters = vec![
            Filter::builder().name("status").values("available").build(),
            Filter::builder()
                .name("tag-key")
                .values(tags::CREATED_AT)
                .build(),
        ];
        if let Some(cluster) = cluster_name {
            filters.push(
                Filter::builder()
                    .name(format!("tag:{}", tags::CLUSTER_NAME))
                    .values(cluster)
                    .build(),
            );
        }
        self.describe(filters, Vec::new()).await
    }

    pub async fn eni(&self, id: &str) -> Result<Option<Eni>, Ec2Error> {
        match self.describe(Vec::new(), vec![id.to_owned()]).await {
            Ok(mut enis) => Ok(enis.pop()),
            Err(e) if e.is(codes::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn describe(&self, filters: Vec<Filter>, ids: Vec<String>) -> Result<Vec<Eni>, Ec2Error> {
        let mut enis = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .call(
                    "DescribeNetworkInterfaces",
                    self.client
                        .describe_network_interfaces()
                        .set_filters((!filters.is_empty()).then(|| filters.clone()))
                        .set_network_interface_ids((!ids.is_empty()).then(|| ids.clone()))
                        .set_max_results(ids.is_empty().then_some(1000))
                        .set_next_token(token)
                        .send(),
                )
                .await?;
            enis.extend(out.network_interfaces().iter().map(eni_from_api));
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        enis.sort_by_key(|e| (e.network_card, e.device_index));
        Ok(enis)
    }

    /// Creates an ENI with its first addresses or prefixes in the same call, tagged as eniflow's.
    pub async fn create_eni(&self, new: &NewEni<'_>) -> Result<Eni, Ec2Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut tag_list = vec![
            tag(tags::INSTANCE_ID, new.instance_id),
            tag(tags::CREATED_AT, &now.to_string()),
        ];
        if let Some(cluster) = new.cluster_name {
            tag_list.push(tag(tags::CLUSTER_NAME, cluster));
        }
        let out = self
            .call(
                "CreateNetworkInterface",
                self.client
                    .create_network_interface()
                    .subnet_id(new.subnet_id)
                    .set_groups(Some(new.security_groups.to_vec()))
                    .description(format!(
                        "{DESCRIPTION_PREFIX}{} for {}",
                        if new.trunk { "trunk" } else { "pod addresses" },
                        new.instance_id
                    ))
                    .set_secondary_private_ip_address_count(
                        (new.secondary_addresses > 0).then_some(new.secondary_addresses as i32),
                    )
                    .set_ipv4_prefix_count((new.prefixes > 0).then_some(new.prefixes as i32))
                    .set_interface_type(new.trunk.then_some(NetworkInterfaceCreationType::Trunk))
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::NetworkInterface)
                            .set_tags(Some(tag_list))
                            .build(),
                    )
                    .send(),
            )
            .await?;
        out.network_interface()
            .map(eni_from_api)
            .ok_or_else(|| Ec2Error {
                action: "CreateNetworkInterface",
                code: None,
                message: "the answer has no network interface".into(),
            })
    }

    /// Attaches `eni` and sets DeleteOnTermination; returns the attachment id.
    pub async fn attach(
        &self,
        eni: &str,
        instance_id: &str,
        device_index: u32,
        network_card: u32,
    ) -> Result<String, Ec2Error> {
        let out = self
            .call(
                "AttachNetworkInterface",
                self.client
                    .attach_network_interface()
                    .network_interface_id(eni)
                    .instance_id(instance_id)
                    .device_index(device_index as i32)
                    .network_card_index(network_card as i32)
                    .send(),
            )
            .await?;
        let attachment = out.attachment_id().unwrap_or_default().to_owned();
        self.call(
            "ModifyNetworkInterfaceAttribute",
            self.client
                .modify_network_interface_attribute()
                .network_interface_id(eni)
                .attachment(
                    NetworkInterfaceAttachmentChanges::builder()
                        .attachment_id(&attachment)
                        .delete_on_termination(true)
                        .build(),
                )
                .send(),
        )
        .await?;
        Ok(attachment)
    }

    /// Assigns `count` secondary addresses, or `count` /28 prefixes; returns what was assigned.
    pub async fn assign(
        &self,
        eni: &str,
        count: u32,
        prefixes: bool,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        let request = self
            .client
            .assign_private_ip_addresses()
            .network_interface_id(eni);
        let request = if prefixes {
            request.ipv4_prefix_count(count as i32)
        } else {
            request.secondary_private_ip_address_count(count as i32)
        };
        let out = self
            .call("AssignPrivateIpAddresses", request.send())
            .await?;
        Ok(if prefixes {
            out.assigned_ipv4_prefixes()
                .iter()
                .filter_map(|p| p.ipv4_prefix().and_then(prefix_base))
                .collect()
        } else {
            out.assigned_private_ip_addresses()
                .iter()
                .filter_map(|a| a.private_ip_address()?.parse().ok())
                .collect()
        })
    }

    /// Returns secondary addresses, or /28 prefixes (given by their first address), to the subnet.
    pub async fn unassign(
        &self,
        eni: &str,
        blocks: &[Ipv4Addr],
        prefixes: bool,
    ) -> Result<(), Ec2Error> {
        let request = self
            .client
            .unassign_private_ip_addresses()
            .network_interface_id(eni);
        let request = if prefixes {
            request.set_ipv4_prefixes(Some(blocks.iter().map(|p| format!("{p}/28")).collect()))
        } else {
            request.set_private_ip_addresses(Some(blocks.iter().map(|a| a.to_string()).collect()))
        };
        self.call("UnassignPrivateIpAddresses", request.send())
            .await?;
        Ok(())
    }

    pub async fn detach(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        self.call(
            "DetachNetworkInterface",
            self.client
                .detach_network_interface()
                .attachment_id(attachment_id)
                .send(),
        )
        .await?;
        Ok(())
    }

    pub async fn delete(&self, eni: &str) -> Result<(), Ec2Error> {
        self.call(
            "DeleteNetworkInterface",
            self.client
                .delete_network_interface()
                .network_interface_id(eni)
                .send(),
        )
        .await?;
        Ok(())
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// "10.0.1.16/28" → 10.0.1.16.
fn prefix_base(text: &str) -> Option<Ipv4Addr> {
    text.split_once('/')
        .filter(|(_, len)| *len == "28")
        .and_then(|(base, _)| base.parse().ok())
}

fn eni_from_api(n: &NetworkInterface) -> Eni {
    let attachment = n.attachment();
    let mut addresses: Vec<(bool, Ipv4Addr)> = n
        .private_ip_addresses()
        .iter()
        .filter_map(|a| {
            let ip = a.private_ip_address()?.parse().ok()?;
            Some((!a.primary().unwrap_or(false), ip))
        })
        .collect();
    addresses.sort_by_key(|(secondary, _)| *secondary);
    let created_at = n
        .tag_set()
        .iter()
        .find(|t| t.key() == Some(tags::CREATED_AT))
        .and_then(|t| t.value()?.parse::<u64>().ok())
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
    Eni {
        id: n.network_interface_id().unwrap_or_default().to_owned(),
        attachment_id: attachment
            .and_then(|a| a.attachment_id())
            .map(str::to_owned),
        device_index: attachment
            .and_then(|a| a.device_index())
            .unwrap_or(0)
            .max(0) as u32,
        network_card: attachment
            .and_then(|a| a.network_card_index())
            .unwrap_or(0)
            .max(0) as u32,
        subnet_id: n.subnet_id().unwrap_or_default().to_owned(),
        addresses: addresses.into_iter().map(|(_, ip)| ip).collect(),
        prefixes: n
            .ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix().and_then(prefix_base))
            .collect(),
        created_at,
        status: n
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        trunk: n.interface_type() == Some(&NetworkInterfaceType::Trunk),
        security_groups: n
            .groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect(),
    }
}
