//! The lab: an emulated EC2 node and its VPC on one machine. An EC2 API + IMDSv2 emulator holds
//! the VPC, subnets and instances; a `vpc` namespace is the fabric; each instance (the node, a
//! second node, a remote host per subnet) is a namespace whose ENIs the fabric plugs in as
//! they are attached. Everything is removed when the lab is dropped.

pub mod api_vpc;
pub mod emulator;
pub mod internet;
pub mod spec;

use aws_sdk_ec2::{
    error::ProvideErrorMetadata,
    types::{NetworkInterfaceCreationType, ResourceType, Tag, TagSpecification},
    Client,
};
use serde_json::{json, Value};

pub use emulator::{Emulator, Fault};
pub use spec::{LabSpec, SpecError, SubnetSpec};

use crate::netns::Netns;

/// The small instance type remote hosts run on.
const HOST_INSTANCE_TYPE: &str = "t3.micro";

/// An instance in the lab: its EC2 identity and the namespace that is its machine.
pub struct Instance {
    pub id: String,
    pub primary_eni: String,
    pub primary_ip: String,
    pub netns: Netns,
}

/// A running lab. Field order is drop order: the emulator goes first (its fabric unplugs every
/// ENI), then the namespaces.
pub struct Lab {
    pub emulator: Emulator,
    pub vpc_id: String,
    /// Subnet ids, in spec order.
    pub subnets: Vec<String>,
    /// Security group ids, in spec order.
    pub security_groups: Vec<String>,
    pub node: Instance,
    pub second_node: Option<Instance>,
    /// One remote host per subnet (spec order), when the spec asks for hosts.
    pub hosts: Vec<Instance>,
    pub fabric: Netns,
    pub spec: LabSpec,
}

impl Lab {
    /// Checks the spec, then builds the VPC in the emulator and the namespaces around it.
    pub async fn start(spec: LabSpec) -> Result<Lab, SpecError> {
        spec.validate()?;
        crate::sweep_crashed_runs();
        crate::ensure_bpffs(); // the fabric pins its trunk-port programs there
        let fabric = Netns::new("vpc");
        let emulator = Emulator::start(Some(fabric.name()));
        let ec2 = emulator.ec2();
        ec2.describe_instance_types()
            .instance_types(spec.instance_type.as_str().into())
            .send()
            .await
            .map_err(|e| SpecError {
                field: "instance_type".into(),
                message: format!(
                    "{:?} is not an EC2 instance type ({})",
                    spec.instance_type,
                    e.code().unwrap_or("?")
                ),
            })?;
        let vpc_id = ec2
            .create_vpc()
            .cidr_block(&spec.vpc_cidrs[0])
            .send()
            .await
            .expect("CreateVpc")
            .vpc
            .and_then(|v| v.vpc_id)
            .expect("a VPC id");
        for cidr in &spec.vpc_cidrs[1..] {
            ec2.associate_vpc_cidr_block()
                .vpc_id(&vpc_id)
                .cidr_block(cidr)
                .send()
                .await
                .expect("AssociateVpcCidrBlock");
        }
        let mut subnets = Vec::new();
        for subnet in &spec.subnets {
            let mut tags = TagSpecification::builder().resource_type(ResourceType::Subnet);
            for (k, v) in &subnet.tags {
                tags = tags.tags(Tag::builder().key(k).value(v).build());
            }
            let mut request = ec2
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block(&subnet.cidr)
                .availability_zone(&subnet.az);
            if !subnet.tags.is_empty() {
                request = request.tag_specifications(tags.build());
            }
            let created = request.send().await.expect("CreateSubnet");
            subnets.push(
                created
                    .subnet
                    .and_then(|s| s.subnet_id)
                    .expect("a subnet id"),
            );
        }
        let mut security_groups = Vec::new();
        for name in &spec.security_groups {
            let created = ec2
                .create_security_group()
                .vpc_id(&vpc_id)
                .group_name(name)
                .description(format!("eniflow lab: {name}"))
                .send()
                .await
                .expect("CreateSecurityGroup");
            security_groups.push(created.group_id.expect("a group id"));
        }
        let node_subnet = &subnets[spec.node_subnet];
        let node = launch(
            &emulator,
            &ec2,
            "node",
            &spec.instance_type,
            node_subnet,
            &security_groups,
        )
        .await;
        emulator.select_imds(&node.id);
        let second_node = if spec.second_node {
            Some(
                launch(
                    &emulator,
                    &ec2,
                    "node",
                    &spec.instance_type,
                    node_subnet,
                    &security_groups,
                )
                .await,
            )
        } else {
            None
        };
        let mut hosts = Vec::new();
        if spec.hosts {
            for subnet in &subnets {
                hosts.push(
                    launch(
                        &emulator,
                        &ec2,
                        "host",
                        HOST_INSTANCE_TYPE,
                        subnet,
                        &security_groups,
                    )
                    .await,
                );
            }
        }
        Ok(Lab {
            emulator,
            vpc_id,
            subnets,
            security_groups,
            node,
            second_node,
            hosts,
            fabric,
            spec,
        })
    }

    /// The gateway address of subnet `index` (spec order): its base address + 1, as in EC2.
    pub fn gateway(&self, index: usize) -> String {
        let cidr =
            spec::Cidr::parse("subnets", &self.spec.subnets[index].cidr).expect("a validated spec");
        std::net::Ipv4Addr::from(u32::from(cidr.base) + 1).to_string()
    }

    /// A fresh EC2 client on the emulator.
    pub fn ec2(&self) -> Client {
        self.emulator.ec2()
    }

    /// The network view (ENIs, addresses, prefixes, trunk associations) the fabric follows.
    pub fn view(&self) -> Value {
        self.emulator.view()
    }

    /// As the VPC resource controller does for a node: a trunk ENI, attached at the next free
    /// device index. Returns the trunk ENI id.
    pub async fn create_trunk_eni(&self, instance: &Instance) -> String {
        let ec2 = self.ec2();
        let subnet = &self.subnets[self.spec.node_subnet];
        let eni = new_trunk(&ec2, subnet, &self.security_groups).await;
        let used = self.view()["enis"]
            .as_array()
            .expect("enis")
            .iter()
            .filter(|e| e["instance_id"] == instance.id.as_str())
            .filter_map(|e| e["device_index"].as_i64())
            .max()
            .unwrap_or(0);
        ec2.attach_network_interface()
            .network_interface_id(&eni)
            .instance_id(&instance.id)
            .device_index(used as i32 + 1)
            .send()
            .await
            .expect("AttachNetworkInterface (trunk)");
        eni
    }

    /// As the VPC resource controller does for a security-group pod: a branch ENI with the
    /// pod's security groups, associated with the trunk on `vlan`. Returns the branch ENI id.
    pub async fn create_branch_eni(
        &self,
        trunk: &str,
        vlan: i32,
        security_groups: &[String],
    ) -> String {
        let subnet = &self.subnets[self.spec.node_subnet];
        let branch = new_branch(&self.ec2(), subnet, trunk, vlan, security_groups).await;
        branch.network_interface_id.expect("an ENI id")
    }

    /// The `vpc.amazonaws.com/pod-eni` annotation the resource controller puts on a pod for its
    /// branch ENIs (the agent reads it through the CNI's runtimeConfig).
    pub fn pod_eni_annotation(&self, branches: &[&str]) -> String {
        let view = self.view();
        let enis = view["enis"].as_array().expect("enis");
        let entries: Vec<Value> = branches
            .iter()
            .map(|id| {
                let eni = enis
                    .iter()
                    .find(|e| e["id"] == *id)
                    .unwrap_or_else(|| panic!("no ENI {id}"));
                let subnet = view["subnets"]
                    .as_array()
                    .expect("subnets")
                    .iter()
                    .find(|s| s["id"] == eni["subnet_id"])
                    .expect("the branch ENI's subnet");
                json!({
                    "eniId": eni["id"],
                    "ifAddress": eni["mac"],
                    "privateIp": eni["private_ips"][0],
                    "vlanId": eni["vlan"],
                    "subnetCidr": subnet["cidr"],
                })
            })
            .collect();
        Value::Array(entries).to_string()
    }
}

/// A trunk ENI in `subnet` with `security_groups` (not attached); its id.
pub async fn new_trunk(ec2: &Client, subnet: &str, security_groups: &[String]) -> String {
    ec2.create_network_interface()
        .subnet_id(subnet)
        .interface_type(NetworkInterfaceCreationType::Trunk)
        .set_groups(Some(security_groups.to_vec()))
        .send()
        .await
        .expect("CreateNetworkInterface (trunk)")
        .network_interface
        .and_then(|n| n.network_interface_id)
        .expect("an ENI id")
}

/// A branch ENI in `subnet` with `security_groups`, associated with `trunk` on `vlan`.
pub async fn new_branch(
    ec2: &Client,
    subnet: &str,
    trunk: &str,
    vlan: i32,
    security_groups: &[String],
) -> aws_sdk_ec2::types::NetworkInterface {
    let branch = ec2
        .create_network_interface()
        .subnet_id(subnet)
        .set_groups(Some(security_groups.to_vec()))
        .send()
        .await
        .expect("CreateNetworkInterface (branch)")
        .network_interface
        .expect("the branch ENI");
    ec2.associate_trunk_interface()
        .branch_interface_id(branch.network_interface_id.clone().expect("an ENI id"))
        .trunk_interface_id(trunk)
        .vlan_id(vlan)
        .send()
        .await
        .expect("AssociateTrunkInterface");
    branch
}

/// Runs one instance and makes a namespace its machine; its primary ENI is plugged in (eth0,
/// configured as DHCP would) by the time this returns.
async fn launch(
    emulator: &Emulator,
    ec2: &Client,
    what: &str,
    instance_type: &str,
    subnet: &str,
    security_groups: &[String],
) -> Instance {
    let netns = Netns::new(what);
    let out = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(instance_type.into())
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .set_security_group_ids(Some(security_groups.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("RunInstances {instance_type}: {}", e.code().unwrap_or("?")));
    let instance = out
        .instances
        .and_then(|mut i| i.pop())
        .expect("one instance");
    let id = instance.instance_id.clone().expect("an instance id");
    let primary = instance
        .network_interfaces
        .unwrap_or_default()
        .into_iter()
        .find(|n| n.attachment.as_ref().and_then(|a| a.device_index) == Some(0))
        .expect("a primary ENI");
    emulator.register_node(&id, netns.name());
    Instance {
        id,
        primary_eni: primary.network_interface_id.expect("an ENI id"),
        primary_ip: primary.private_ip_address.expect("a primary address"),
        netns,
    }
}
