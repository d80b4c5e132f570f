"""Where moto 5.2.5 is not EC2, make it EC2 (for what a CNI touches).

`apply()` patches moto's ENI, subnet and instance models and its EC2 response class in place.
Everything here leans on moto internals: moto is pinned (requirements.txt) for that reason.

What changes (see /work/shared/notes/ec2-emulator.md for moto's own behaviour):
- Subnet addresses: one allocator derived from the ENIs' live addresses and prefixes; unique,
  never the first 4 nor the last address; InsufficientFreeAddressesInSubnet when full;
  AvailableIpAddressCount exact (a prefix uses 16) and never negative.
- Prefix delegation (Ipv4Prefixes / Ipv4PrefixCount) on Create/Assign/Unassign: free, aligned
  /28s; InsufficientCidrBlocks when none is left.
- Per instance-type limits: ENIs per network card (AttachmentLimitExceeded, also on
  RunInstances), IPv4 addresses per ENI with each prefix counting as one
  (PrivateIpAddressLimitExceeded).
- Trunk ENIs (InterfaceType=trunk) and Associate/Describe/DisassociateTrunkInterface.
- Attach/detach/delete guards, unknown security groups, DeleteOnTermination through
  ModifyNetworkInterfaceAttribute and on TerminateInstances, DescribeNetworkInterfaces filters
  and paging.
"""

import base64
import fnmatch
import ipaddress
import json

from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.elastic_network_interfaces import (
    Attachment,
    NetworkInterface,
    NetworkInterfaceBackend,
)
from moto.ec2.models.instance_types import INSTANCE_TYPES
from moto.ec2.models.instances import Instance, InstanceBackend
from moto.ec2.models.subnets import Subnet
from moto.ec2.responses import EC2Response
from moto.ec2.utils import add_tag_specification, random_mac_address, random_resource_id

PREFIX_LEN = 28
PREFIX_SIZE = 16


def ec2_error(code, message):
    return EC2ClientError(code, message)


# ---------------------------------------------------------------------------------------------
# Instance-type limits


def _network_info(instance_type):
    info = INSTANCE_TYPES.get(instance_type)
    if not info:
        return None
    return info.get("NetworkInfo")


def _card_limit(instance, card):
    info = _network_info(instance.instance_type)
    if info is None:
        return None
    for entry in info.get("NetworkCards") or []:
        if entry.get("NetworkCardIndex") == card:
            return entry.get("MaximumNetworkInterfaces")
    if card == 0:
        return info.get("MaximumNetworkInterfaces")
    return 0


def _card_count(instance_type):
    info = _network_info(instance_type)
    if info is None:
        return 1
    return max(1, len(info.get("NetworkCards") or []))


def _ipv4_limit(instance):
    info = _network_info(instance.instance_type)
    if info is None:
        return None
    return info.get("Ipv4AddressesPerInterface")


# ---------------------------------------------------------------------------------------------
# ENI state kept beside moto's


def _prefixes(eni):
    return list(getattr(eni, "_lab_prefixes", ()))


def _card(eni):
    return getattr(eni, "_lab_card", 0)


def _addresses(eni):
    return [a["PrivateIpAddress"] for a in eni.private_ip_addresses]


def _ipv4_used(eni):
    """What counts toward Ipv4AddressesPerInterface: each address, and each prefix as one."""
    return len(eni.private_ip_addresses) + len(_prefixes(eni))


def _trunk_assocs(backend):
    if not hasattr(backend, "_lab_trunk_assocs"):
        backend._lab_trunk_assocs = {}
    return backend._lab_trunk_assocs


def branch_association(backend, eni_id):
    for assoc in _trunk_assocs(backend).values():
        if assoc["BranchInterfaceId"] == eni_id:
            return assoc
    return None


def trunk_associations(backend):
    return list(_trunk_assocs(backend).values())


def _interface_type(eni):
    if branch_association(eni.ec2_backend, eni.id) is not None:
        return "branch"
    return getattr(eni, "_lab_type", "interface")


# ---------------------------------------------------------------------------------------------
# Subnet addresses: derived from the ENIs, so nothing can leak or double-count


def _net(subnet):
    return ipaddress.IPv4Network(subnet.cidr_block)


def _reserved(subnet):
    net = _net(subnet)
    base = int(net.network_address)
    last = int(net.broadcast_address)
    return {base, base + 1, base + 2, base + 3, last}


def _used(subnet):
    used = set()
    for eni in list(subnet.ec2_backend.enis.values()):
        if eni.subnet is None or eni.subnet.id != subnet.id:
            continue
        for address in _addresses(eni):
            used.add(int(ipaddress.IPv4Address(address)))
        for prefix in _prefixes(eni):
            start = int(ipaddress.IPv4Network(prefix).network_address)
            used.update(range(start, start + PREFIX_SIZE))
    return used


def _available_count(subnet):
    net = _net(subnet)
    reserved = _reserved(subnet)
    usable = net.num_addresses - len(reserved)
    taken = sum(
        1
        for a in _used(subnet)
        if int(net.network_address) <= a <= int(net.broadcast_address) and a not in reserved
    )
    return max(0, usable - taken)


def _allocate_addresses(subnet, count, taken=()):
    """The `count` lowest free addresses of the subnet, or InsufficientFreeAddressesInSubnet."""
    if count <= 0:
        return []
    net = _net(subnet)
    blocked = _used(subnet) | _reserved(subnet) | {int(ipaddress.IPv4Address(a)) for a in taken}
    found = []
    for value in range(int(net.network_address), int(net.broadcast_address) + 1):
        if value not in blocked:
            found.append(str(ipaddress.IPv4Address(value)))
            if len(found) == count:
                return found
    raise ec2_error(
        "InsufficientFreeAddressesInSubnet",
        f"There are not enough free addresses in subnet '{subnet.id}' to satisfy the requested "
        "number of instances.",
    )


def _allocate_prefixes(subnet, count, taken=()):
    """The `count` lowest free aligned /28s of the subnet, or InsufficientCidrBlocks."""
    if count <= 0:
        return []
    net = _net(subnet)
    blocked = _used(subnet) | _reserved(subnet)
    for prefix in taken:
        start = int(ipaddress.IPv4Network(prefix).network_address)
        blocked.update(range(start, start + PREFIX_SIZE))
    found = []
    if net.prefixlen <= PREFIX_LEN:
        for candidate in net.subnets(new_prefix=PREFIX_LEN):
            start = int(candidate.network_address)
            if not any(v in blocked for v in range(start, start + PREFIX_SIZE)):
                found.append(str(candidate))
                if len(found) == count:
                    return found
    raise ec2_error(
        "InsufficientCidrBlocks",
        f"The specified subnet '{subnet.id}' does not have enough contiguous free address space "
        "to satisfy the request.",
    )


def _check_address(subnet, address, taken=()):
    try:
        value = int(ipaddress.IPv4Address(address))
    except ValueError:
        raise ec2_error("InvalidParameterValue", f"Invalid IPv4 address: {address}")
    net = _net(subnet)
    if not int(net.network_address) <= value <= int(net.broadcast_address):
        raise ec2_error(
            "InvalidParameterValue",
            f"Address {address} does not fall within the subnet's address range",
        )
    if value in _reserved(subnet):
        raise ec2_error(
            "InvalidParameterValue",
            f"Address {address} is in subnet's reserved address range",
        )
    if value in _used(subnet) or address in taken:
        raise ec2_error("InvalidIPAddress.InUse", f"Address {address} is in use.")
    return address


def _check_prefix(subnet, prefix, taken=()):
    try:
        net = ipaddress.IPv4Network(prefix, strict=True)
    except ValueError:
        raise ec2_error("InvalidParameterValue", f"Invalid IPv4 prefix: {prefix}")
    if net.prefixlen != PREFIX_LEN:
        raise ec2_error(
            "InvalidParameterValue", f"Invalid prefix length for {prefix}: only /28 is supported"
        )
    if not net.subnet_of(_net(subnet)):
        raise ec2_error(
            "InvalidParameterValue", f"Prefix {prefix} does not fall within the subnet's range"
        )
    blocked = _used(subnet) | _reserved(subnet)
    for other in taken:
        start = int(ipaddress.IPv4Network(other).network_address)
        blocked.update(range(start, start + PREFIX_SIZE))
    start = int(net.network_address)
    if any(v in blocked for v in range(start, start + PREFIX_SIZE)):
        raise ec2_error("InvalidParameterValue", f"Prefix {prefix} is already in use")
    return str(net)


def _subnet_get_available_ip(self, instance):
    # The caller (RunInstances) puts the address on an ENI right away.
    return _allocate_addresses(self, 1)[0]


def _subnet_request_ip(self, ip, instance):
    _check_address(self, ip)


def _subnet_del_ip(self, ip):
    pass


# ---------------------------------------------------------------------------------------------
# Security groups


def _groups(backend, group_ids):
    groups = []
    for group_id in group_ids or []:
        group = backend.get_security_group_from_id(group_id)
        if group is None:
            raise ec2_error(
                "InvalidGroup.NotFound", f"The security group '{group_id}' does not exist"
            )
        if group not in groups:
            groups.append(group)
    return groups


# ---------------------------------------------------------------------------------------------
# ENI creation

_orig_create_eni = NetworkInterfaceBackend.create_network_interface


def _as_str(item, key):
    return item.get(key) if isinstance(item, dict) else item


def _unique_mac(backend):
    macs = {eni.mac_address for eni in backend.enis.values()}
    while True:
        mac = random_mac_address()
        if mac not in macs:
            return mac


def _create_network_interface(
    self,
    subnet,
    private_ip_address,
    private_ip_addresses=None,
    group_ids=None,
    description=None,
    tags=None,
    delete_on_termination=False,
    **kwargs,
):
    if isinstance(subnet, str):
        subnet = self.get_subnet(subnet)
    if group_ids:
        _groups(self, group_ids)
    if isinstance(private_ip_address, list):
        private_ip_address = private_ip_address[0] if private_ip_address else None
    explicit = []  # (address, primary)
    for item in private_ip_addresses or []:
        if isinstance(item, dict):
            explicit.append((item.get("PrivateIpAddress"), bool(item.get("Primary"))))
        else:
            explicit.append((item, False))
    primary = private_ip_address
    if primary is None:
        primary = next((a for a, p in explicit if p), None)
    secondaries = [a for a, _ in explicit if a != primary]
    taken = []
    if primary is not None:
        taken.append(_check_address(subnet, primary))
    for address in secondaries:
        taken.append(_check_address(subnet, address, taken))
    if primary is None:
        primary = _allocate_addresses(subnet, 1, taken)[0]
        taken.append(primary)
    count = int(kwargs.pop("secondary_ips_count", None) or 0)
    secondaries += _allocate_addresses(subnet, count, taken)
    prefixes = [
        _check_prefix(subnet, _as_str(p, "Ipv4Prefix"), []) for p in kwargs.pop("ipv4_prefixes", None) or []
    ]
    if len(set(prefixes)) != len(prefixes):
        raise ec2_error("InvalidParameterValue", "Duplicate prefixes in the request")
    prefixes += _allocate_prefixes(subnet, int(kwargs.pop("ipv4_prefix_count", None) or 0), prefixes)
    interface_type = kwargs.pop("interface_type", None) or "interface"
    addresses = [{"Primary": True, "PrivateIpAddress": primary}] + [
        {"Primary": False, "PrivateIpAddress": a} for a in secondaries
    ]
    eni = _orig_create_eni(
        self,
        subnet,
        primary,
        addresses,
        group_ids=group_ids,
        description=description,
        tags=tags,
        delete_on_termination=delete_on_termination,
        **kwargs,
    )
    eni.mac_address = _unique_mac(self)
    eni._lab_prefixes = prefixes
    eni._lab_type = interface_type
    eni._lab_card = 0
    return eni


def _delete_network_interface(self, eni_id):
    eni = self.enis.get(eni_id)
    if eni is None:
        raise ec2_error(
            "InvalidNetworkInterfaceID.NotFound",
            f"The networkInterface ID '{eni_id}' does not exist",
        )
    if eni.instance is not None:
        raise ec2_error(
            "InvalidNetworkInterface.InUse",
            f"The network interface '{eni_id}' is currently in use.",
        )
    assocs = _trunk_assocs(self)
    for assoc_id, assoc in list(assocs.items()):
        if eni_id in (assoc["BranchInterfaceId"], assoc["TrunkInterfaceId"]):
            del assocs[assoc_id]
    del self.enis[eni_id]


def _eni_delete(self):
    # Used by TerminateInstances for DeleteOnTermination: the addresses go with the ENI.
    if self.instance is not None and self.instance.nics.get(self.device_index) is self:
        self.instance.nics.pop(self.device_index, None)
    self.instance = None
    self.attachment_id = None
    self.device_index = None
    self.status = "available"
    if self.id in self.ec2_backend.enis:
        _delete_network_interface(self.ec2_backend, self.id)


# ---------------------------------------------------------------------------------------------
# Attach / detach


def _attach_checks(instance, eni, device_index, card):
    if instance.state in ("terminated", "shutting-down", "stopping"):
        raise ec2_error(
            "IncorrectInstanceState",
            f"The instance '{instance.id}' is not in a valid state for this operation.",
        )
    if eni.instance is not None or branch_association(eni.ec2_backend, eni.id) is not None:
        raise ec2_error(
            "InvalidNetworkInterface.InUse",
            f"Interface: [{eni.id}] in use.",
        )
    if eni.subnet.availability_zone != instance.placement.zone:
        raise ec2_error(
            "InvalidParameterCombination",
            "You may not attach a network interface to an instance if they are not in the same "
            "availability zone",
        )
    if device_index is None or device_index < 0:
        raise ec2_error("InvalidParameterValue", f"Invalid value '{device_index}' for deviceIndex")
    if card < 0 or card >= _card_count(instance.instance_type):
        raise ec2_error(
            "InvalidParameterValue",
            f"Invalid value '{card}' for networkCardIndex: '{instance.instance_type}' has "
            f"{_card_count(instance.instance_type)} network card(s)",
        )
    for other in instance.nics.values():
        if other.device_index == device_index and _card(other) == card:
            raise ec2_error(
                "InvalidParameterValue",
                f"Instance '{instance.id}' already has an interface attached at device index "
                f"'{device_index}'.",
            )
    limit = _card_limit(instance, card)
    on_card = sum(1 for other in instance.nics.values() if _card(other) == card)
    if limit is not None and on_card + 1 > limit:
        raise ec2_error(
            "AttachmentLimitExceeded",
            f"Interface count {on_card + 1} exceeds the limit for {instance.instance_type}",
        )
    ipv4 = _ipv4_limit(instance)
    if ipv4 is not None and _ipv4_used(eni) > ipv4:
        raise ec2_error(
            "PrivateIpAddressLimitExceeded",
            f"Number of private addresses will exceed limit for {instance.instance_type}",
        )


def _instance_attach_eni(self, eni, device_index):
    # moto keys nics by device index; with several network cards we key the rest uniquely.
    device_index = int(device_index)
    key = device_index if _card(eni) == 0 else (_card(eni), device_index)
    self.nics[key] = eni
    eni.instance = self
    eni.attachment_id = "eni-attach-" + random_resource_id(17)
    from moto.core.utils import utcnow

    eni.attach_time = utcnow()
    eni.status = "in-use"
    eni.device_index = device_index
    return eni.attachment_id


def _instance_detach_eni(self, eni):
    for key, value in list(self.nics.items()):
        if value is eni:
            del self.nics[key]
    eni.instance = None
    eni.attachment_id = None
    eni.attach_time = None
    eni.status = "available"
    eni.device_index = None
    eni._lab_card = 0


def _attach_network_interface(self, eni_id, instance_id, device_index, network_card_index=0):
    eni = self.get_network_interface(eni_id)
    instance = self.get_instance(instance_id)
    device_index = int(device_index) if device_index is not None else None
    card = int(network_card_index or 0)
    _attach_checks(instance, eni, device_index, card)
    eni._lab_card = card
    eni.delete_on_termination = False
    instance.attach_eni(eni, device_index)
    return eni.attachment


def _detach_network_interface(self, attachment_id, force=False):
    for eni in self.enis.values():
        if eni.attachment_id == attachment_id:
            if eni.device_index == 0 and _card(eni) == 0:
                raise ec2_error(
                    "OperationNotPermitted",
                    "The network interface at device index 0 cannot be detached.",
                )
            eni.instance.detach_eni(eni)
            return
    raise ec2_error(
        "InvalidAttachmentID.NotFound",
        f"The attachment ID '{attachment_id}' does not exist",
    )


def _attachment_init(self, eni):
    _orig_attachment_init(self, eni)
    self.network_card_index = _card(eni)


_orig_attachment_init = Attachment.__init__


# ---------------------------------------------------------------------------------------------
# Instances


_orig_run_instances = InstanceBackend.run_instances
_orig_terminate = Instance.terminate


def _run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
    instance_type = kwargs.get("instance_type") or "m1.small"
    nics = kwargs.get("nics") or []
    info = _network_info(instance_type)
    if info is not None:
        per_card = {}
        for nic in nics or [{"DeviceIndex": 0}]:
            card = int(nic.get("NetworkCardIndex") or 0)
            per_card[card] = per_card.get(card, 0) + 1
        fake = type("T", (), {"instance_type": instance_type})()
        for card, wanted in per_card.items():
            limit = _card_limit(fake, card)
            if limit is not None and wanted > limit:
                raise ec2_error(
                    "AttachmentLimitExceeded",
                    f"Interface count {wanted} exceeds the limit for {instance_type}",
                )
    for nic in nics:
        if nic.get("Groups"):
            _groups(self, nic["Groups"])
        if nic.get("NetworkInterfaceId"):
            eni = self.get_network_interface(nic["NetworkInterfaceId"])
            if eni.instance is not None or branch_association(self, eni.id) is not None:
                raise ec2_error(
                    "InvalidNetworkInterface.InUse", f"Interface: [{eni.id}] in use."
                )
    before_enis = set(self.enis)
    before_reservations = set(self.reservations)
    try:
        reservation = _orig_run_instances(
            self, image_id, count, user_data, security_group_names, **kwargs
        )
    except Exception:
        # Leave nothing half-launched behind (e.g. the subnet filled up on the 3rd instance).
        for rid in set(self.reservations) - before_reservations:
            del self.reservations[rid]
        for eni_id in set(self.enis) - before_enis:
            self.enis.pop(eni_id, None)
        raise
    explicit_dot = {}
    for nic in nics:
        if "DeleteOnTermination" in nic:
            explicit_dot[int(nic.get("DeviceIndex") or 0)] = bool(nic["DeleteOnTermination"])
    for instance in reservation.instances:
        for eni in instance.nics.values():
            if eni.id not in before_enis:
                # EC2: an interface created by the launch goes with the instance unless told not to.
                eni.delete_on_termination = explicit_dot.get(eni.device_index, True)
            else:
                eni.delete_on_termination = explicit_dot.get(eni.device_index, False)
    return reservation


def _terminate(self):
    for eni in list(self.nics.values()):
        keep = not eni.delete_on_termination
        self.detach_eni(eni)
        if not keep:
            _eni_delete(eni)
    return _orig_terminate(self)


def _nic0(self):
    return self.nics.get(0)


def _private_ip(self):
    nic = _nic0(self)
    return nic.private_ip_address if nic is not None else None


def _private_dns_name(self):
    address = _private_ip(self)
    if address is None:
        return ""
    formatted = address.replace(".", "-")
    if self.region_name == "us-east-1":
        return f"ip-{formatted}.ec2.internal"
    return f"ip-{formatted}.{self.region_name}.compute.internal"


def _public_ip(self):
    nic = _nic0(self)
    return nic.public_ip if nic is not None else None


# ---------------------------------------------------------------------------------------------
# Assign / unassign


def _assign_private_ip_addresses(
    self, eni_id, private_ip_addresses=None, secondary_ips_count=None, prefixes=None,
    prefix_count=None,
):
    eni = self.get_network_interface(eni_id)
    private_ip_addresses = list(private_ip_addresses or [])
    prefixes = [_as_str(p, "Ipv4Prefix") for p in prefixes or []]
    secondary_ips_count = int(secondary_ips_count or 0)
    prefix_count = int(prefix_count or 0)
    if (private_ip_addresses or secondary_ips_count) and (prefixes or prefix_count):
        raise ec2_error(
            "InvalidParameterCombination",
            "Addresses and prefixes cannot be assigned in the same request.",
        )
    if private_ip_addresses and secondary_ips_count:
        raise ec2_error(
            "InvalidParameterCombination",
            "Specify either private IP addresses or a secondary private IP address count.",
        )
    if prefixes and prefix_count:
        raise ec2_error(
            "InvalidParameterCombination",
            "Specify either IPv4 prefixes or an IPv4 prefix count.",
        )
    if not (private_ip_addresses or secondary_ips_count or prefixes or prefix_count):
        raise ec2_error(
            "MissingParameter",
            "Either private IP addresses, a secondary private IP address count, IPv4 prefixes "
            "or an IPv4 prefix count must be specified.",
        )
    wanted = len(private_ip_addresses) + secondary_ips_count + len(prefixes) + prefix_count
    if eni.instance is not None:
        limit = _ipv4_limit(eni.instance)
        if limit is not None and _ipv4_used(eni) + wanted > limit:
            raise ec2_error(
                "PrivateIpAddressLimitExceeded",
                f"Number of private addresses will exceed limit for {eni.instance.instance_type}",
            )
    subnet = eni.subnet
    taken = []
    for address in private_ip_addresses:
        if address in _addresses(eni):
            continue
        taken.append(_check_address(subnet, address, taken))
    new_addresses = taken + _allocate_addresses(subnet, secondary_ips_count, taken)
    new_prefixes = []
    for prefix in prefixes:
        new_prefixes.append(_check_prefix(subnet, prefix, new_prefixes))
    new_prefixes += _allocate_prefixes(subnet, prefix_count, new_prefixes)
    eni.private_ip_addresses.extend(
        {"Primary": False, "PrivateIpAddress": a} for a in new_addresses
    )
    eni._lab_prefixes = _prefixes(eni) + new_prefixes
    return eni, new_addresses, new_prefixes


def _unassign_private_ip_addresses(self, eni_id, private_ip_address=None, prefixes=None):
    eni = self.get_network_interface(eni_id)
    addresses = list(private_ip_address or [])
    prefixes = [_as_str(p, "Ipv4Prefix") for p in prefixes or []]
    if not addresses and not prefixes:
        raise ec2_error(
            "MissingParameter", "Either private IP addresses or IPv4 prefixes must be specified."
        )
    current = _addresses(eni)
    for address in addresses:
        if address not in current:
            raise ec2_error(
                "InvalidParameterValue",
                f"Some of the specified addresses are not assigned to interface {eni.id}",
            )
        if address == eni.private_ip_address:
            raise ec2_error(
                "InvalidParameterValue",
                f"The primary private address {address} of interface {eni.id} cannot be "
                "unassigned",
            )
    owned = _prefixes(eni)
    for prefix in prefixes:
        if prefix not in owned:
            raise ec2_error(
                "InvalidParameterValue",
                f"Some of the specified prefixes are not assigned to interface {eni.id}",
            )
    eni.private_ip_addresses[:] = [
        a for a in eni.private_ip_addresses if a["PrivateIpAddress"] not in addresses
    ]
    eni._lab_prefixes = [p for p in owned if p not in prefixes]
    return eni


# ---------------------------------------------------------------------------------------------
# Modify attribute


def _modify_network_interface_attribute(
    self, eni_id, group_ids, source_dest_check=None, description=None, attachment=None
):
    eni = self.get_network_interface(eni_id)
    groups = _groups(self, group_ids) if group_ids else []
    if attachment:
        attachment_id = attachment.get("AttachmentId")
        if not attachment_id or attachment_id != eni.attachment_id:
            raise ec2_error(
                "InvalidAttachmentID.NotFound",
                f"The attachment ID '{attachment_id}' does not exist",
            )
    if groups:
        eni._group_set = groups
    if source_dest_check in (True, False):
        eni.source_dest_check = source_dest_check
    if description is not None:
        eni.description = description
    if attachment and "DeleteOnTermination" in attachment:
        eni.delete_on_termination = bool(attachment["DeleteOnTermination"])


# ---------------------------------------------------------------------------------------------
# DescribeNetworkInterfaces filters and paging


def _bool_text(value):
    return "true" if value else "false"


def _eni_filter_value(self, filter_name, method_name=None):
    attachment = self.attachment
    if filter_name in ("network-interface-id",):
        return self.id
    if filter_name in ("addresses.private-ip-address", "private-ip-address"):
        return _addresses(self)
    if filter_name == "addresses.primary":
        return ["true"] + ["false"] * (len(self.private_ip_addresses) - 1)
    if filter_name in ("ipv4-prefix", "ipv4-prefixes.ipv4-prefix"):
        return _prefixes(self)
    if filter_name == "subnet-id":
        return self.subnet.id
    if filter_name == "vpc-id":
        return self.subnet.vpc_id
    if filter_name in ("group-id", "group-name"):
        groups = list(self.group_set)
        if filter_name == "group-id":
            return [g.id for g in groups]
        return [g.name for g in groups]
    if filter_name == "availability-zone":
        return self.subnet.availability_zone
    if filter_name == "description":
        return self.description
    if filter_name == "mac-address":
        return self.mac_address
    if filter_name == "status":
        return self.status
    if filter_name == "interface-type":
        return _interface_type(self)
    if filter_name == "source-dest-check":
        return _bool_text(self.source_dest_check)
    if filter_name in ("requester-managed",):
        return _bool_text(self.requester_managed)
    if filter_name in ("owner-id", "attachment.instance-owner-id"):
        return self.owner_id if (filter_name == "owner-id" or attachment) else None
    if filter_name == "attachment.instance-id":
        return self.instance.id if self.instance else None
    if filter_name == "attachment.attachment-id":
        return self.attachment_id
    if filter_name == "attachment.status":
        return "attached" if attachment else "detached"
    if filter_name == "attachment.device-index":
        return str(self.device_index) if attachment else None
    if filter_name == "attachment.delete-on-termination":
        return _bool_text(self.delete_on_termination) if attachment else None
    if filter_name == "attachment.network-card-index":
        return str(_card(self)) if attachment else None
    if filter_name.startswith("tag:") or filter_name in ("tag-key", "tag-value"):
        tags = self.ec2_backend.tags.get(self.id, {})
        if filter_name == "tag-key":
            return list(tags)
        if filter_name == "tag-value":
            return list(tags.values())
        return tags.get(filter_name[4:])
    raise ec2_error("InvalidParameterValue", f"The filter '{filter_name}' is invalid")


def _filter_matches(value, patterns):
    """EC2 semantics: a filter matches when any of the resource's values matches any pattern."""
    if value is None:
        return False
    values = value if isinstance(value, (list, tuple, set)) else [value]
    return any(
        fnmatch.fnmatchcase(str(v), str(p)) for v in values for p in patterns
    )


def _get_all_network_interfaces(self, eni_ids=None, filters=None):
    enis = list(self.enis.values())
    if eni_ids:
        known = {eni.id for eni in enis}
        for eni_id in eni_ids:
            if eni_id not in known:
                raise ec2_error(
                    "InvalidNetworkInterfaceID.NotFound",
                    f"The networkInterface ID '{eni_id}' does not exist",
                )
        enis = [eni for eni in enis if eni.id in eni_ids]
    for name, patterns in (filters or {}).items():
        enis = [eni for eni in enis if _filter_matches(eni.get_filter_value(name), patterns)]
    return enis


def _encode_token(offset):
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode()


def _decode_token(token):
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["o"]
        if isinstance(offset, int) and offset >= 0:
            return offset
    except Exception:
        pass
    raise ec2_error("InvalidNextToken", "The token is not valid")


def _page(items, max_results, token, low=5, high=1000):
    if max_results is not None:
        max_results = int(max_results)
        if not low <= max_results <= high:
            raise ec2_error(
                "InvalidParameterValue",
                f"Value ( {max_results} ) for parameter maxResults is invalid. Parameter must be "
                f"between {low} and {high}.",
            )
    offset = _decode_token(token) if token else 0
    if max_results is None:
        return items[offset:], None
    page = items[offset : offset + max_results]
    following = offset + max_results
    return page, (_encode_token(following) if following < len(items) else None)


# ---------------------------------------------------------------------------------------------
# Response handlers (query protocol; moto's parser has already decoded the parameters)


def r_create_network_interface(self):
    subnet = self.ec2_backend.get_subnet(self._get_param("SubnetId"))
    interface_type = self._get_param("InterfaceType")
    if interface_type not in (None, "trunk", "branch", "interface"):
        raise ec2_error(
            "UnsupportedOperation", f"InterfaceType '{interface_type}' is not supported here"
        )
    self.error_on_dryrun()
    ipv6_addresses = [i["Ipv6Address"] for i in self._get_param("Ipv6Addresses", [])]
    eni = self.ec2_backend.create_network_interface(
        subnet,
        self._get_param("PrivateIpAddress"),
        self._get_param("PrivateIpAddresses", []),
        self._get_param("Groups", []),
        self._get_param("Description"),
        add_tag_specification(self._get_param("TagSpecifications", [])),
        secondary_ips_count=self._get_int_param("SecondaryPrivateIpAddressCount", 0),
        ipv6_addresses=ipv6_addresses,
        ipv6_address_count=self._get_int_param("Ipv6AddressCount", 0),
        ipv4_prefixes=self._get_param("Ipv4Prefixes", []),
        ipv4_prefix_count=self._get_int_param("Ipv4PrefixCount", 0),
        interface_type=interface_type,
    )
    return ActionResult({"NetworkInterface": eni})


def r_delete_network_interface(self):
    eni_id = self._get_param("NetworkInterfaceId")
    self.error_on_dryrun()
    self.ec2_backend.delete_network_interface(eni_id)
    return EmptyResult()


def r_attach_network_interface(self):
    eni_id = self._get_param("NetworkInterfaceId")
    instance_id = self._get_param("InstanceId")
    device_index = self._get_param("DeviceIndex")
    card = self._get_param("NetworkCardIndex") or 0
    self.error_on_dryrun()
    attachment = self.ec2_backend.attach_network_interface(
        eni_id, instance_id, device_index, card
    )
    return ActionResult(
        {"AttachmentId": attachment.attachment_id, "NetworkCardIndex": attachment.network_card_index}
    )


def r_assign_private_ip_addresses(self):
    eni, addresses, prefixes = self.ec2_backend.assign_private_ip_addresses(
        self._get_param("NetworkInterfaceId"),
        self._get_param("PrivateIpAddresses", []),
        self._get_int_param("SecondaryPrivateIpAddressCount", 0),
        self._get_param("Ipv4Prefixes", []),
        self._get_int_param("Ipv4PrefixCount", 0),
    )
    return ActionResult(
        {
            "NetworkInterfaceId": eni.id,
            "AssignedPrivateIpAddresses": [{"PrivateIpAddress": a} for a in addresses],
            "AssignedIpv4Prefixes": [{"Ipv4Prefix": p} for p in prefixes],
        }
    )


def r_unassign_private_ip_addresses(self):
    self.ec2_backend.unassign_private_ip_addresses(
        self._get_param("NetworkInterfaceId"),
        self._get_param("PrivateIpAddresses", []),
        self._get_param("Ipv4Prefixes", []),
    )
    return EmptyResult()


def r_modify_network_interface_attribute(self):
    eni_id = self._get_param("NetworkInterfaceId")
    group_ids = self._get_param("Groups", [])
    source_dest_check = self._get_param("SourceDestCheck.Value")
    if source_dest_check is None:
        sdc = self._get_param("SourceDestCheck")
        if isinstance(sdc, dict):
            source_dest_check = sdc.get("Value")
    description = self._get_param("Description.Value")
    if description is None:
        desc = self._get_param("Description")
        if isinstance(desc, dict):
            description = desc.get("Value")
    attachment = self._get_param("Attachment")
    self.error_on_dryrun()
    self.ec2_backend.modify_network_interface_attribute(
        eni_id, group_ids, source_dest_check, description, attachment
    )
    return EmptyResult()


def r_describe_network_interfaces(self):
    eni_ids = self._get_param("NetworkInterfaceIds", [])
    filters = self._filters_from_querystring()
    max_results = self._get_param("MaxResults")
    token = self._get_param("NextToken")
    if eni_ids and max_results is not None:
        raise ec2_error(
            "InvalidParameterCombination",
            "The parameter NetworkInterfaceIds cannot be used with the parameter maxResults",
        )
    self.error_on_dryrun()
    enis = self.ec2_backend.get_all_network_interfaces(eni_ids, filters)
    page, next_token = _page(enis, max_results, token)
    result = {"NetworkInterfaces": page}
    if next_token:
        result["NextToken"] = next_token
    return ActionResult(result)


def r_associate_trunk_interface(self):
    branch_id = self._get_param("BranchInterfaceId")
    trunk_id = self._get_param("TrunkInterfaceId")
    vlan = self._get_param("VlanId")
    gre = self._get_param("GreKey")
    token = self._get_param("ClientToken")
    self.error_on_dryrun()
    backend = self.ec2_backend
    trunk = backend.get_network_interface(trunk_id)
    branch = backend.get_network_interface(branch_id)
    if getattr(trunk, "_lab_type", "interface") != "trunk":
        raise ec2_error(
            "InvalidParameterValue", f"The network interface '{trunk_id}' is not a trunk interface."
        )
    if branch_id == trunk_id or getattr(branch, "_lab_type", "interface") == "trunk":
        raise ec2_error(
            "InvalidParameterValue", f"The network interface '{branch_id}' cannot be a branch."
        )
    if vlan is None and gre is None:
        raise ec2_error("MissingParameter", "The request must contain the parameter VlanId")
    if vlan is not None and not 1 <= int(vlan) <= 4094:
        raise ec2_error("InvalidParameterValue", f"Invalid value '{vlan}' for VlanId")
    if branch.instance is not None or branch_association(backend, branch_id) is not None:
        raise ec2_error("InvalidNetworkInterface.InUse", f"Interface: [{branch_id}] in use.")
    if branch.subnet.vpc_id != trunk.subnet.vpc_id:
        raise ec2_error(
            "InvalidParameterCombination",
            "The branch and trunk network interfaces must be in the same VPC.",
        )
    for assoc in trunk_associations(backend):
        if assoc["TrunkInterfaceId"] == trunk_id and vlan is not None and assoc.get("VlanId") == int(vlan):
            raise ec2_error(
                "InvalidParameterValue",
                f"VLAN ID {vlan} is already in use on trunk interface {trunk_id}.",
            )
    assoc = {
        "AssociationId": "trunk-assoc-" + random_resource_id(17),
        "BranchInterfaceId": branch_id,
        "TrunkInterfaceId": trunk_id,
        "InterfaceProtocol": "VLAN" if vlan is not None else "GRE",
    }
    if vlan is not None:
        assoc["VlanId"] = int(vlan)
    if gre is not None:
        assoc["GreKey"] = int(gre)
    _trunk_assocs(backend)[assoc["AssociationId"]] = assoc
    result = {"InterfaceAssociation": assoc}
    if token:
        result["ClientToken"] = token
    return ActionResult(result)


def r_describe_trunk_interface_associations(self):
    ids = self._get_param("AssociationIds", [])
    filters = self._filters_from_querystring()
    max_results = self._get_param("MaxResults")
    token = self._get_param("NextToken")
    self.error_on_dryrun()
    assocs = trunk_associations(self.ec2_backend)
    known = {a["AssociationId"] for a in assocs}
    for assoc_id in ids:
        if assoc_id not in known:
            raise ec2_error(
                "InvalidAssociationID.NotFound",
                f"The association ID '{assoc_id}' does not exist",
            )
    if ids:
        assocs = [a for a in assocs if a["AssociationId"] in ids]
    for name, values in filters.items():
        if name == "trunk-interface-association.trunk-interface-id":
            key = "TrunkInterfaceId"
        elif name == "trunk-interface-association.branch-interface-id":
            key = "BranchInterfaceId"
        elif name == "trunk-interface-association.id":
            key = "AssociationId"
        elif name == "trunk-interface-association.vlan-id":
            key = "VlanId"
        else:
            raise ec2_error("InvalidParameterValue", f"The filter '{name}' is invalid")
        assocs = [a for a in assocs if str(a.get(key)) in values]
    page, next_token = _page(assocs, max_results, token, low=5, high=255)
    result = {"InterfaceAssociations": page}
    if next_token:
        result["NextToken"] = next_token
    return ActionResult(result)


def r_disassociate_trunk_interface(self):
    assoc_id = self._get_param("AssociationId")
    token = self._get_param("ClientToken")
    self.error_on_dryrun()
    assocs = _trunk_assocs(self.ec2_backend)
    if assoc_id not in assocs:
        raise ec2_error(
            "InvalidAssociationID.NotFound", f"The association ID '{assoc_id}' does not exist"
        )
    del assocs[assoc_id]
    result = {"Return": True}
    if token:
        result["ClientToken"] = token
    return ActionResult(result)


# ---------------------------------------------------------------------------------------------


def apply():
    Subnet.get_available_subnet_ip = _subnet_get_available_ip
    Subnet.request_ip = _subnet_request_ip
    Subnet.del_subnet_ip = _subnet_del_ip
    Subnet.available_ip_address_count = property(_available_count)

    NetworkInterface.ipv4_prefixes = property(
        lambda self: [{"Ipv4Prefix": p} for p in _prefixes(self)]
    )
    NetworkInterface.interface_type = property(_interface_type, lambda self, value: None)
    NetworkInterface.get_filter_value = _eni_filter_value
    # EC2: an ENI has its own groups (moto merges in the instance's into every attached ENI).
    NetworkInterface.group_set = property(lambda self: list(self._group_set))
    NetworkInterface.delete = _eni_delete
    Attachment.__init__ = _attachment_init

    NetworkInterfaceBackend.create_network_interface = _create_network_interface
    NetworkInterfaceBackend.delete_network_interface = _delete_network_interface
    NetworkInterfaceBackend.attach_network_interface = _attach_network_interface
    NetworkInterfaceBackend.detach_network_interface = _detach_network_interface
    NetworkInterfaceBackend.get_all_network_interfaces = _get_all_network_interfaces
    NetworkInterfaceBackend.assign_private_ip_addresses = _assign_private_ip_addresses
    NetworkInterfaceBackend.unassign_private_ip_addresses = _unassign_private_ip_addresses
    NetworkInterfaceBackend.modify_network_interface_attribute = (
        _modify_network_interface_attribute
    )

    Instance.attach_eni = _instance_attach_eni
    Instance.detach_eni = _instance_detach_eni
    Instance.terminate = _terminate
    Instance.private_ip = property(_private_ip)
    Instance.private_ip_address = property(_private_ip)
    Instance.private_dns_name = property(_private_dns_name)
    Instance.public_ip = property(_public_ip)
    Instance.public_ip_address = property(_public_ip)
    InstanceBackend.run_instances = _run_instances

    handlers = {
        "create_network_interface": r_create_network_interface,
        "delete_network_interface": r_delete_network_interface,
        "attach_network_interface": r_attach_network_interface,
        "assign_private_ip_addresses": r_assign_private_ip_addresses,
        "unassign_private_ip_addresses": r_unassign_private_ip_addresses,
        "modify_network_interface_attribute": r_modify_network_interface_attribute,
        "describe_network_interfaces": r_describe_network_interfaces,
        "associate_trunk_interface": r_associate_trunk_interface,
        "describe_trunk_interface_associations": r_describe_trunk_interface_associations,
        "disassociate_trunk_interface": r_disassociate_trunk_interface,
    }
    for name, handler in handlers.items():
        setattr(EC2Response, name, handler)


def instance_primary_eni(instance):
    primary = instance.nics.get(0)
    if primary is not None:
        return primary.id
    return None


def eni_prefixes(eni):
    return _prefixes(eni)


def eni_card(eni):
    return _card(eni)


def eni_interface_type(eni):
    return _interface_type(eni)

