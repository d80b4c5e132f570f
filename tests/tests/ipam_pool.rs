//! The agent's address pool against the lab's EC2 and IMDS: warm targets met by filling attached
//! ENIs before adding ENIs, never beyond the instance's limits; give-backs of addresses, prefixes
//! and whole ENIs; EC2 failures (attach limit, address limit, throttling, missing permission,
//! and a matrix of every action the pool calls failing every way EC2 fails) that lose or
//! duplicate nothing; the checkpoint across restarts and VPC CNI's imported.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_sdk_ec2::types::{Filter, NetworkInterface};
use eniflow_agent::{
    ec2::{self, Ec2},
    instance::{self, Instance},
    ipam::{eniconfig::EniConfig, warm::Plan, Config, Ipam, IpamError, Knobs, Owner, PoolError},
};
use eniflow_tests::lab::{
    api_vpc::{addresses, prefixes, ApiVpc, Launched},
    emulator::Fault,
};

struct Node {
    vpc: ApiVpc,
    launched: Launched,
    checkpoint: PathBuf,
}

impl Node {
    async fn new(instance_type: &str) -> Node {
        Node::in_subnet(instance_type, "10.0.0.0/20").await
    }

    /// A node whose primary ENI is in a subnet of `cidr` (zone us-west-2a).
    async fn in_subnet(instance_type: &str, cidr: &str) -> Node {
        let vpc = ApiVpc::new().await;
        let subnet = vpc.subnet(cidr, "us-west-2a").await;
        let launched = vpc.launch(instance_type, &subnet).await;
        vpc.emulator.select_imds(&launched.id);
        let dir = std::env::temp_dir().join(eniflow_tests::unique_name("ipam"));
        Node {
            vpc,
            launched,
            checkpoint: dir.join("ipam.json"),
        }
    }

    async fn instance(&self) -> Instance {
        let client = instance::client(Some(&self.vpc.emulator.endpoint())).expect("IMDS client");
        Instance::read(&client).await.expect("instance metadata")
    }

    fn config(&self, vars: &[(&str, &str)]) -> Config {
        let knobs = Knobs::from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .expect("valid knobs");
        let mut config = Config::new(knobs, self.checkpoint.clone());
        config.eni_min_age = Duration::ZERO;
        config.release_interval = Duration::ZERO;
        config.refill_period = Duration::from_millis(100);
        config
    }

    async fn ipam(&self, vars: &[(&str, &str)]) -> Ipam {
        self.start(self.config(vars))
            .await
            .expect("the pool starts")
    }

    async fn start(&self, config: Config) -> Result<Ipam, IpamError> {
        let ec2 = Ec2::from_client(self.vpc.ec2.clone());
        Ipam::start(ec2, self.instance().await, config).await
    }

    /// The pool with the agent's own EC2 client (its retries, timeouts), tightened for a test.
    async fn start_as_agent(&self, config: Config) -> Result<Ipam, IpamError> {
        let settings = ec2::Settings {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            attempt_timeout: Duration::from_millis(500),
            call_timeout: Duration::from_secs(3),
            ..Default::default()
        };
        let ec2 = Ec2::configured(self.vpc.emulator.ec2_config(), &settings);
        Ipam::start(ec2, self.instance().await, config).await
    }

    /// Moves on to a new node of the same type, in a new subnet of `cidr`, with a new checkpoint.
    async fn relaunch(&mut self, instance_type: &str, cidr: &str) {
        let subnet = self.vpc.subnet(cidr, "us-west-2a").await;
        self.launched = self.vpc.launch(instance_type, &subnet).await;
        self.vpc.emulator.select_imds(&self.launched.id);
        self.remove_checkpoint_dir();
        let dir = std::env::temp_dir().join(eniflow_tests::unique_name("ipam"));
        self.checkpoint = dir.join("ipam.json");
    }

    fn remove_checkpoint_dir(&self) {
        if let Some(dir) = self.checkpoint.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    async fn tag(&self, resource: &str, tags: &[(&str, &str)]) {
        let mut request = self.vpc.ec2.create_tags().resources(resource);
        for (k, v) in tags {
            request = request.tags(aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build());
        }
        request.send().await.expect("CreateTags");
    }

    /// An ENI that is not the node's, holding `addresses` of `subnet` (or one the subnet picks).
    async fn foreign_eni(&self, subnet: &str, addresses: &[&str]) -> String {
        self.detached_eni(subnet, addresses, &[]).await
    }

    /// An unattached ENI in `subnet` with `addresses` (or one the subnet picks) and `tags`.
    async fn detached_eni(
        &self,
        subnet: &str,
        addresses: &[&str],
        tags: &[(&str, String)],
    ) -> String {
        let tags = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::NetworkInterface)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(*k).value(v).build())
                    .collect(),
            ))
            .build();
        self.vpc
            .ec2
            .create_network_interface()
            .subnet_id(subnet)
            .groups(&self.vpc.sg)
            .tag_specifications(tags)
            .set_private_ip_addresses((!addresses.is_empty()).then(|| {
                addresses
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        aws_sdk_ec2::types::PrivateIpAddressSpecification::builder()
                            .private_ip_address(*a)
                            .primary(i == 0)
                            .build()
                    })
                    .collect()
            }))
            .send()
            .await
            .expect("CreateNetworkInterface")
            .network_interface
            .and_then(|n| n.network_interface_id)
            .unwrap()
    }

    async fn primary_subnet(&self) -> String {
        let primary = self.vpc.describe(&self.launched.primary_eni).await;
        primary.subnet_id().unwrap().to_owned()
    }

    /// ENI id → (device index, addresses, prefixes), as EC2 sees the instance.
    async fn attached(&self) -> BTreeMap<String, (i32, Vec<String>, Vec<String>)> {
        let out = self
            .describe(&[("attachment.instance-id", &self.launched.id)])
            .await;
        out.iter()
            .map(|n| {
                (
                    n.network_interface_id().unwrap().to_owned(),
                    (
                        n.attachment().and_then(|a| a.device_index()).unwrap(),
                        addresses(n),
                        prefixes(n),
                    ),
                )
            })
            .collect()
    }

    /// ENIs eniflow tagged that are not attached anywhere: leaks.
    async fn leaked(&self) -> Vec<String> {
        let filters = [("tag-key", ec2::tags::CREATED_AT), ("status", "available")];
        self.describe(&filters)
            .await
            .iter()
            .filter_map(|n| n.network_interface_id().map(str::to_owned))
            .collect()
    }

    async fn describe(&self, filters: &[(&str, &str)]) -> Vec<NetworkInterface> {
        let filters = filters
            .iter()
            .map(|(name, value)| Filter::builder().name(*name).values(*value).build())
            .collect();
        self.vpc
            .ec2
            .describe_network_interfaces()
            .set_filters(Some(filters))
            .send()
            .await
            .expect("DescribeNetworkInterfaces")
            .network_interfaces
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.remove_checkpoint_dir();
    }
}

fn owner(n: usize) -> Owner {
    Owner {
        network: "eniflow".into(),
        container_id: format!("container-{n}"),
        ifname: "eth0".into(),
    }
}

fn assign_all(ipam: &Ipam, range: std::ops::Range<usize>) -> Vec<Ipv4Addr> {
    range
        .map(|n| {
            ipam.assign(&owner(n), ("default", &format!("pod-{n}")))
                .unwrap_or_else(|e| panic!("assign {n}: {e}"))
                .ipv4
        })
        .collect()
}

/// Every address held by a pod is on the node's ENIs, no two pods share one, and the pool is
/// exactly what EC2 has.
async fn assert_consistent(node: &Node, ipam: &Ipam) {
    let on_enis = assert_nothing_lost_or_doubled(node, ipam).await;
    let pool: BTreeSet<String> = ipam.addresses().iter().map(|a| a.to_string()).collect();
    assert_eq!(pool, on_enis, "the pool and EC2 disagree");
}

/// Every address the pool holds or could hand out is on the node's ENIs, and no two pods share
/// one; the pool may not know yet of addresses EC2 added for a call whose answer never came.
/// Returns what EC2 has.
async fn assert_nothing_lost_or_doubled(node: &Node, ipam: &Ipam) -> BTreeSet<String> {
    let on_enis: BTreeSet<String> = node
        .attached()
        .await
        .values()
        .flat_map(|(_, addresses, prefixes)| {
            let from_prefixes = prefixes.iter().flat_map(|p| {
                let base: Ipv4Addr = p.split('/').next().unwrap().parse().unwrap();
                (0..16).map(move |i| Ipv4Addr::from(u32::from(base) + i).to_string())
            });
            addresses
                .iter()
                .skip(1)
                .cloned()
                .chain(from_prefixes)
                .collect::<Vec<_>>()
        })
        .collect();
    let held: Vec<String> = ipam
        .allocations()
        .iter()
        .map(|a| a.ipv4.to_string())
        .collect();
    let unique: BTreeSet<&String> = held.iter().collect();
    assert_eq!(
        unique.len(),
        held.len(),
        "an address handed out twice: {held:?}"
    );
    for ip in &held {
        assert!(
            on_enis.contains(ip),
            "{ip} is held but on none of the node's ENIs"
        );
    }
    for ip in ipam.addresses() {
        assert!(
            on_enis.contains(&ip.to_string()),
            "the pool could hand out {ip}, which is on none of the node's ENIs"
        );
    }
    on_enis
}

#[tokio::test]
async fn secondary_addresses_fill_attached_enis_first_and_whole_enis_go_back() {
    let node = Node::new("m5.large").await; // 3 ENIs × 10 IPv4, max pods 29
    let ipam = node.ipam(&[("IP_COOLDOWN_PERIOD", "0")]).await;
    assert_eq!(ipam.refill().await.expect("refill"), Plan::Hold);
    assert_eq!(ipam.counts().total, 9, "WARM_ENI_TARGET=1: one ENI's worth");
    assert_eq!(
        node.attached().await.len(),
        1,
        "the primary ENI filled first"
    );

    let mut held = assign_all(&ipam, 0..9);
    ipam.refill().await.expect("refill");
    let attached = node.attached().await;
    assert_eq!(attached.len(), 2);
    let (second, (device, second_addresses, _)) = attached
        .iter()
        .find(|(id, _)| **id != node.launched.primary_eni)
        .unwrap();
    assert_eq!((*device, second_addresses.len()), (1, 10));
    let described = node.vpc.describe(second).await;
    assert!(described
        .description()
        .unwrap_or_default()
        .starts_with(ec2::DESCRIPTION_PREFIX));
    let tags: BTreeMap<&str, &str> = described
        .tag_set()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(
        tags.get(ec2::tags::INSTANCE_ID),
        Some(&node.launched.id.as_str())
    );
    assert!(tags.contains_key(ec2::tags::CREATED_AT));
    assert_eq!(
        described
            .attachment()
            .and_then(|a| a.delete_on_termination()),
        Some(true)
    );

    held.extend(assign_all(&ipam, 9..18));
    ipam.refill().await.expect("refill");
    held.extend(assign_all(&ipam, 18..27));
    ipam.refill().await.expect("refill");
    assert_consistent(&node, &ipam).await;
    assert_eq!(node.attached().await.len(), 3, "the instance's ENI limit");
    let creates = |ipam: &Ipam| {
        ipam.ec2()
            .calls()
            .iter()
            .filter(|((action, _), _)| *action == "CreateNetworkInterface")
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    assert_eq!(creates(&ipam), 2);
    match ipam.assign(&owner(27), ("default", "pod-27")) {
        Err(IpamError::Pool(PoolError::Empty {
            total: 27,
            assigned: 27,
            ..
        })) => {}
        other => panic!("the 28th pod on a full m5.large: {other:?}"),
    }
    ipam.refill().await.expect("refill");
    assert_eq!(creates(&ipam), 2, "no ENI beyond the limit was tried");

    for n in 0..27 {
        assert!(ipam.release(&owner(n)).unwrap().is_some());
    }
    assert!(
        ipam.release(&owner(0)).unwrap().is_none(),
        "a second release is a no-op"
    );
    ipam.refill().await.expect("refill");
    let attached = node.attached().await;
    assert_eq!(
        attached.keys().collect::<Vec<_>>(),
        vec![&node.launched.primary_eni],
        "both added ENIs went back"
    );
    assert!(node.leaked().await.is_empty(), "detached ENIs were deleted");
    assert_eq!(ipam.counts().total, 9);
    assert_consistent(&node, &ipam).await;
}

#[tokio::test]
async fn prefix_mode_grows_by_prefixes_and_returns_only_whole_free_ones() {
    let node = Node::new("m5.large").await;
    let ipam = node
        .ipam(&[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_IP_TARGET", "5"),
            ("IP_COOLDOWN_PERIOD", "0"),
        ])
        .await;
    ipam.refill().await.expect("refill");
    let attached = node.attached().await;
    assert_eq!(attached[&node.launched.primary_eni].2.len(), 1, "one /28");
    assert_eq!(ipam.counts().total, 16);

    assign_all(&ipam, 0..14);
    ipam.refill().await.expect("refill");
    assert_eq!(ipam.counts().total, 32, "short of 5 free: one more prefix");
    assert_consistent(&node, &ipam).await;
    assert_eq!(
        node.attached().await.len(),
        1,
        "prefixes fill the primary ENI first"
    );

    // 12 of the 14 go: 7 free in one prefix + 16 in the other; the untouched prefix goes back.
    for n in 0..12 {
        ipam.release(&owner(n)).unwrap();
    }
    ipam.refill().await.expect("refill");
    assert_eq!(ipam.counts().total, 16);
    assert_consistent(&node, &ipam).await;
    let remaining = &node.attached().await[&node.launched.primary_eni].2;
    assert_eq!(remaining.len(), 1);
    let base: Ipv4Addr = remaining[0].trim_end_matches("/28").parse().unwrap();
    for a in ipam.allocations() {
        assert_eq!(
            u32::from(a.ipv4) & !15,
            u32::from(base),
            "{} left its prefix",
            a.ipv4
        );
    }
}

#[tokio::test]
async fn an_eni_that_cannot_be_attached_is_deleted_and_nothing_is_lost() {
    let node = Node::new("m5.large").await;
    let ipam = node.ipam(&[]).await;
    ipam.refill().await.expect("refill");
    let held = assign_all(&ipam, 0..9);
    node.vpc.emulator.fault(&Fault {
        action: "AttachNetworkInterface".into(),
        code: Some(ec2::codes::ATTACHMENT_LIMIT_EXCEEDED.into()),
        status: 400,
        count: 1,
        latency_ms: 0,
        cut: false,
    });
    let err = ipam.refill_step().await.expect_err("the attach fails");
    assert!(err.to_string().contains("AttachmentLimitExceeded"), "{err}");
    assert!(
        node.leaked().await.is_empty(),
        "the unattached ENI was deleted"
    );
    assert_eq!(node.attached().await.len(), 1);
    assert_eq!(ipam.allocations().len(), 9);
    assert_consistent(&node, &ipam).await;

    ipam.refill().await.expect("refill");
    assert_eq!(node.attached().await.len(), 2, "the next step succeeds");
    let again = assign_all(&ipam, 0..9);
    assert_eq!(again, held, "repeated assigns return the first answers");
    assert_consistent(&node, &ipam).await;
}

#[tokio::test]
async fn addresses_someone_else_assigned_are_learned_from_the_limit_error() {
    let node = Node::new("m5.large").await;
    let ipam = node.ipam(&[]).await;
    // Behind the agent's back, 6 of the primary ENI's 9 free slots are taken.
    node.vpc
        .ec2
        .assign_private_ip_addresses()
        .network_interface_id(&node.launched.primary_eni)
        .secondary_private_ip_address_count(6)
        .send()
        .await
        .expect("AssignPrivateIpAddresses");
    let err = ipam.refill_step().await;
    assert!(err.is_ok(), "the limit error is handled: {err:?}");
    ipam.refill().await.expect("refill");
    assert!(ipam.counts().total >= 9);
    assert_consistent(&node, &ipam).await;
    let limit_errors: u64 = ipam
        .ec2()
        .calls()
        .iter()
        .filter(|((_, outcome), _)| outcome == ec2::codes::PRIVATE_IP_ADDRESS_LIMIT_EXCEEDED)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(limit_errors, 1, "learned once, not repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_refill_never_holds_up_assigns_from_the_pool() {
    let node = Node::new("m5.large").await;
    let ipam = Arc::new(node.ipam(&[("WARM_ENI_TARGET", "1")]).await);
    ipam.refill().await.expect("refill");
    for action in ["CreateNetworkInterface", "AssignPrivateIpAddresses"] {
        node.vpc.emulator.fault(&Fault {
            action: action.into(),
            code: Some("RequestLimitExceeded".into()),
            status: 503,
            count: 1000,
            // Each throttled answer takes 2 s: an assign that waited on one (a lock held across
            // the call) would take ten times the bound below.
            latency_ms: 2000,
            cut: false,
        });
    }
    let refill = tokio::spawn(ipam.clone().run_refill());
    // Every pod the pool has room for gets its address at once while EC2 throttles the refill.
    for n in 0..9 {
        let started = Instant::now();
        ipam.assign(&owner(n), ("default", "web"))
            .expect("from the pool");
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "assign waited on EC2 ({:?})",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ipam
        .ec2()
        .calls()
        .keys()
        .any(|(_, outcome)| outcome == "RequestLimitExceeded")
    {
        assert!(
            Instant::now() < deadline,
            "the refill never ran into the throttling: {:?}",
            ipam.ec2().calls()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ipam.assign(&owner(9), ("default", "web")).is_err());
    node.vpc.emulator.clear_faults();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ipam.assign(&owner(9), ("default", "web")).is_err() {
        assert!(Instant::now() < deadline, "the refill did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refill.abort();
    assert_consistent(&node, &ipam).await;
}

#[tokio::test]
async fn missing_permissions_are_reported_as_such_and_not_retried() {
    let node = Node::new("m5.large").await;
    let ipam = node.ipam(&[]).await;
    node.vpc.emulator.fault(&Fault {
        action: "AssignPrivateIpAddresses".into(),
        code: Some(ec2::codes::UNAUTHORIZED_OPERATION.into()),
        status: 403,
        count: 100,
        latency_ms: 0,
        cut: false,
    });
    match ipam.refill_step().await {
        Err(IpamError::Ec2(e)) => assert!(e.is_authorization(), "{e}"),
        other => panic!("expected an authorization error, got {other:?}"),
    }
    assert_eq!(
        node.vpc.emulator.calls().get("AssignPrivateIpAddresses"),
        Some(&1),
        "the SDK does not retry a 403"
    );
    assert_eq!(ipam.counts().total, 0);
}

#[tokio::test]
async fn allocations_survive_a_restart_and_vpc_cni_checkpoints_import() {
    let node = Node::new("m5.large").await;
    let first = node.ipam(&[]).await;
    first.refill().await.expect("refill");
    let held = assign_all(&first, 0..5);
    first.release(&owner(4)).unwrap();
    drop(first);

    let second = node.ipam(&[]).await;
    assert_eq!(second.allocations().len(), 4);
    assert_eq!(
        assign_all(&second, 0..4),
        held[..4].to_vec(),
        "same answers after restart"
    );
    second.refill().await.expect("refill");
    let fresh = assign_all(&second, 10..15);
    assert!(
        fresh.iter().all(|ip| !held.contains(ip)),
        "a cooling or held address reused"
    );
    assert_eq!(
        second.counts().cooling,
        1,
        "the cooldown survived the restart"
    );
    assert_consistent(&node, &second).await;
    drop(second);

    // A node moving from aws-node: VPC CNI's checkpoint is read when eniflow has none.
    std::fs::remove_file(&node.checkpoint).unwrap();
    let vpc_cni = node.checkpoint.with_file_name("aws-node-ipam.json");
    std::fs::write(
        &vpc_cni,
        format!(
            r#"{{"version":"vpc-cni-ipam/1","allocations":[
              {{"networkName":"aws-cni","containerID":"from-aws-node","ifName":"eth0","ipv4":"{}",
                "allocationTimestamp":1700000000000000000,
                "metadata":{{"k8sPodNamespace":"kube-system","k8sPodName":"coredns"}}}},
              {{"networkName":"aws-cni","containerID":"gone","ifName":"eth0","ipv4":"192.0.2.9",
                "allocationTimestamp":1,"metadata":{{}}}}]}}"#,
            held[2]
        ),
    )
    .unwrap();
    let mut config = node.config(&[]);
    config.vpc_cni_checkpoint = Some(vpc_cni);
    let third = node
        .start(config)
        .await
        .expect("the pool starts from VPC CNI's checkpoint");
    let imported = third.allocations();
    assert_eq!(
        imported.len(),
        1,
        "the address on no ENI is dropped: {imported:?}"
    );
    assert_eq!(
        (imported[0].owner.container_id.as_str(), imported[0].ipv4),
        ("from-aws-node", held[2])
    );
    let taken = assign_all(&third, 20..28);
    assert!(!taken.contains(&held[2]));
}

#[tokio::test]
async fn the_leak_sweep_deletes_exactly_the_leaked_enis() {
    let node = Node::new("m5.large").await;
    let subnet = node.vpc.describe(&node.launched.primary_eni).await;
    let subnet = subnet.subnet_id().unwrap();
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let tagged = |tags: Vec<(&'static str, String)>| {
        let subnet = subnet.to_owned();
        let node = &node;
        async move { node.detached_eni(&subnet, &[], &tags).await }
    };
    let old = |cluster: &str| {
        vec![
            (ec2::tags::CREATED_AT, an_hour_ago.to_string()),
            (ec2::tags::CLUSTER_NAME, cluster.to_owned()),
        ]
    };
    let leaked = tagged(old("lab")).await;
    let other_cluster = tagged(old("other")).await;
    let young = tagged(vec![
        (ec2::tags::CREATED_AT, (an_hour_ago + 3600).to_string()),
        (ec2::tags::CLUSTER_NAME, "lab".into()),
    ])
    .await;
    let foreign = tagged(vec![("team", "db".into())]).await;
    let attached = tagged(old("lab")).await;
    node.vpc.attach(&attached, &node.launched.id, 1).await;

    let ec2 = Ec2::from_client(node.vpc.ec2.clone());
    let deleted = eniflow_agent::ipam::leaks::sweep(
        &ec2,
        Some("lab"),
        eniflow_agent::ipam::leaks::DEFAULT_MIN_AGE,
        std::time::SystemTime::now(),
    )
    .await
    .expect("the sweep");
    assert_eq!(deleted, vec![leaked.clone()]);
    for (id, kept) in [
        (&leaked, false),
        (&other_cluster, true),
        (&young, true),
        (&foreign, true),
        (&attached, true),
    ] {
        assert_eq!(ec2.eni(id).await.unwrap().is_some(), kept, "{id}");
    }
}

fn outcomes(ipam: &Ipam, code: &str) -> u64 {
    ipam.ec2()
        .calls()
        .iter()
        .filter(|((_, outcome), _)| outcome == code)
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn a_full_subnet_sends_new_enis_to_the_next_subnet_tagged_for_the_cluster() {
    // A /28: 11 usable addresses, 1 for the instance, 6 for someone else's ENI: 4 free.
    let node = Node::in_subnet("m5.large", "10.0.0.0/28").await;
    let primary_subnet = node.primary_subnet().await;
    node.foreign_eni(
        &primary_subnet,
        &[
            "10.0.0.5",
            "10.0.0.6",
            "10.0.0.7",
            "10.0.0.8",
            "10.0.0.9",
            "10.0.0.10",
        ],
    )
    .await;
    let role = (eniflow_agent::ipam::subnets::ROLE_TAG, "1");
    let tagged = node.vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    node.tag(&tagged, &[role]).await;
    let untagged = node.vpc.subnet("10.0.2.0/24", "us-west-2a").await;
    let other_cluster = node.vpc.subnet("10.0.3.0/24", "us-west-2a").await;
    node.tag(
        &other_cluster,
        &[role, ("cni.networking.k8s.aws/cluster/other", "shared")],
    )
    .await;
    let other_zone = node.vpc.subnet("10.0.4.0/24", "us-west-2b").await;
    node.tag(&other_zone, &[role]).await;

    let mut config = node.config(&[]);
    config.cluster_name = Some("lab".into());
    let ipam = node.start(config).await.expect("the pool starts");
    ipam.refill().await.expect("refill");
    assert_eq!(ipam.counts().total, 9);
    let attached = node.attached().await;
    assert_eq!(
        attached[&node.launched.primary_eni].1.len(),
        1,
        "nothing fit the primary subnet"
    );
    let added = attached
        .keys()
        .find(|id| **id != node.launched.primary_eni)
        .expect("a second ENI");
    let subnet = node
        .vpc
        .describe(added)
        .await
        .subnet_id()
        .unwrap()
        .to_owned();
    assert_eq!(
        subnet, tagged,
        "not {untagged}, {other_cluster} or {other_zone}"
    );
    assert_consistent(&node, &ipam).await;

    // The full subnet is passed over for a while instead of being asked again.
    assign_all(&ipam, 0..9);
    ipam.refill().await.expect("refill");
    assert_eq!(
        outcomes(&ipam, ec2::codes::INSUFFICIENT_FREE_ADDRESSES_IN_SUBNET),
        1
    );
    assert_eq!(ipam.counts().total, 18);
    assert_consistent(&node, &ipam).await;
}

#[tokio::test]
async fn fragmented_prefixes_fall_back_to_single_addresses_and_back() {
    // A /26 whose four /28s each hold an address in use: no /28 is free.
    let node = Node::in_subnet("m5.large", "10.0.0.0/26").await;
    let primary_subnet = node.primary_subnet().await;
    let fragments = node
        .foreign_eni(&primary_subnet, &["10.0.0.20", "10.0.0.36", "10.0.0.52"])
        .await;
    let mut config = node.config(&[
        ("ENABLE_PREFIX_DELEGATION", "true"),
        ("WARM_IP_TARGET", "16"),
        ("IP_COOLDOWN_PERIOD", "0"),
        ("ENABLE_SUBNET_DISCOVERY", "false"),
    ]);
    config.subnet_pause = Duration::from_secs(1);
    let ipam = node.start(config).await.expect("the pool starts");
    ipam.refill().await.expect("refill");
    assert_eq!(
        ipam.counts().total,
        16,
        "16 single addresses instead of a /28"
    );
    let attached = node.attached().await;
    assert!(attached
        .values()
        .all(|(_, _, prefixes)| prefixes.is_empty()));
    assert_eq!(outcomes(&ipam, ec2::codes::INSUFFICIENT_CIDR_BLOCKS), 1);
    assert_consistent(&node, &ipam).await;

    // /28s free up; after the pause, growth asks for prefixes again.
    node.vpc
        .ec2
        .delete_network_interface()
        .network_interface_id(fragments)
        .send()
        .await
        .expect("DeleteNetworkInterface");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assign_all(&ipam, 0..16);
    ipam.refill().await.expect("refill");
    let prefixes: usize = node
        .attached()
        .await
        .values()
        .map(|(_, _, p)| p.len())
        .sum();
    assert_eq!(prefixes, 1);
    assert_consistent(&node, &ipam).await;

    // Released, the single addresses go back first and the /28 stays.
    for n in 0..16 {
        ipam.release(&owner(n)).unwrap();
    }
    ipam.refill().await.expect("refill");
    let attached = node.attached().await;
    let singles: usize = attached.values().map(|(_, a, _)| a.len() - 1).sum();
    let prefixes: usize = attached.values().map(|(_, _, p)| p.len()).sum();
    assert_eq!((singles, prefixes), (0, 1));
    assert_eq!(ipam.counts().total, 16);
    assert_consistent(&node, &ipam).await;
}

#[tokio::test]
async fn detaches_and_unassigns_outside_eniflow_are_noticed() {
    let node = Node::new("m5.large").await;
    let mut config = node.config(&[]);
    config.lost_grace = Duration::from_secs(1);
    let ipam = node.start(config).await.expect("the pool starts");
    ipam.refill().await.expect("refill");
    let held = assign_all(&ipam, 0..9);
    ipam.refill().await.expect("refill");
    let attached = node.attached().await;
    let second = attached
        .keys()
        .find(|id| **id != node.launched.primary_eni)
        .expect("a second ENI")
        .clone();

    // Someone unassigns a held address from the primary ENI and detaches the second ENI.
    node.vpc
        .ec2
        .unassign_private_ip_addresses()
        .network_interface_id(&node.launched.primary_eni)
        .private_ip_addresses(held[4].to_string())
        .send()
        .await
        .expect("UnassignPrivateIpAddresses");
    let attachment = node
        .vpc
        .describe(&second)
        .await
        .attachment()
        .and_then(|a| a.attachment_id().map(str::to_owned))
        .unwrap();
    node.vpc
        .ec2
        .detach_network_interface()
        .attachment_id(attachment)
        .send()
        .await
        .expect("DetachNetworkInterface");

    // One answer without the address is not proof (EC2 is eventually consistent): the pod
    // keeps it, and no other pod gets it.
    assert!(ipam.reconcile().await.expect("reconcile").is_empty());
    assert!(ipam.allocation(&owner(4)).is_some());
    // Missing through the grace: lost.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let lost = ipam.reconcile().await.expect("reconcile");
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].ipv4, &lost[0].owner), (held[4], &owner(4)));
    assert_consistent(&node, &ipam).await;
    assert_eq!(ipam.allocations().len(), 8);
    // The pool grows back to its target on the ENIs the node still has, and beyond.
    ipam.refill().await.expect("refill");
    assert_consistent(&node, &ipam).await;
    let counts = ipam.counts();
    assert!(counts.total - counts.assigned >= 9, "{counts:?}");
}

#[tokio::test]
async fn custom_networking_puts_pods_on_the_eniconfig_subnet_and_never_on_the_primary_eni() {
    let node = Node::in_subnet("m5.large", "10.0.0.0/24").await;
    let pod_subnet = node.vpc.subnet("10.0.64.0/20", "us-west-2a").await;
    let elsewhere = node.vpc.subnet("10.0.128.0/20", "us-west-2b").await;
    let pod_sg = node
        .vpc
        .ec2
        .create_security_group()
        .vpc_id(&node.vpc.id)
        .group_name("pods")
        .description("pods")
        .send()
        .await
        .expect("CreateSecurityGroup")
        .group_id
        .unwrap();
    let eniconfig = |subnet: &str| EniConfig {
        name: "us-west-2a".into(),
        subnet: subnet.into(),
        security_groups: vec![pod_sg.clone()],
    };

    let mut config = node.config(&[("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true")]);
    config.custom_network = Some(eniconfig(&elsewhere));
    let refused = node
        .start(config.clone())
        .await
        .err()
        .expect("an ENIConfig subnet in another zone is refused");
    let message = refused.to_string();
    assert!(
        message.contains(&elsewhere) && message.contains("us-west-2a"),
        "{message}"
    );

    config.custom_network = Some(eniconfig(&pod_subnet));
    let ipam = node.start(config).await.expect("the pool starts");
    assert_eq!(
        ipam.capacity().max_pods,
        20,
        "an m5.large without its primary ENI"
    );
    ipam.refill().await.expect("refill");
    let held = assign_all(&ipam, 0..9);
    ipam.refill().await.expect("refill");
    let attached = node.attached().await;
    assert_eq!(
        attached[&node.launched.primary_eni].1.len(),
        1,
        "the primary ENI carries no pods"
    );
    for ip in &held {
        assert_eq!(
            ip.octets()[2] & 0xf0,
            64,
            "{ip} is not in the ENIConfig subnet"
        );
    }
    for eni in attached
        .keys()
        .filter(|id| **id != node.launched.primary_eni)
    {
        let described = node.vpc.describe(eni).await;
        assert_eq!(described.subnet_id(), Some(pod_subnet.as_str()));
        let groups: Vec<&str> = described
            .groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        assert_eq!(groups, [pod_sg.as_str()]);
    }
    assert_consistent(&node, &ipam).await;
}

#[tokio::test]
async fn max_eni_caps_the_node_below_the_instance_limit() {
    let node = Node::new("m5.large").await;
    let ipam = node.ipam(&[("MAX_ENI", "2")]).await;
    assert_eq!(ipam.capacity().max_pods, 20, "2 ENIs × 9 + 2");
    ipam.refill().await.expect("refill");
    assign_all(&ipam, 0..9);
    ipam.refill().await.expect("refill");
    assign_all(&ipam, 9..18);
    ipam.refill().await.expect("refill");
    assert_eq!(node.attached().await.len(), 2);
    assert!(ipam.assign(&owner(18), ("default", "web")).is_err());
    assert_consistent(&node, &ipam).await;
}

#[tokio::test]
async fn pod_eni_keeps_a_slot_for_the_trunk_and_adopts_it_when_attached() {
    let node = Node::new("m5.large").await;
    let ipam = node.ipam(&[("ENABLE_POD_ENI", "true")]).await;
    assert_eq!(
        ipam.capacity().max_pods,
        20,
        "3 ENIs, one of them the trunk"
    );
    ipam.refill().await.expect("refill");
    assign_all(&ipam, 0..9);
    ipam.refill().await.expect("refill");
    assign_all(&ipam, 9..18);
    ipam.refill().await.expect("refill");
    assert_eq!(
        node.attached().await.len(),
        2,
        "the third slot is the trunk's"
    );
    assert!(ipam.assign(&owner(18), ("default", "web")).is_err());

    // The VPC resource controller attaches the trunk: adopted, and no pod gets its addresses.
    let subnet = node.primary_subnet().await;
    let trunk = node
        .vpc
        .ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .groups(&node.vpc.sg)
        .interface_type(aws_sdk_ec2::types::NetworkInterfaceCreationType::Trunk)
        .secondary_private_ip_address_count(3)
        .send()
        .await
        .expect("CreateNetworkInterface (trunk)")
        .network_interface
        .and_then(|n| n.network_interface_id)
        .unwrap();
    node.vpc.attach(&trunk, &node.launched.id, 2).await;
    assert!(ipam.reconcile().await.unwrap().is_empty());
    // The pool knows it, as a trunk (the ENI watcher gives it the trunk's role from this).
    let known = ipam.enis();
    let adopted = known.iter().find(|e| e.id == trunk);
    assert!(
        adopted.is_some_and(|e| e.trunk),
        "the pool does not hold {trunk} as its trunk: {known:?}"
    );
    ipam.refill().await.expect("refill");
    let trunk_addresses = &node.attached().await[&trunk].1;
    let pool = ipam.addresses();
    for ip in trunk_addresses {
        assert!(
            !pool.contains(&ip.parse().unwrap()),
            "{ip} of the trunk is in the pool"
        );
    }
    assert_eq!(node.attached().await.len(), 3);
}

#[tokio::test]
async fn the_pool_creates_the_trunk_when_asked_to() {
    let node = Node::new("m5.large").await;
    let mut config = node.config(&[("ENABLE_POD_ENI", "true")]);
    config.create_trunk = true;
    let ipam = node.start(config).await.expect("the pool starts");
    ipam.refill().await.expect("refill");
    let attached = node.attached().await;
    let trunks: Vec<NetworkInterface> = node
        .describe(&[
            ("attachment.instance-id", &node.launched.id),
            ("interface-type", "trunk"),
        ])
        .await;
    assert_eq!(trunks.len(), 1, "one trunk attached: {attached:?}");
    let trunk = &trunks[0];
    assert_eq!(
        trunk.attachment().and_then(|a| a.delete_on_termination()),
        Some(true)
    );
    assert!(trunk
        .tag_set()
        .iter()
        .any(|t| t.key() == Some(ec2::tags::CREATED_AT)));
    // It takes the next slot; pods fill the primary ENI and then the last one.
    assign_all(&ipam, 0..9);
    ipam.refill().await.expect("refill");
    assert_eq!(node.attached().await.len(), 3);
    assert_eq!(ipam.counts().total, 18);
    assert_consistent(&node, &ipam).await;
}

/// deploy/iam-policy.json grants exactly what the pool calls: every action the emulator saw
/// while a pool started, grew by an ENI and gave it back is in the policy, and the policy holds
/// nothing else (but CreateTags, authorised only as part of CreateNetworkInterface).
#[tokio::test]
async fn the_iam_policy_grants_exactly_the_actions_the_pool_calls() {
    let policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(eniflow_tests::agent::workspace().join("deploy/iam-policy.json"))
            .unwrap(),
    )
    .expect("deploy/iam-policy.json is JSON");
    let statements = policy["Statement"].as_array().expect("statements");
    let granted: BTreeSet<String> = statements[0]["Action"]
        .as_array()
        .expect("the pool's actions")
        .iter()
        .map(|a| a.as_str().unwrap().trim_start_matches("ec2:").to_owned())
        .collect();
    assert_eq!(statements[1]["Action"], "ec2:CreateTags");
    assert_eq!(
        statements[1]["Condition"]["StringEquals"]["ec2:CreateAction"], "CreateNetworkInterface",
        "tags only on creation"
    );

    let node = Node::new("m5.large").await; // 3 ENIs × 10 IPv4
    let before = node.vpc.emulator.calls();
    // WARM_IP_TARGET=2: addresses come and go two at a time.
    let ipam = node
        .ipam(&[("WARM_IP_TARGET", "2"), ("IP_COOLDOWN_PERIOD", "0")])
        .await;
    for n in (0..4).step_by(2) {
        ipam.refill().await.expect("refill");
        assign_all(&ipam, n..n + 2);
    }
    for n in 0..4 {
        ipam.release(&owner(n)).unwrap();
    }
    ipam.refill()
        .await
        .expect("refill: surplus addresses go back");
    drop(ipam);
    // The default knobs: a whole ENI added for the 10th pod, given back once all are gone.
    let ipam = node.ipam(&[("IP_COOLDOWN_PERIOD", "0")]).await;
    ipam.refill().await.expect("refill");
    assign_all(&ipam, 0..9);
    ipam.refill().await.expect("refill: a second ENI");
    assign_all(&ipam, 9..12);
    for n in 0..12 {
        ipam.release(&owner(n)).unwrap();
    }
    ipam.refill()
        .await
        .expect("refill: the second ENI goes back");
    let after = node.vpc.emulator.calls();
    let called: BTreeSet<String> = after
        .iter()
        .filter(|(action, n)| before.get(*action).is_none_or(|b| b < n))
        .map(|(action, _)| action.clone())
        .collect();
    assert_eq!(
        called, granted,
        "what the pool called (left) against what deploy/iam-policy.json grants (right)"
    );
}

/// When the pool meets a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    Refill,
    Release,
}

/// A fault as the emulator injects it: its EC2 code (None: a slow success) and HTTP status.
struct Kind {
    name: &'static str,
    code: Option<&'static str>,
    status: u16,
    latency_ms: u64,
    cut: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "throttled",
        code: Some("RequestLimitExceeded"),
        status: 503,
        latency_ms: 0,
        cut: false,
    },
    Kind {
        name: "500",
        code: Some("InternalError"),
        status: 500,
        latency_ms: 0,
        cut: false,
    },
    Kind {
        name: "503",
        code: Some("Unavailable"),
        status: 503,
        latency_ms: 0,
        cut: false,
    },
    Kind {
        name: "unauthorized",
        code: Some("UnauthorizedOperation"),
        status: 403,
        latency_ms: 0,
        cut: false,
    },
    Kind {
        name: "limit",
        code: None,
        status: 400,
        latency_ms: 0,
        cut: false,
    },
    // Longer than the attempt timeout (500 ms here): every attempt is cut off.
    Kind {
        name: "slow",
        code: None,
        status: 200,
        latency_ms: 1500,
        cut: false,
    },
    // An answer cut off (HTTP 500, no body): no error code, so the call may have happened.
    Kind {
        name: "cut",
        code: None,
        status: 200,
        latency_ms: 0,
        cut: true,
    },
];

/// The limit error EC2 answers `action` with, if it has one.
fn limit_code(action: &str) -> Option<&'static str> {
    match action {
        "AssignPrivateIpAddresses" => Some(ec2::codes::PRIVATE_IP_ADDRESS_LIMIT_EXCEEDED),
        "AttachNetworkInterface" => Some(ec2::codes::ATTACHMENT_LIMIT_EXCEEDED),
        "CreateNetworkInterface" => Some("NetworkInterfaceLimitExceeded"),
        _ => None,
    }
}

/// The state each faulted action is met in: the pool's knobs, and pods added (with refills)
/// before the fault. Growth then needs the action: an Assign on the primary ENI (four warm, all
/// taken), or a new ENI (nine warm, all taken). Give-backs follow deleting every pod: addresses
/// under WARM_IP_TARGET, whole ENIs under WARM_ENI_TARGET.
struct Setup {
    phase: Phase,
    actions: &'static [&'static str],
    knobs: &'static [(&'static str, &'static str)],
    pods: usize,
}

const MATRIX: &[Setup] = &[
    Setup {
        phase: Phase::Start,
        actions: &["DescribeInstanceTypes", "DescribeNetworkInterfaces"],
        knobs: &[("WARM_IP_TARGET", "4")],
        pods: 0,
    },
    Setup {
        phase: Phase::Refill,
        actions: &["AssignPrivateIpAddresses"],
        knobs: &[("WARM_IP_TARGET", "4")],
        pods: 4,
    },
    Setup {
        phase: Phase::Refill,
        actions: &[
            "CreateNetworkInterface",
            "AttachNetworkInterface",
            "ModifyNetworkInterfaceAttribute",
        ],
        knobs: &[("WARM_IP_TARGET", "9")],
        pods: 9,
    },
    Setup {
        phase: Phase::Release,
        actions: &["UnassignPrivateIpAddresses"],
        knobs: &[("WARM_IP_TARGET", "4")],
        pods: 9,
    },
    Setup {
        phase: Phase::Release,
        actions: &["DetachNetworkInterface", "DeleteNetworkInterface"],
        knobs: &[("WARM_ENI_TARGET", "1")],
        pods: 9,
    },
];

/// Refills until a pass makes no EC2 call (the pool is where its targets want it); returns how
/// long that took.
async fn settle(ipam: &Ipam) -> Duration {
    let started = Instant::now();
    loop {
        // Reads (a reconcile's DescribeNetworkInterfaces) are not movement; any change is.
        let changes = || -> u64 {
            let calls = ipam.ec2().calls();
            calls
                .iter()
                .filter(|((action, _), _)| !action.starts_with("Describe"))
                .map(|(_, n)| n)
                .sum()
        };
        let before = changes();
        let done = ipam.refill().await.is_ok();
        if done && changes() == before {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the pool did not settle in 30 s"
        );
    }
}

/// Every EC2 action the pool calls, failing in every way EC2 fails, at start, while growing
/// and while giving back: the pool never loses or duplicates an address, and settles once the
/// fault clears. Prints the matrix (what the pool did, how long it took to recover).
#[tokio::test]
async fn every_ec2_fault_at_start_refill_and_release_loses_nothing_and_recovers() {
    let mut node = Node::new("m5.large").await;
    let mut rows = Vec::new();
    let mut subnet = 16;
    for setup in MATRIX {
        let phase = setup.phase;
        let mut knobs = setup.knobs.to_vec();
        knobs.push(("IP_COOLDOWN_PERIOD", "0"));
        for action in setup.actions {
            for kind in KINDS {
                let code = match kind.name {
                    "limit" => match limit_code(action) {
                        Some(code) => Some(code),
                        None => continue,
                    },
                    _ => kind.code,
                };
                let row = format!("{phase:?} {action} {}", kind.name);
                subnet += 1;
                node.relaunch("m5.large", &format!("10.0.{subnet}.0/24"))
                    .await;
                let mut pods = 0..0;
                let mut ipam = None;
                if phase != Phase::Start {
                    let started = node
                        .start_as_agent(node.config(&knobs))
                        .await
                        .expect("start");
                    settle(&started).await;
                    pods = 0..setup.pods;
                    for n in pods.clone() {
                        while started
                            .assign(&owner(n), ("default", &format!("pod-{n}")))
                            .is_err()
                        {
                            started.refill().await.expect("refill");
                        }
                    }
                    if phase == Phase::Release {
                        settle(&started).await;
                        for n in pods.clone() {
                            started.release(&owner(n)).unwrap();
                        }
                        pods = 0..0;
                    }
                    ipam = Some(started);
                }
                node.vpc.emulator.fault(&Fault {
                    action: action.to_string(),
                    code: code.map(str::to_owned),
                    status: kind.status,
                    count: 1000,
                    latency_ms: kind.latency_ms,
                    cut: kind.cut,
                });
                let faulted = Instant::now();
                let what = match &ipam {
                    None => match node.start_as_agent(node.config(&knobs)).await {
                        Ok(started) => {
                            ipam = Some(started);
                            "started".to_owned()
                        }
                        Err(e) => format!("refused to start: {e}"),
                    },
                    Some(ipam) => match ipam.refill().await {
                        Ok(_) => "refill ok".to_owned(),
                        Err(e) => format!("refill failed: {e}"),
                    },
                };
                let during = faulted.elapsed();
                let failed: u64 = match &ipam {
                    Some(ipam) => ipam
                        .ec2()
                        .calls()
                        .iter()
                        .filter(|((a, outcome), _)| a == action && outcome != "ok")
                        .map(|(_, n)| n)
                        .sum(),
                    // It did not start: the call that stopped it is in the answer.
                    None => {
                        assert!(what.contains(action), "{row}: {what}");
                        1
                    }
                };
                assert!(failed > 0, "{row}: the pool never called {action} ({what})");
                if let Some(ipam) = &ipam {
                    assert_nothing_lost_or_doubled(&node, ipam).await;
                }
                node.vpc.emulator.clear_faults();
                let recovered = Instant::now();
                let ipam = match ipam {
                    Some(ipam) => ipam,
                    None => node
                        .start_as_agent(node.config(&knobs))
                        .await
                        .expect("start after the fault"),
                };
                // What EC2 did for calls that timed out joins the pool at the next reconcile
                // (the refill loop runs one every minute).
                ipam.reconcile().await.expect("reconcile");
                settle(&ipam).await;
                let recovery = recovered.elapsed();
                assert_consistent(&node, &ipam).await;
                let counts = ipam.counts();
                assert_eq!(counts.assigned as usize, pods.len(), "{row}");
                let warm: u32 = knobs
                    .iter()
                    .find(|(k, _)| *k == "WARM_IP_TARGET")
                    .map_or(9, |(_, v)| v.parse().unwrap());
                assert!(
                    counts.total - counts.assigned >= warm,
                    "{row}: the pool did not get back to its warm target: {counts:?}"
                );
                // A detached ENI of this node's is the leak sweep's (it carries eniflow's tags).
                let detached = node
                    .vpc
                    .ec2
                    .describe_network_interfaces()
                    .filters(Filter::builder().name("status").values("available").build())
                    .filters(
                        Filter::builder()
                            .name(format!("tag:{}", ec2::tags::INSTANCE_ID))
                            .values(&node.launched.id)
                            .build(),
                    )
                    .send()
                    .await
                    .expect("DescribeNetworkInterfaces")
                    .network_interfaces()
                    .len();
                let what: String = what.chars().take(100).collect();
                rows.push(format!(
                    "| {phase:?} | {action} | {} | {what} | {failed} | {:.1} s | {:.1} s | {detached} |",
                    kind.name,
                    during.as_secs_f64(),
                    recovery.as_secs_f64(),
                ));
            }
        }
    }
    println!("| phase | action | fault | what the pool did | failed calls | faulted for | recovered in | ENIs left for the leak sweep |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
}
