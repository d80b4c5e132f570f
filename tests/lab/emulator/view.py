"""The lab's network view, built live from moto's EC2 backend (what the fabric and IMDS follow)."""

import ipaddress

import ec2_patches


def _subnets(backend):
    for per_zone in list(backend.subnets.values()):
        yield from list(per_zone.values())


def _instances(backend):
    for reservation in list(backend.reservations.values()):
        yield from list(reservation.instances)


def build(backend):
    vpcs = []
    for vpc in list(backend.vpcs.values()):
        cidrs = [
            c["cidr_block"]
            for c in vpc.get_cidr_block_association_set(ipv6=False)
            if (c.get("cidr_block_state") or {}).get("state", "associated") == "associated"
        ]
        vpcs.append({"id": vpc.id, "cidrs": cidrs, "is_default": bool(vpc.is_default)})

    default_vpcs = {v["id"] for v in vpcs if v["is_default"]}
    subnets = []
    for subnet in _subnets(backend):
        if not subnet.cidr_block:
            continue
        net = ipaddress.IPv4Network(subnet.cidr_block)
        subnets.append(
            {
                "id": subnet.id,
                "vpc_id": subnet.vpc_id,
                "cidr": subnet.cidr_block,
                "az": subnet.availability_zone,
                "gateway": str(net.network_address + 1),
                "tags": dict(backend.tags.get(subnet.id, {})),
                "is_default": subnet.vpc_id in default_vpcs,
            }
        )

    groups = []
    for vpc_id, per_vpc in list(backend.groups.items()):
        for group in list(per_vpc.values()):
            groups.append({"id": group.id, "vpc_id": group.vpc_id or vpc_id, "name": group.name})

    instances = []
    for instance in _instances(backend):
        instances.append(
            {
                "id": instance.id,
                "type": instance.instance_type,
                "az": instance.placement.zone,
                "region": backend.region_name,
                "state": instance.state,
                "primary_eni": ec2_patches.instance_primary_eni(instance),
            }
        )

    enis = []
    for eni in list(backend.enis.values()):
        attached = eni.instance is not None
        assoc = ec2_patches.branch_association(backend, eni.id)
        enis.append(
            {
                "id": eni.id,
                "mac": eni.mac_address,
                "vpc_id": eni.subnet.vpc_id,
                "subnet_id": eni.subnet.id,
                "instance_id": eni.instance.id if attached else None,
                "device_index": eni.device_index if attached else None,
                "network_card": ec2_patches.eni_card(eni) if attached else 0,
                "attachment_id": eni.attachment_id if attached else None,
                "interface_type": ec2_patches.eni_interface_type(eni),
                "private_ips": [a["PrivateIpAddress"] for a in eni.private_ip_addresses],
                "prefixes": ec2_patches.eni_prefixes(eni),
                "security_groups": [g.id for g in eni.group_set],
                "trunk_eni_id": assoc["TrunkInterfaceId"] if assoc else None,
                "vlan": assoc.get("VlanId") if assoc else None,
                "delete_on_termination": bool(eni.delete_on_termination),
            }
        )

    return {
        "vpcs": vpcs,
        "subnets": subnets,
        "security_groups": groups,
        "instances": instances,
        "enis": enis,
    }
