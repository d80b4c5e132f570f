"""The lab's hypervisor and VPC fabric, driven by the emulator's live network view.

Each ENI attached to a registered instance becomes a veth pair: `eth<device index>` with the
ENI's MAC inside the instance's netns, and its far end in the `vpc` netns. The vpc netns routes
each address and prefix only to the ENI that owns it (so a packet reaches an address only
through its ENI), drops packets whose source the arriving ENI does not own (strict reverse-path
filtering over those same routes: EC2's source/destination check), answers as every subnet's
gateway, and proxies ARP so instances on one subnet reach each other through the fabric.

A trunk ENI's port also steers VLANs (BPF, via the `eniflow-lab-trunk` helper named by
$ENIFLOW_LAB_TRUNK_HELPER): a frame tagged v may only carry the addresses of the branch ENI
associated on v, and replies to a branch address leave tagged v toward the branch ENI's MAC.

`sync` reconciles the kernel with the view; it is idempotent and cheap when nothing changed.
"""

import ipaddress
import logging
import os
import shutil
import subprocess
import threading

log = logging.getLogger("fabric")


def _run(*args, check=True):
    proc = subprocess.run(list(args), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc


class _Plug:
    """One ENI plugged into an instance's netns."""

    def __init__(self, eni, netns, vpc_if):
        self.eni_id = eni["id"]
        self.netns = netns
        self.node_if = f"eth{eni['device_index']}"
        self.vpc_if = vpc_if
        self.mac = eni["mac"]
        self.device_index = eni["device_index"]
        self.instance_id = eni["instance_id"]
        self.primary = eni["private_ips"][0]
        self.trunk = eni.get("interface_type") == "trunk"
        self.routes = set()
        self.branches = set()  # (vlan, address, branch MAC) steered on this trunk port

    def identity(self):
        return (self.instance_id, self.device_index, self.mac, self.primary)


class Fabric:
    def __init__(self, vpc_netns):
        self.vpc = vpc_netns
        self.nodes = {}  # instance id -> netns name
        self.plugs = {}  # ENI id -> _Plug
        self.lock = threading.Lock()
        self.next_if = 0
        self.pins = f"/sys/fs/bpf/{vpc_netns}" if vpc_netns else None
        self.trunk_helper = os.environ.get("ENIFLOW_LAB_TRUNK_HELPER")
        if self.vpc:
            for key in ("ip_forward", "conf.all.rp_filter", "conf.default.rp_filter",
                        "conf.default.proxy_arp"):
                self._vpc_sysctl(f"net.ipv4.{key}", "1")

    def _vpc(self, *args, check=True):
        return _run("ip", "-n", self.vpc, *args, check=check)

    def _in_vpc(self, *args):
        return _run("nsenter", f"--net=/run/netns/{self.vpc}", *args)

    def _vpc_sysctl(self, key, value):
        _run("nsenter", f"--net=/run/netns/{self.vpc}", "sysctl", "-qw", f"{key}={value}")

    def register(self, instance_id, netns):
        with self.lock:
            self.nodes[instance_id] = netns

    def sync(self, view):
        if not self.vpc:
            return
        with self.lock:
            subnets = {s["id"]: s for s in view.get("subnets", [])}
            enis = {e["id"]: e for e in view.get("enis", [])}
            wanted = {
                e["id"]: e
                for e in enis.values()
                if e.get("instance_id") in self.nodes
                and e.get("device_index") is not None
                and e.get("private_ips")
            }
            for eni_id, plug in list(self.plugs.items()):
                eni = wanted.get(eni_id)
                if eni is None or _Plug(eni, plug.netns, "").identity() != plug.identity():
                    self._unplug(plug)
            for eni_id, eni in wanted.items():
                if eni_id not in self.plugs:
                    try:
                        self._plug(eni, subnets[eni["subnet_id"]])
                    except (RuntimeError, KeyError) as e:
                        log.error("cannot plug %s: %s", eni_id, e)
                        continue
                branches = [
                    b for b in enis.values()
                    if b.get("interface_type") == "branch" and b.get("trunk_eni_id") == eni_id
                ]
                self._route(self.plugs[eni_id], eni, branches)

    def _plug(self, eni, subnet):
        netns = self.nodes[eni["instance_id"]]
        self.next_if += 1
        vpc_if = f"v{self.next_if}-{eni['device_index']}"
        plug = _Plug(eni, netns, vpc_if)
        # An interface of that name left by an earlier ENI on the same index goes first.
        _run("ip", "-n", netns, "link", "del", plug.node_if, check=False)
        self._vpc("link", "add", vpc_if, "type", "veth", "peer", "name", plug.node_if,
                  "address", plug.mac, "netns", netns)
        try:
            self._configure(plug, subnet)
        except RuntimeError:
            # Unwind: no half-plugged ENI stays behind.
            self._vpc("link", "del", vpc_if, check=False)
            raise
        self.plugs[eni["id"]] = plug
        log.info("plugged %s as %s in %s (vpc side %s)", eni["id"], plug.node_if, netns, vpc_if)

    def _configure(self, plug, subnet):
        vpc_if, netns = plug.vpc_if, plug.netns
        self._vpc_sysctl(f"net.ipv4.conf.{vpc_if}.proxy_arp", "1")
        self._vpc_sysctl(f"net.ipv4.conf.{vpc_if}.rp_filter", "1")
        # EC2 answers ARP at once; Linux delays proxy answers by up to 0.8 s by default (and a
        # namespace has no neigh "default" to change that for every port).
        self._vpc_sysctl(f"net.ipv4.neigh.{vpc_if}.proxy_delay", "0")
        self._vpc("addr", "add", f"{subnet['gateway']}/32", "dev", vpc_if)
        self._vpc("link", "set", vpc_if, "up")
        self._vpc("neigh", "replace", plug.primary, "lladdr", plug.mac, "dev", vpc_if,
                  "nud", "permanent")
        _run("ip", "-n", netns, "link", "set", plug.node_if, "up")
        if plug.trunk:
            if not self.trunk_helper:
                raise RuntimeError("a trunk ENI needs $ENIFLOW_LAB_TRUNK_HELPER")
            self._in_vpc(self.trunk_helper, "attach", self.pins, vpc_if)
        if plug.device_index == 0:
            # What DHCP does on a real instance's primary interface.
            prefixlen = ipaddress.ip_network(subnet["cidr"]).prefixlen
            _run("ip", "-n", netns, "addr", "add", f"{plug.primary}/{prefixlen}",
                 "dev", plug.node_if)
            _run("ip", "-n", netns, "route", "replace", "default", "via", subnet["gateway"],
                 "dev", plug.node_if)

    def _unplug(self, plug):
        # Deleting one end of a veth removes both, and every route through it.
        self._vpc("link", "del", plug.vpc_if, check=False)
        del self.plugs[plug.eni_id]
        log.info("unplugged %s (%s in %s)", plug.eni_id, plug.node_if, plug.netns)

    def _route(self, plug, eni, branches):
        wanted = {f"{ip}/32" for ip in eni["private_ips"]} | set(eni.get("prefixes", []))
        if plug.trunk:
            steered = {
                (b["vlan"], ip, b["mac"]) for b in branches if b.get("vlan") is not None
                for ip in b["private_ips"]
            }
            for vlan, ip, mac in sorted(plug.branches - steered):
                self._in_vpc(self.trunk_helper, "branch", "del", self.pins, plug.vpc_if,
                             str(vlan), ip, mac)
            for vlan, ip, mac in sorted(steered - plug.branches):
                self._in_vpc(self.trunk_helper, "branch", "add", self.pins, plug.vpc_if,
                             str(vlan), ip, mac)
            plug.branches = steered
            wanted |= {f"{ip}/32" for _, ip, _ in steered}
        for dest in sorted(plug.routes - wanted):
            self._vpc("route", "del", dest, "dev", plug.vpc_if, check=False)
        for dest in sorted(wanted - plug.routes):
            if dest == f"{plug.primary}/32":
                self._vpc("route", "replace", dest, "dev", plug.vpc_if)
            else:
                # Secondary addresses and prefixes go to the ENI's MAC, as EC2 delivers them.
                self._vpc("route", "replace", dest, "via", plug.primary, "dev", plug.vpc_if,
                          "onlink")
        plug.routes = wanted

    def close(self):
        if not self.vpc:
            return
        with self.lock:
            for plug in list(self.plugs.values()):
                self._unplug(plug)
            if self.pins:
                shutil.rmtree(self.pins, ignore_errors=True)
