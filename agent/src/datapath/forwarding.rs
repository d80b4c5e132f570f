//! What the programs forward by: pods (address → veth, MACs, owning ENI), host veths (→ the
//! one source address allowed), the node's ENIs (→ MAC, subnet router) and the VPC's CIDRs.
//! The agent keeps a mirror of what it wrote, so an ENI appearing later fixes every pod it owns,
//! and rebuilds the mirror from the pinned maps and its checkpoint on restart.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use aya::maps::Array;
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
};
use eniflow_common::{
    maps, BranchPort, Config, Destination, Drops, Eni, FlowBudget, Pod, PodStats, TrunkVlan, Veth,
    CONFIG_DELIVER_THROUGH_VETH, CONFIG_SG_STRICT, DEST_NODE, DEST_VPC, ENI_ROLE_TRUNK, HOOKS,
};

use super::{DatapathError, Pins};

/// One of the node's ENIs as the data plane uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniPort {
    pub id: String,
    pub ifindex: u32,
    pub ifname: String,
    pub mac: [u8; 6],
    pub primary: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// `ENI_ROLE_*`.
    pub role: u32,
}

/// A pod as the agent wires it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPort {
    pub addr: Ipv4Addr,
    /// The ENI that owns the address.
    pub eni_id: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
    /// A security-group pod's branch ENI (then `eni_id` is the trunk's).
    pub branch: Option<BranchLink>,
}

/// How the programs deliver and route, node-wide (the `config` map).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modes {
    /// POD_SECURITY_GROUP_ENFORCING_MODE=strict: all of a security-group pod's traffic goes
    /// through the VPC.
    pub sg_strict: bool,
    /// A network policy agent's programs on pods' veths must see what reaches the pods.
    pub deliver_through_veth: bool,
}

/// How a security-group pod is reached through the trunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchLink {
    pub vlan: u16,
    pub mac: [u8; 6],
    pub gateway: Ipv4Addr,
}

/// Handles on the pinned forwarding maps and the mirror of their contents.
pub struct Forwarding {
    pods: HashMap<MapData, [u8; 4], Pod>,
    veths: HashMap<MapData, u32, Veth>,
    enis: HashMap<MapData, u32, Eni>,
    destinations: LpmTrie<MapData, [u8; 4], Destination>,
    pod_stats: PerCpuHashMap<MapData, [u8; 4], PodStats>,
    flow_budgets: HashMap<MapData, [u8; 4], FlowBudget>,
    branches: HashMap<MapData, TrunkVlan, BranchPort>,
    config: Array<MapData, Config>,
    known_pods: BTreeMap<Ipv4Addr, PodPort>,
    known_enis: BTreeMap<String, EniPort>,
    known_destinations: BTreeSet<(Ipv4Addr, u8, u32)>,
}

fn wire(addr: Ipv4Addr) -> [u8; 4] {
    addr.octets()
}

fn open(pins: &Pins, name: &'static str, as_map: fn(MapData) -> Map) -> Result<Map, DatapathError> {
    let data = MapData::from_pin(pins.map(name)).map_err(|e| DatapathError::Map(name, e))?;
    Ok(as_map(data))
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |e| DatapathError::Map(name, e)
}

impl Forwarding {
    /// Opens the maps a loaded `Datapath` pinned under `pins`.
    pub fn open(pins: &Pins) -> Result<Forwarding, DatapathError> {
        Ok(Forwarding {
            pods: open(pins, maps::PODS, Map::HashMap)?
                .try_into()
                .map_err(map_error(maps::PODS))?,
            veths: open(pins, maps::VETHS, Map::HashMap)?
                .try_into()
                .map_err(map_error(maps::VETHS))?,
            enis: open(pins, maps::ENIS, Map::HashMap)?
                .try_into()
                .map_err(map_error(maps::ENIS))?,
            destinations: open(pins, maps::DESTINATIONS, Map::LpmTrie)?
                .try_into()
                .map_err(map_error(maps::DESTINATIONS))?,
            pod_stats: open(pins, maps::POD_STATS, Map::PerCpuHashMap)?
                .try_into()
                .map_err(map_error(maps::POD_STATS))?,
            flow_budgets: open(pins, maps::FLOW_BUDGETS, Map::LruHashMap)?
                .try_into()
                .map_err(map_error(maps::FLOW_BUDGETS))?,
            branches: open(pins, maps::BRANCHES, Map::HashMap)?
                .try_into()
                .map_err(map_error(maps::BRANCHES))?,
            config: open(pins, maps::CONFIG, Map::Array)?
                .try_into()
                .map_err(map_error(maps::CONFIG))?,
            known_pods: BTreeMap::new(),
            known_enis: BTreeMap::new(),
            known_destinations: BTreeSet::new(),
        })
    }

    fn entry(&self, pod: &PodPort) -> Pod {
        // Before the watcher's first report (a restarted agent), the pinned entry's ENI stays:
        // forwarding must not pause while the agent catches up.
        let eni_ifindex = match self.known_enis.get(&pod.eni_id) {
            Some(eni) => eni.ifindex,
            None if !self.known_enis.is_empty() => 0,
            None => self
                .pods
                .get(&wire(pod.addr), 0)
                .ok()
                .filter(|p| p.host_ifindex == pod.host_ifindex)
                .map_or(0, |p| p.eni_ifindex),
        };
        Pod {
            host_ifindex: pod.host_ifindex,
            eni_ifindex,
            pod_mac: pod.pod_mac,
            host_mac: pod.host_mac,
            vlan: pod.branch.as_ref().map_or(0, |b| b.vlan),
            flags: 0,
        }
    }

    /// Writes the pod's entry, and for a security-group pod its trunk VLAN's entry (once the
    /// trunk's ifindex is known).
    fn write_pod(&mut self, pod: &PodPort) -> Result<(), DatapathError> {
        let entry = self.entry(pod);
        if let Some(branch) = &pod.branch {
            if entry.eni_ifindex != 0 {
                let key = TrunkVlan {
                    trunk_ifindex: entry.eni_ifindex,
                    vlan: u32::from(branch.vlan),
                };
                let port = BranchPort {
                    pod_addr: wire(pod.addr),
                    gateway: wire(branch.gateway),
                    mac: branch.mac,
                    _pad: [0; 2],
                };
                self.branches
                    .insert(key, port, 0)
                    .map_err(map_error(maps::BRANCHES))?;
            }
        }
        self.pods
            .insert(wire(pod.addr), entry, 0)
            .map_err(map_error(maps::PODS))
    }

    /// Removes the trunk VLAN entry of the security-group pod at `addr`, found through the pod's
    /// entry as it stands (written with it, so it names the trunk and VLAN that entry used).
    fn remove_branch_entry(&mut self, addr: Ipv4Addr) {
        let Ok(pod) = self.pods.get(&wire(addr), 0) else {
            return;
        };
        if pod.vlan != 0 {
            let _ = self.branches.remove(&TrunkVlan {
                trunk_ifindex: pod.eni_ifindex,
                vlan: u32::from(pod.vlan),
            });
        }
    }

    /// Security-group pods in strict (true) or standard mode.
    pub fn set_modes(&mut self, modes: Modes) -> Result<(), DatapathError> {
        let mut flags = 0;
        if modes.sg_strict {
            flags |= CONFIG_SG_STRICT;
        }
        if modes.deliver_through_veth {
            flags |= CONFIG_DELIVER_THROUGH_VETH;
        }
        self.config
            .set(0, Config { flags }, 0)
            .map_err(map_error(maps::CONFIG))
    }

    /// The trunk ENI, when the node has one.
    pub fn trunk(&self) -> Option<&EniPort> {
        self.known_enis.values().find(|e| e.role == ENI_ROLE_TRUNK)
    }

    /// Adds (or re-adds) a pod: its counters, its veth's allowed source, then its route, so no
    /// packet is steered to it before its veth is known.
    pub fn add_pod(&mut self, pod: PodPort) -> Result<(), DatapathError> {
        let key = wire(pod.addr);
        injected("map-pod-stats")?;
        if self.pod_stats.get(&key, 0).is_err() {
            let zeros = PerCpuValues::try_from(vec![
                PodStats::default();
                aya::util::nr_cpus().map_err(|(_, e)| {
                    DatapathError::Interface("cpus".into(), e)
                })?
            ])
            .map_err(|e| DatapathError::Interface("cpus".into(), e))?;
            self.pod_stats
                .insert(key, zeros, 0)
                .map_err(map_error(maps::POD_STATS))?;
        }
        injected("map-veths")?;
        self.veths
            .insert(pod.host_ifindex, Veth { pod_addr: key }, 0)
            .map_err(map_error(maps::VETHS))?;
        injected("map-pods")?;
        self.write_pod(&pod)?;
        self.known_pods.insert(pod.addr, pod);
        Ok(())
    }

    /// Removes a pod's entries (route first); returns its host veth's ifindex if it was known.
    pub fn remove_pod(&mut self, addr: Ipv4Addr) -> Option<u32> {
        let key = wire(addr);
        self.remove_branch_entry(addr);
        let _ = self.pods.remove(&key);
        let known = self.known_pods.remove(&addr);
        let ifindex = known.map(|p| p.host_ifindex).or_else(|| {
            self.veths
                .iter()
                .flatten()
                .find(|(_, v)| v.pod_addr == key)
                .map(|(i, _)| i)
        });
        if let Some(ifindex) = ifindex {
            let _ = self.veths.remove(&ifindex);
        }
        let _ = self.pod_stats.remove(&key);
        let _ = self.flow_budgets.remove(&key);
        ifindex
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodPort> {
        self.known_pods.values()
    }

    /// The pods the pinned map holds (left by an earlier agent), as (address, entry).
    pub fn pinned_pods(&self) -> Vec<(Ipv4Addr, Pod)> {
        self.pods
            .iter()
            .flatten()
            .map(|(k, v)| (Ipv4Addr::from(k), v))
            .collect()
    }

    /// Makes the ENI table exactly `enis`, and re-points every pod at its ENI's ifindex.
    /// Returns the ifindexes of the ENIs that left the table.
    pub fn set_enis(&mut self, enis: Vec<EniPort>) -> Result<Vec<u32>, DatapathError> {
        let wanted: BTreeMap<String, EniPort> =
            enis.into_iter().map(|e| (e.id.clone(), e)).collect();
        for eni in wanted.values() {
            let entry = Eni {
                gateway: wire(eni.gateway),
                primary_addr: wire(eni.primary),
                role: eni.role,
                mac: eni.mac,
                _pad: [0; 2],
            };
            self.enis
                .insert(eni.ifindex, entry, 0)
                .map_err(map_error(maps::ENIS))?;
        }
        let kept: BTreeSet<u32> = wanted.values().map(|e| e.ifindex).collect();
        let stale: Vec<u32> = self
            .enis
            .keys()
            .flatten()
            .filter(|i| !kept.contains(i))
            .collect();
        for ifindex in &stale {
            let _ = self.enis.remove(ifindex);
        }
        if wanted != self.known_enis {
            // The new table is what the pods are written against; if a write fails part-way,
            // the old one comes back so the next call sees the change again and rewrites all.
            let previous = std::mem::replace(&mut self.known_enis, wanted);
            let pods: Vec<PodPort> = self.known_pods.values().cloned().collect();
            for pod in pods {
                self.remove_branch_entry(pod.addr);
                if let Err(e) = self.write_pod(&pod) {
                    self.known_enis = previous;
                    return Err(e);
                }
            }
        }
        Ok(stale)
    }

    pub fn enis(&self) -> impl Iterator<Item = &EniPort> {
        self.known_enis.values()
    }

    /// Makes the destination trie exactly the VPC's CIDRs plus the node's own addresses.
    pub fn set_destinations(
        &mut self,
        vpc_cidrs: &[(Ipv4Addr, u8)],
        node_addrs: &[Ipv4Addr],
    ) -> Result<(), DatapathError> {
        let mut wanted: BTreeSet<(Ipv4Addr, u8, u32)> = vpc_cidrs
            .iter()
            .map(|(a, len)| (*a, *len, DEST_VPC))
            .collect();
        wanted.extend(node_addrs.iter().map(|a| (*a, 32, DEST_NODE)));
        if wanted == self.known_destinations {
            return Ok(());
        }
        // Insert before removing, so no lookup in between misses a destination that stays.
        for (addr, len, kind) in &wanted {
            self.destinations
                .insert(
                    &Key::new(u32::from(*len), addr.octets()),
                    Destination { kind: *kind },
                    0,
                )
                .map_err(map_error(maps::DESTINATIONS))?;
        }
        let stale: Vec<Key<[u8; 4]>> = self
            .destinations
            .iter()
            .flatten()
            .filter(|(key, value)| {
                let addr = Ipv4Addr::from(key.data());
                let len = key.prefix_len() as u8;
                !wanted.contains(&(addr, len, value.kind))
            })
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            let _ = self.destinations.remove(&key);
        }
        self.known_destinations = wanted;
        Ok(())
    }
}

/// Per-pod counters summed over CPUs, read from the pinned map (works while the agent is down).
pub fn read_pod_stats(pins: &Pins) -> Result<Vec<(Ipv4Addr, PodStats)>, DatapathError> {
    if !Path::new(&pins.map(maps::POD_STATS)).exists() {
        return Ok(Vec::new());
    }
    let stats: PerCpuHashMap<MapData, [u8; 4], PodStats> =
        open(pins, maps::POD_STATS, Map::PerCpuHashMap)?
            .try_into()
            .map_err(map_error(maps::POD_STATS))?;
    let mut out = Vec::new();
    for entry in stats.iter() {
        let (addr, per_cpu) = entry.map_err(map_error(maps::POD_STATS))?;
        let mut sum = PodStats::default();
        for s in per_cpu.iter() {
            sum.sent_packets += s.sent_packets;
            sum.sent_bytes += s.sent_bytes;
            sum.sent_to_stack += s.sent_to_stack;
            sum.received_packets += s.received_packets;
            sum.received_bytes += s.received_bytes;
            sum.drops = sum.drops.plus(&s.drops);
        }
        out.push((Ipv4Addr::from(addr), sum));
    }
    out.sort_by_key(|(a, _)| *a);
    Ok(out)
}

/// The pods in the pinned map, by address (works while the agent is down).
pub fn read_pods(pins: &Pins) -> Result<Vec<(Ipv4Addr, Pod)>, DatapathError> {
    if !Path::new(&pins.map(maps::PODS)).exists() {
        return Ok(Vec::new());
    }
    let pods: HashMap<MapData, [u8; 4], Pod> = open(pins, maps::PODS, Map::HashMap)?
        .try_into()
        .map_err(map_error(maps::PODS))?;
    let mut out = Vec::new();
    for entry in pods.iter() {
        let (addr, pod) = entry.map_err(map_error(maps::PODS))?;
        out.push((Ipv4Addr::from(addr), pod));
    }
    out.sort_by_key(|(a, _)| *a);
    Ok(out)
}

/// Drops by hook (`HOOK_*` index), summed over CPUs, read from the pinned map (works while the
/// agent is down).
pub fn read_hook_drops(pins: &Pins) -> Result<Vec<(u32, Drops)>, DatapathError> {
    if !Path::new(&pins.map(maps::HOOK_DROPS)).exists() {
        return Ok(Vec::new());
    }
    let drops: PerCpuArray<MapData, Drops> = open(pins, maps::HOOK_DROPS, Map::PerCpuArray)?
        .try_into()
        .map_err(map_error(maps::HOOK_DROPS))?;
    (0..HOOKS)
        .map(|hook| {
            let per_cpu = drops.get(&hook, 0).map_err(map_error(maps::HOOK_DROPS))?;
            let sum = per_cpu.iter().fold(Drops::default(), |acc, d| acc.plus(d));
            Ok((hook, sum))
        })
        .collect()
}

/// A map write told to fail (`faults`), as the write's own error would read.
fn injected(step: &'static str) -> Result<(), DatapathError> {
    crate::faults::inject(step)
        .map_err(|e| DatapathError::Interface(step.to_owned(), std::io::Error::other(e)))
}
