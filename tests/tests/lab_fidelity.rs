//! The lab's EC2 emulator answers as EC2 does, through aws-sdk-ec2 as the agent uses it: one test
//! per row of the "where plain moto is not EC2" table in notes/ec2-emulator.md, plus the fault
//! switch and the process contract. Each test starts its own emulator (API only, no root).

use std::{
    collections::BTreeSet,
    fmt::Debug,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aws_sdk_ec2::{
    error::ProvideErrorMetadata,
    types::{
        Filter, InstanceNetworkInterfaceSpecification, NetworkInterfaceAttachmentChanges,
        NetworkInterfaceCreationType, NetworkInterfaceStatus, NetworkInterfaceType, ResourceType,
        Tag, TagSpecification,
    },
};
use eniflow_tests::lab::{
    api_vpc::{addresses, prefixes, ApiVpc as Vpc},
    Emulator, Fault,
};

/// The EC2 error code of a failed call; panics if the call succeeded or the error has no code.
fn code<T: Debug, E: ProvideErrorMetadata + Debug>(result: Result<T, E>) -> String {
    match result {
        Ok(value) => panic!("expected an EC2 error, got {value:?}"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("an error without an EC2 code: {e:?}"))
            .to_owned(),
    }
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("an IPv4 address")
}

/// A /n network as (first address, size).
fn net(cidr: &str) -> (u32, u32) {
    let (base, len) = cidr.split_once('/').expect("a CIDR");
    let len: u32 = len.parse().expect("a prefix length");
    (u32::from(ip(base)), 1u32 << (32 - len))
}

/// The sorted ids of this VPC's ENIs that `filter` selects.
async fn eni_ids(vpc: &Vpc, filter: Filter) -> Vec<String> {
    let mut ids: Vec<String> = vpc
        .ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("vpc-id").values(&vpc.id).build())
        .filters(filter)
        .send()
        .await
        .expect("DescribeNetworkInterfaces with filters")
        .network_interfaces()
        .iter()
        .filter_map(|n| n.network_interface_id().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn enis_per_instance_are_limited_by_the_instance_type() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let (max_enis, _) = vpc.limits("m5.large").await;
    assert_eq!(max_enis, 3, "m5.large takes 3 ENIs on AWS");
    let node = vpc.launch("m5.large", &subnet).await;
    for index in 1..max_enis {
        let eni = vpc.eni(&subnet).await;
        vpc.attach(&eni, &node.id, index).await;
    }
    let extra = vpc.eni(&subnet).await;
    let refused = vpc
        .ec2
        .attach_network_interface()
        .network_interface_id(&extra)
        .instance_id(&node.id)
        .device_index(max_enis)
        .send()
        .await;
    assert_eq!(code(refused), "AttachmentLimitExceeded");
    assert_eq!(
        vpc.describe(&extra).await.status(),
        Some(&NetworkInterfaceStatus::Available),
        "a refused attachment leaves the ENI as it was"
    );

    // RunInstances asking for more interfaces than the type takes is refused as well.
    let mut launch = vpc
        .ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type("t3.micro".into())
        .min_count(1)
        .max_count(1);
    for index in 0..3 {
        launch = launch.network_interfaces(
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(index)
                .subnet_id(&subnet)
                .build(),
        );
    }
    assert_eq!(code(launch.send().await), "AttachmentLimitExceeded");
}

#[tokio::test]
async fn ipv4_addresses_per_eni_are_limited_and_prefixes_count_toward_it() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let (_, max_ipv4) = vpc.limits("m5.large").await;
    assert_eq!(
        max_ipv4, 10,
        "m5.large takes 10 IPv4 addresses per ENI on AWS"
    );
    let node = vpc.launch("m5.large", &subnet).await;

    // One call past the limit is refused whole.
    let too_many = vpc
        .ec2
        .assign_private_ip_addresses()
        .network_interface_id(&node.primary_eni)
        .secondary_private_ip_address_count(max_ipv4)
        .send()
        .await;
    assert_eq!(code(too_many), "PrivateIpAddressLimitExceeded");
    assert_eq!(addresses(&vpc.describe(&node.primary_eni).await).len(), 1);

    // Primary + 7 secondaries + 2 prefixes = 10: full.
    vpc.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&node.primary_eni)
        .secondary_private_ip_address_count(max_ipv4 - 3)
        .send()
        .await
        .expect("secondaries up to the limit");
    vpc.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&node.primary_eni)
        .ipv4_prefix_count(2)
        .send()
        .await
        .expect("prefixes up to the limit");
    let eni = vpc.describe(&node.primary_eni).await;
    assert_eq!(
        addresses(&eni).len() + prefixes(&eni).len(),
        max_ipv4 as usize
    );

    let one_more_address = vpc
        .ec2
        .assign_private_ip_addresses()
        .network_interface_id(&node.primary_eni)
        .secondary_private_ip_address_count(1)
        .send()
        .await;
    assert_eq!(code(one_more_address), "PrivateIpAddressLimitExceeded");
    let one_more_prefix = vpc
        .ec2
        .assign_private_ip_addresses()
        .network_interface_id(&node.primary_eni)
        .ipv4_prefix_count(1)
        .send()
        .await;
    assert_eq!(code(one_more_prefix), "PrivateIpAddressLimitExceeded");

    // An unattached ENI may hold more; attaching it to an m5.large is refused.
    let big = vpc
        .ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .groups(&vpc.sg)
        .secondary_private_ip_address_count(max_ipv4)
        .send()
        .await
        .expect("an unattached ENI with 11 addresses")
        .network_interface
        .and_then(|n| n.network_interface_id)
        .expect("an ENI id");
    let attach = vpc
        .ec2
        .attach_network_interface()
        .network_interface_id(&big)
        .instance_id(&node.id)
        .device_index(1)
        .send()
        .await;
    assert_eq!(code(attach), "PrivateIpAddressLimitExceeded");
}

#[tokio::test]
async fn prefix_delegation_hands_out_free_aligned_28s_until_none_is_left() {
    let vpc = Vpc::new().await;
    // A /26 holds four /28s: the first has the reserved .0-.3 (and the primary address), the
    // last has the broadcast address, so exactly two are free.
    let subnet = vpc.subnet("10.0.1.0/26", "us-west-2a").await;
    assert_eq!(vpc.available(&subnet).await, 64 - 5);
    let created = vpc
        .ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .groups(&vpc.sg)
        .ipv4_prefix_count(1)
        .send()
        .await
        .expect("CreateNetworkInterface with Ipv4PrefixCount")
        .network_interface
        .expect("an ENI");
    let eni = created
        .network_interface_id()
        .expect("an ENI id")
        .to_owned();
    assert_eq!(
        prefixes(&created).len(),
        1,
        "the created ENI reports its prefix"
    );

    let assigned = vpc
        .ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefix_count(1)
        .send()
        .await
        .expect("AssignPrivateIpAddresses with Ipv4PrefixCount");
    assert_eq!(assigned.assigned_ipv4_prefixes().len(), 1);

    let described = vpc.describe(&eni).await;
    let delegated = prefixes(&described);
    assert_eq!(
        delegated.len(),
        2,
        "DescribeNetworkInterfaces shows both prefixes"
    );
    let (subnet_base, subnet_size) = net("10.0.1.0/26");
    let primary = u32::from(ip(&addresses(&described)[0]));
    let mut blocks = BTreeSet::new();
    for prefix in &delegated {
        let (base, size) = net(prefix);
        assert_eq!(size, 16, "{prefix} is a /28");
        assert_eq!(base % 16, 0, "{prefix} is /28-aligned");
        assert!(
            base >= subnet_base && base + size <= subnet_base + subnet_size,
            "{prefix} lies in the subnet"
        );
        assert!(
            base > subnet_base + 3 && base + size - 1 < subnet_base + subnet_size - 1,
            "{prefix} holds no reserved address"
        );
        assert!(
            !(base..base + size).contains(&primary),
            "{prefix} overlaps the primary address"
        );
        assert!(blocks.insert(base), "{prefix} handed out twice");
    }
    assert_eq!(
        vpc.available(&subnet).await,
        64 - 5 - 1 - 32,
        "a prefix uses 16 addresses"
    );

    let none_left = vpc
        .ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefix_count(1)
        .send()
        .await;
    assert_eq!(code(none_left), "InsufficientCidrBlocks");

    vpc.ec2
        .unassign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefixes(&delegated[0])
        .send()
        .await
        .expect("UnassignPrivateIpAddresses with Ipv4Prefixes");
    assert_eq!(
        prefixes(&vpc.describe(&eni).await),
        vec![delegated[1].clone()]
    );
    assert_eq!(vpc.available(&subnet).await, 64 - 5 - 1 - 16);
}

#[tokio::test]
async fn subnet_addresses_are_unique_and_run_out_with_an_error() {
    let vpc = Vpc::new().await;
    // 16 addresses, minus the first 4 and the last: 11 usable.
    let subnet = vpc.subnet("10.0.1.0/28", "us-west-2a").await;
    assert_eq!(vpc.available(&subnet).await, 11);
    let first = vpc.eni(&subnet).await;
    vpc.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&first)
        .secondary_private_ip_address_count(9)
        .send()
        .await
        .expect("9 secondaries");
    let second = vpc.eni(&subnet).await;
    assert_eq!(vpc.available(&subnet).await, 0);

    let mut seen = BTreeSet::new();
    for eni in [&first, &second] {
        for address in addresses(&vpc.describe(eni).await) {
            let last = u32::from(ip(&address)) & 0xff;
            assert!(
                (4..15).contains(&last),
                "{address} is reserved (first 4 or last of the subnet)"
            );
            assert!(seen.insert(address.clone()), "{address} handed out twice");
        }
    }
    assert_eq!(seen.len(), 11);

    // Full: errors, in bounded time (plain moto spins forever here), and the count stays 0.
    let started = Instant::now();
    let full = tokio::time::timeout(
        Duration::from_secs(20),
        vpc.ec2
            .assign_private_ip_addresses()
            .network_interface_id(&second)
            .secondary_private_ip_address_count(1)
            .send(),
    )
    .await
    .expect("AssignPrivateIpAddresses on a full subnet answers");
    assert_eq!(code(full), "InsufficientFreeAddressesInSubnet");
    let no_eni = vpc
        .ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .send()
        .await;
    assert_eq!(code(no_eni), "InsufficientFreeAddressesInSubnet");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(vpc.available(&subnet).await, 0, "never negative");

    vpc.ec2
        .delete_network_interface()
        .network_interface_id(&first)
        .send()
        .await
        .expect("DeleteNetworkInterface");
    assert_eq!(
        vpc.available(&subnet).await,
        10,
        "deleting an ENI frees its addresses"
    );
}

#[tokio::test]
async fn trunk_enis_take_branches_on_distinct_vlans() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let node = vpc.launch("m5.large", &subnet).await;
    let trunk = vpc
        .ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .groups(&vpc.sg)
        .interface_type(NetworkInterfaceCreationType::Trunk)
        .send()
        .await
        .expect("CreateNetworkInterface (trunk)")
        .network_interface
        .expect("an ENI");
    assert_eq!(trunk.interface_type(), Some(&NetworkInterfaceType::Trunk));
    let trunk = trunk.network_interface_id().expect("an ENI id").to_owned();
    vpc.attach(&trunk, &node.id, 1).await;
    assert_eq!(
        vpc.describe(&trunk).await.interface_type(),
        Some(&NetworkInterfaceType::Trunk)
    );

    let branch = vpc.eni(&subnet).await;
    let association = vpc
        .ec2
        .associate_trunk_interface()
        .branch_interface_id(&branch)
        .trunk_interface_id(&trunk)
        .vlan_id(7)
        .send()
        .await
        .expect("AssociateTrunkInterface")
        .interface_association
        .expect("an association");
    let association_id = association.association_id().expect("an id").to_owned();
    assert!(
        association_id.starts_with("trunk-assoc-"),
        "{association_id}"
    );
    assert_eq!(association.vlan_id(), Some(7));
    assert_eq!(association.branch_interface_id(), Some(branch.as_str()));
    assert_eq!(association.trunk_interface_id(), Some(trunk.as_str()));
    assert_eq!(
        vpc.describe(&branch).await.interface_type(),
        Some(&NetworkInterfaceType::Branch)
    );

    let listed = vpc
        .ec2
        .describe_trunk_interface_associations()
        .filters(
            Filter::builder()
                .name("trunk-interface-association.trunk-interface-id")
                .values(&trunk)
                .build(),
        )
        .send()
        .await
        .expect("DescribeTrunkInterfaceAssociations");
    let listed = listed.interface_associations();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].association_id(), Some(association_id.as_str()));
    assert_eq!(listed[0].vlan_id(), Some(7));

    let view = vpc.emulator.view();
    let in_view = view["enis"]
        .as_array()
        .expect("enis")
        .iter()
        .find(|e| e["id"] == branch.as_str())
        .expect("the branch in the view");
    assert_eq!(in_view["interface_type"], "branch");
    assert_eq!(in_view["trunk_eni_id"], trunk.as_str());
    assert_eq!(in_view["vlan"], 7);

    // The same VLAN on the same trunk, an unknown branch, a branch already associated.
    let other = vpc.eni(&subnet).await;
    let same_vlan = vpc
        .ec2
        .associate_trunk_interface()
        .branch_interface_id(&other)
        .trunk_interface_id(&trunk)
        .vlan_id(7)
        .send()
        .await;
    assert_eq!(code(same_vlan), "InvalidParameterValue");
    let unknown = vpc
        .ec2
        .associate_trunk_interface()
        .branch_interface_id("eni-0123456789abcdef0")
        .trunk_interface_id(&trunk)
        .vlan_id(8)
        .send()
        .await;
    assert_eq!(code(unknown), "InvalidNetworkInterfaceID.NotFound");
    let twice = vpc
        .ec2
        .associate_trunk_interface()
        .branch_interface_id(&branch)
        .trunk_interface_id(&trunk)
        .vlan_id(9)
        .send()
        .await;
    assert_eq!(code(twice), "InvalidNetworkInterface.InUse");

    vpc.ec2
        .disassociate_trunk_interface()
        .association_id(&association_id)
        .send()
        .await
        .expect("DisassociateTrunkInterface");
    let after = vpc
        .ec2
        .describe_trunk_interface_associations()
        .send()
        .await
        .expect("DescribeTrunkInterfaceAssociations");
    assert!(after.interface_associations().is_empty());
    let again = vpc
        .ec2
        .disassociate_trunk_interface()
        .association_id(&association_id)
        .send()
        .await;
    assert_eq!(code(again), "InvalidAssociationID.NotFound");
    // The VLAN is free again.
    vpc.ec2
        .associate_trunk_interface()
        .branch_interface_id(&other)
        .trunk_interface_id(&trunk)
        .vlan_id(7)
        .send()
        .await
        .expect("VLAN 7 reused after the disassociation");
}

#[tokio::test]
async fn attach_refuses_in_use_enis_occupied_indexes_and_other_azs() {
    let vpc = Vpc::new().await;
    let subnet_a = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let subnet_b = vpc.subnet("10.0.2.0/24", "us-west-2b").await;
    let node = vpc.launch("m5.large", &subnet_a).await;
    let other = vpc.launch("m5.large", &subnet_a).await;
    let eni = vpc.eni(&subnet_a).await;
    vpc.attach(&eni, &node.id, 1).await;

    let in_use = vpc
        .ec2
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&other.id)
        .device_index(1)
        .send()
        .await;
    assert_eq!(code(in_use), "InvalidNetworkInterface.InUse");

    let second = vpc.eni(&subnet_a).await;
    let occupied = vpc
        .ec2
        .attach_network_interface()
        .network_interface_id(&second)
        .instance_id(&node.id)
        .device_index(1)
        .send()
        .await;
    assert_eq!(code(occupied), "InvalidParameterValue");
    assert_eq!(
        vpc.describe(&eni)
            .await
            .attachment()
            .and_then(|a| a.instance_id()),
        Some(node.id.as_str()),
        "the ENI already at that index stays attached"
    );

    let far = vpc.eni(&subnet_b).await;
    let other_az = vpc
        .ec2
        .attach_network_interface()
        .network_interface_id(&far)
        .instance_id(&node.id)
        .device_index(2)
        .send()
        .await;
    assert_eq!(code(other_az), "InvalidParameterCombination");
}

#[tokio::test]
async fn the_primary_eni_stays_and_attached_enis_cannot_be_deleted() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let node = vpc.launch("m5.large", &subnet).await;
    let detach_primary = vpc
        .ec2
        .detach_network_interface()
        .attachment_id(&node.primary_attachment)
        .send()
        .await;
    assert_eq!(code(detach_primary), "OperationNotPermitted");

    let eni = vpc.eni(&subnet).await;
    let attachment = vpc.attach(&eni, &node.id, 1).await;
    let delete_attached = vpc
        .ec2
        .delete_network_interface()
        .network_interface_id(&eni)
        .send()
        .await;
    assert_eq!(code(delete_attached), "InvalidNetworkInterface.InUse");
    let delete_primary = vpc
        .ec2
        .delete_network_interface()
        .network_interface_id(&node.primary_eni)
        .send()
        .await;
    assert_eq!(code(delete_primary), "InvalidNetworkInterface.InUse");

    vpc.ec2
        .detach_network_interface()
        .attachment_id(&attachment)
        .send()
        .await
        .expect("DetachNetworkInterface (secondary)");
    vpc.ec2
        .delete_network_interface()
        .network_interface_id(&eni)
        .send()
        .await
        .expect("DeleteNetworkInterface once detached");
}

#[tokio::test]
async fn unknown_security_groups_are_refused() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let missing = "sg-0123456789abcdef0";
    let create = vpc
        .ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .groups(missing)
        .send()
        .await;
    assert_eq!(code(create), "InvalidGroup.NotFound");

    let eni = vpc.eni(&subnet).await;
    let modify = vpc
        .ec2
        .modify_network_interface_attribute()
        .network_interface_id(&eni)
        .groups(&vpc.sg)
        .groups(missing)
        .send()
        .await;
    assert_eq!(code(modify), "InvalidGroup.NotFound");
    let groups: Vec<_> = vpc
        .describe(&eni)
        .await
        .groups()
        .iter()
        .filter_map(|g| g.group_id().map(str::to_owned))
        .collect();
    assert_eq!(
        groups,
        vec![vpc.sg.clone()],
        "a refused change changes nothing"
    );

    let lookup = vpc
        .ec2
        .describe_security_groups()
        .group_ids(missing)
        .send()
        .await;
    assert_eq!(
        code(lookup),
        "InvalidGroup.NotFound",
        "no group was made up on the way"
    );
}

#[tokio::test]
async fn delete_on_termination_set_by_modify_is_honoured() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let node = vpc.launch("m5.large", &subnet).await;
    let doomed = vpc.eni(&subnet).await;
    let doomed_attachment = vpc.attach(&doomed, &node.id, 1).await;
    let kept = vpc.eni(&subnet).await;
    vpc.attach(&kept, &node.id, 2).await;
    vpc.ec2
        .modify_network_interface_attribute()
        .network_interface_id(&doomed)
        .attachment(
            NetworkInterfaceAttachmentChanges::builder()
                .attachment_id(&doomed_attachment)
                .delete_on_termination(true)
                .build(),
        )
        .send()
        .await
        .expect("ModifyNetworkInterfaceAttribute (DeleteOnTermination)");
    assert_eq!(
        vpc.describe(&doomed)
            .await
            .attachment()
            .and_then(|a| a.delete_on_termination()),
        Some(true)
    );

    vpc.ec2
        .terminate_instances()
        .instance_ids(&node.id)
        .send()
        .await
        .expect("TerminateInstances");

    for gone in [&doomed, &node.primary_eni] {
        let lookup = vpc
            .ec2
            .describe_network_interfaces()
            .network_interface_ids(gone)
            .send()
            .await;
        assert_eq!(
            code(lookup),
            "InvalidNetworkInterfaceID.NotFound",
            "{gone} is deleted with the instance"
        );
    }
    let kept = vpc.describe(&kept).await;
    assert_eq!(kept.status(), Some(&NetworkInterfaceStatus::Available));
    assert!(kept.attachment().is_none(), "{kept:?} is detached");
}

#[tokio::test]
async fn describe_network_interfaces_filters_and_pages() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let elsewhere = vpc.subnet("10.0.2.0/24", "us-west-2a").await;
    let node = vpc.launch("m5.large", &subnet).await;
    let attached = vpc.eni(&subnet).await;
    vpc.attach(&attached, &node.id, 1).await;
    let mut loose = Vec::new();
    for _ in 0..10 {
        loose.push(vpc.eni(&elsewhere).await);
    }
    let tagged = vpc
        .ec2
        .create_network_interface()
        .subnet_id(&elsewhere)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::NetworkInterface)
                .tags(Tag::builder().key("role").value("spare").build())
                .build(),
        )
        .send()
        .await
        .expect("CreateNetworkInterface (tagged)")
        .network_interface
        .and_then(|n| n.network_interface_id)
        .expect("an ENI id");
    loose.push(tagged.clone());

    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let filter = |name: &str, value: &str| Filter::builder().name(name).values(value).build();

    assert_eq!(
        eni_ids(&vpc, filter("attachment.status", "attached")).await,
        sorted(vec![node.primary_eni.clone(), attached.clone()])
    );
    assert_eq!(
        eni_ids(&vpc, filter("attachment.status", "detached")).await,
        sorted(loose.clone())
    );
    assert_eq!(
        eni_ids(&vpc, filter("attachment.instance-id", &node.id)).await,
        sorted(vec![node.primary_eni.clone(), attached.clone()])
    );
    assert_eq!(
        eni_ids(&vpc, filter("tag:role", "spare")).await,
        vec![tagged.clone()]
    );
    assert_eq!(
        eni_ids(&vpc, filter("subnet-id", &elsewhere)).await,
        sorted(loose.clone())
    );
    let unknown = vpc
        .ec2
        .describe_network_interfaces()
        .filters(filter("no-such-filter", "x"))
        .send()
        .await;
    assert_eq!(code(unknown), "InvalidParameterValue");

    // Paging: 5 per page over this VPC's 13 ENIs (the default VPC's are filtered out).
    let mut pages = vpc
        .ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("vpc-id").values(&vpc.id).build())
        .max_results(5)
        .into_paginator()
        .send();
    let mut seen = Vec::new();
    let mut page_sizes = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.expect("a page");
        page_sizes.push(page.network_interfaces().len());
        seen.extend(
            page.network_interfaces()
                .iter()
                .filter_map(|n| n.network_interface_id().map(str::to_owned)),
        );
    }
    assert_eq!(page_sizes, vec![5, 5, 3], "pages of MaxResults");
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), 13, "every ENI once: {seen:?}");
}

#[tokio::test]
async fn unimplemented_actions_answer_with_an_ec2_error_code() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let eni = vpc.eni(&subnet).await;
    // Not in moto at all.
    let ipam = vpc.ec2.describe_ipam_pools().send().await;
    assert_eq!(code(ipam), "InvalidAction");
    // In moto's routing, but it raises NotImplementedError.
    let reset = vpc
        .ec2
        .reset_network_interface_attribute()
        .network_interface_id(&eni)
        .source_dest_check("true")
        .send()
        .await;
    assert_eq!(code(reset), "UnsupportedOperation");
    let calls = vpc.emulator.calls();
    assert_eq!(
        calls.get("DescribeIpamPools"),
        Some(&1),
        "a 4xx is not retried"
    );
    assert_eq!(calls.get("ResetNetworkInterfaceAttribute"), Some(&1));
}

#[tokio::test]
async fn faults_fail_the_next_calls_with_the_armed_code() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let eni = vpc.eni(&subnet).await;
    vpc.emulator.fault(&Fault {
        action: "AssignPrivateIpAddresses".into(),
        code: Some("UnauthorizedOperation".into()),
        status: 403,
        count: 2,
        latency_ms: 0,
        cut: false,
    });
    let assign = || {
        vpc.ec2
            .assign_private_ip_addresses()
            .network_interface_id(&eni)
            .secondary_private_ip_address_count(1)
            .send()
    };
    assert_eq!(code(assign().await), "UnauthorizedOperation");
    assert_eq!(code(assign().await), "UnauthorizedOperation");
    assign().await.expect("the third call goes through");
    assert_eq!(
        vpc.emulator.calls().get("AssignPrivateIpAddresses"),
        Some(&3)
    );
    assert_eq!(
        addresses(&vpc.describe(&eni).await).len(),
        2,
        "faulted calls change nothing"
    );

    vpc.emulator.fault(&Fault {
        action: "AssignPrivateIpAddresses".into(),
        code: Some("UnauthorizedOperation".into()),
        status: 403,
        count: 5,
        latency_ms: 0,
        cut: false,
    });
    vpc.emulator.clear_faults();
    assign().await.expect("no fault after DELETE /_lab/faults");
}

#[tokio::test]
async fn throttling_is_retried_by_the_sdk() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let eni = vpc.eni(&subnet).await;
    vpc.emulator.fault(&Fault {
        action: "AssignPrivateIpAddresses".into(),
        code: Some("RequestLimitExceeded".into()),
        status: 503,
        count: 1,
        latency_ms: 0,
        cut: false,
    });
    vpc.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(1)
        .send()
        .await
        .expect("the SDK retries the throttled call");
    assert_eq!(
        vpc.emulator.calls().get("AssignPrivateIpAddresses"),
        Some(&2)
    );

    // More throttling than the SDK's 3 attempts: the code comes through.
    vpc.emulator.fault(&Fault {
        action: "AssignPrivateIpAddresses".into(),
        code: Some("RequestLimitExceeded".into()),
        status: 503,
        count: 3,
        latency_ms: 0,
        cut: false,
    });
    let throttled = vpc
        .ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(1)
        .send()
        .await;
    assert_eq!(code(throttled), "RequestLimitExceeded");
    assert_eq!(
        vpc.emulator.calls().get("AssignPrivateIpAddresses"),
        Some(&5)
    );
}

#[tokio::test]
async fn latency_faults_only_delay() {
    let vpc = Vpc::new().await;
    vpc.emulator.fault(&Fault {
        action: "DescribeVpcs".into(),
        code: None,
        status: 200,
        count: 1,
        latency_ms: 400,
        cut: false,
    });
    let started = Instant::now();
    vpc.ec2
        .describe_vpcs()
        .send()
        .await
        .expect("a delayed call succeeds");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let started = Instant::now();
    vpc.ec2.describe_vpcs().send().await.expect("DescribeVpcs");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "only the next `count` calls are delayed"
    );
}

#[tokio::test]
async fn the_view_follows_the_api() {
    let vpc = Vpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let node = vpc.launch("m5.large", &subnet).await;
    let eni = vpc.eni(&subnet).await;
    let attachment = vpc.attach(&eni, &node.id, 1).await;
    vpc.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefix_count(1)
        .send()
        .await
        .expect("a prefix");
    let described = vpc.describe(&eni).await;

    let view = vpc.emulator.view();
    let in_view = view["enis"]
        .as_array()
        .expect("enis")
        .iter()
        .find(|e| e["id"] == eni.as_str())
        .expect("the ENI in the view")
        .clone();
    assert_eq!(in_view["mac"], described.mac_address().expect("a MAC"));
    assert_eq!(in_view["vpc_id"], vpc.id.as_str());
    assert_eq!(in_view["subnet_id"], subnet.as_str());
    assert_eq!(in_view["instance_id"], node.id.as_str());
    assert_eq!(in_view["device_index"], 1);
    assert_eq!(in_view["network_card"], 0);
    assert_eq!(in_view["attachment_id"], attachment.as_str());
    assert_eq!(in_view["interface_type"], "interface");
    assert_eq!(
        in_view["private_ips"],
        serde_json::json!(addresses(&described))
    );
    assert_eq!(in_view["prefixes"], serde_json::json!(prefixes(&described)));
    assert_eq!(in_view["security_groups"], serde_json::json!([vpc.sg]));
    assert_eq!(in_view["delete_on_termination"], false);
    assert!(in_view["trunk_eni_id"].is_null() && in_view["vlan"].is_null());

    let instance = view["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["id"] == node.id.as_str())
        .expect("the instance in the view");
    assert_eq!(instance["type"], "m5.large");
    assert_eq!(instance["az"], "us-west-2a");
    assert_eq!(instance["region"], "us-west-2");
    assert_eq!(instance["state"], "running");
    assert_eq!(instance["primary_eni"], node.primary_eni.as_str());
    let subnet_view = view["subnets"]
        .as_array()
        .expect("subnets")
        .iter()
        .find(|s| s["id"] == subnet.as_str())
        .expect("the subnet in the view");
    assert_eq!(subnet_view["cidr"], "10.0.1.0/24");
    assert_eq!(subnet_view["gateway"], "10.0.1.1");
    assert_eq!(subnet_view["az"], "us-west-2a");
    let vpc_view = view["vpcs"]
        .as_array()
        .expect("vpcs")
        .iter()
        .find(|v| v["id"] == vpc.id.as_str())
        .expect("the VPC in the view");
    assert_eq!(vpc_view["cidrs"], serde_json::json!(["10.0.0.0/16"]));
    assert!(view["security_groups"]
        .as_array()
        .expect("security_groups")
        .iter()
        .any(|g| g["id"] == vpc.sg.as_str() && g["name"] == "lab"));
}

#[tokio::test]
async fn the_emulator_starts_quickly_and_stops_with_its_owner() {
    let started = Instant::now();
    let emulator = Emulator::start(None);
    let took = started.elapsed();
    eprintln!("emulator ready in {took:?}");
    assert!(took < Duration::from_secs(20), "ready in {took:?}");
    let pid = emulator.pid();
    // Ready means warm: the first API call does not pay moto's set-up.
    let first = Instant::now();
    emulator
        .ec2()
        .describe_network_interfaces()
        .send()
        .await
        .expect("DescribeNetworkInterfaces");
    assert!(
        first.elapsed() < Duration::from_secs(1),
        "first call took {:?}",
        first.elapsed()
    );
    drop(emulator);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the emulator (pid {pid}) is gone once dropped"
    );
}

/// A test that dies (a panic that skips drops, a SIGKILL) leaves no emulator behind: it exits
/// when the process that started it does.
#[test]
fn the_emulator_exits_when_its_owner_dies() {
    use std::io::BufRead;
    let python = eniflow_tests::lab::emulator::venv().join("bin/python");
    let script = eniflow_tests::agent::workspace().join("tests/lab/emulator/emulator.py");
    let port_file =
        std::env::temp_dir().join(format!("{}.port", eniflow_tests::unique_name("owner")));
    // The owner: a shell that starts the emulator, says its pid, and waits for it.
    let mut owner = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#""$0" "$1" --port-file "$2" & echo $!; wait"#)
        .arg(&python)
        .arg(&script)
        .arg(&port_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the owner");
    let mut line = String::new();
    std::io::BufReader::new(owner.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: u32 = line.trim().parse().expect("the emulator's pid");
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !port_file.exists() {
        assert!(alive(), "the emulator exited before it was ready");
        assert!(Instant::now() < deadline, "the emulator was not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    owner.kill().unwrap();
    owner.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() {
        if Instant::now() >= deadline {
            // Ours to clean up, by pid, before failing.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the emulator (pid {pid}) outlived its owner");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&port_file);
}
