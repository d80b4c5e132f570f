//! An emulator holding one VPC, driven through aws-sdk-ec2 as the agent would drive it: the
//! fixture for API-only lab tests (no namespaces, no root).

use aws_sdk_ec2::{types::NetworkInterface, Client};

use super::Emulator;

/// An emulator holding one VPC (10.0.0.0/16) with a security group.
pub struct ApiVpc {
    pub emulator: Emulator,
    pub ec2: Client,
    pub id: String,
    pub sg: String,
}

/// An instance as RunInstances launched it.
pub struct Launched {
    pub id: String,
    pub primary_eni: String,
    pub primary_attachment: String,
}

impl ApiVpc {
    pub async fn new() -> ApiVpc {
        let emulator = Emulator::start(None);
        let ec2 = emulator.ec2();
        let id = ec2
            .create_vpc()
            .cidr_block("10.0.0.0/16")
            .send()
            .await
            .expect("CreateVpc")
            .vpc
            .and_then(|v| v.vpc_id)
            .expect("a VPC id");
        let sg = ec2
            .create_security_group()
            .vpc_id(&id)
            .group_name("lab")
            .description("lab")
            .send()
            .await
            .expect("CreateSecurityGroup")
            .group_id
            .expect("a group id");
        ApiVpc {
            emulator,
            ec2,
            id,
            sg,
        }
    }

    pub async fn subnet(&self, cidr: &str, az: &str) -> String {
        self.ec2
            .create_subnet()
            .vpc_id(&self.id)
            .cidr_block(cidr)
            .availability_zone(az)
            .send()
            .await
            .expect("CreateSubnet")
            .subnet
            .and_then(|s| s.subnet_id)
            .expect("a subnet id")
    }

    pub async fn launch(&self, instance_type: &str, subnet: &str) -> Launched {
        let out = self
            .ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .instance_type(instance_type.into())
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet)
            .security_group_ids(&self.sg)
            .send()
            .await
            .expect("RunInstances");
        let instance = out.instances().first().expect("one instance");
        let primary = instance
            .network_interfaces()
            .first()
            .expect("a primary ENI");
        Launched {
            id: instance.instance_id().expect("an instance id").to_owned(),
            primary_eni: primary
                .network_interface_id()
                .expect("an ENI id")
                .to_owned(),
            primary_attachment: primary
                .attachment()
                .and_then(|a| a.attachment_id())
                .expect("an attachment id")
                .to_owned(),
        }
    }

    pub async fn eni(&self, subnet: &str) -> String {
        self.ec2
            .create_network_interface()
            .subnet_id(subnet)
            .groups(&self.sg)
            .send()
            .await
            .expect("CreateNetworkInterface")
            .network_interface
            .and_then(|n| n.network_interface_id)
            .expect("an ENI id")
    }

    pub async fn attach(&self, eni: &str, instance: &str, device_index: i32) -> String {
        self.ec2
            .attach_network_interface()
            .network_interface_id(eni)
            .instance_id(instance)
            .device_index(device_index)
            .send()
            .await
            .expect("AttachNetworkInterface")
            .attachment_id
            .expect("an attachment id")
    }

    pub async fn describe(&self, eni: &str) -> NetworkInterface {
        self.ec2
            .describe_network_interfaces()
            .network_interface_ids(eni)
            .send()
            .await
            .expect("DescribeNetworkInterfaces")
            .network_interfaces
            .and_then(|mut n| n.pop())
            .expect("the ENI")
    }

    pub async fn available(&self, subnet: &str) -> i32 {
        self.ec2
            .describe_subnets()
            .subnet_ids(subnet)
            .send()
            .await
            .expect("DescribeSubnets")
            .subnets()
            .first()
            .and_then(|s| s.available_ip_address_count())
            .expect("AvailableIpAddressCount")
    }

    /// The instance type's (MaximumNetworkInterfaces, Ipv4AddressesPerInterface), from the API.
    pub async fn limits(&self, instance_type: &str) -> (i32, i32) {
        let out = self
            .ec2
            .describe_instance_types()
            .instance_types(instance_type.into())
            .send()
            .await
            .expect("DescribeInstanceTypes");
        let info = out.instance_types()[0].network_info().expect("NetworkInfo");
        (
            info.maximum_network_interfaces().expect("an ENI limit"),
            info.ipv4_addresses_per_interface()
                .expect("an address limit"),
        )
    }
}

pub fn addresses(eni: &NetworkInterface) -> Vec<String> {
    eni.private_ip_addresses()
        .iter()
        .filter_map(|a| a.private_ip_address().map(str::to_owned))
        .collect()
}

pub fn prefixes(eni: &NetworkInterface) -> Vec<String> {
    eni.ipv4_prefixes()
        .iter()
        .filter_map(|p| p.ipv4_prefix().map(str::to_owned))
        .collect()
}
