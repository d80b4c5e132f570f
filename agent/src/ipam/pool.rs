//! Who holds which address: the node's ENIs with their secondary addresses and /28 prefixes, the
//! pods' allocations, the addresses cooling after release, and what the refill loop is giving
//! back to EC2. Pure bookkeeping, no EC2 calls: a pod's address comes from here alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::warm;
use crate::{ec2::Eni, limits::ADDRESSES_PER_PREFIX};

/// Who an address is for: CNI's key for an attachment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub owner: Owner,
    pub ipv4: Ipv4Addr,
    pub eni: String,
    #[serde(default)]
    pub pod_namespace: String,
    #[serde(default)]
    pub pod_name: String,
    /// Unix milliseconds.
    pub allocated_at_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("no free address in the pool (it holds {total}, {assigned} assigned, {cooling} cooling); the refill loop is adding more")]
    Empty {
        total: u32,
        assigned: u32,
        cooling: u32,
    },
}

/// One attached ENI as the pool sees it.
#[derive(Clone, Debug)]
struct PoolEni {
    eni: Eni,
    /// Pods may use its addresses (not the primary ENI under custom networking).
    for_pods: bool,
    /// Being detached: nothing new is taken from it.
    draining: bool,
    /// Of an ENIConfig the node no longer uses: its pods keep their addresses, nothing new is
    /// taken from it, and it goes once it is idle.
    retired: bool,
}

impl PoolEni {
    /// New pods may take its addresses, and it may grow.
    fn open(&self) -> bool {
        self.for_pods && !self.draining && !self.retired
    }

    fn secondaries(&self) -> &[Ipv4Addr] {
        self.eni.addresses.get(1..).unwrap_or_default()
    }

    /// Every address a pod may get from this ENI, secondaries first.
    fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let from_prefixes = self.eni.prefixes.iter().flat_map(|p| prefix_addresses(*p));
        self.secondaries().iter().copied().chain(from_prefixes)
    }
}

fn prefix_addresses(base: Ipv4Addr) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(base);
    (first..first + ADDRESSES_PER_PREFIX).map(Ipv4Addr::from)
}

fn prefix_of(ip: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) & !(ADDRESSES_PER_PREFIX - 1))
}

/// Where a pod address of the pool stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressState {
    /// Held by a pod.
    Assigned,
    /// Free to hand out.
    Warm,
    /// Released, resting for IP_COOLDOWN_PERIOD.
    Cooling,
    /// Being given back to EC2.
    Leaving,
}

/// One ENI's addresses as the pool holds them.
#[derive(Clone, Debug)]
pub struct EniShare {
    pub eni: Eni,
    /// Pods may use its addresses (not the primary ENI under custom networking, not a trunk).
    pub for_pods: bool,
    /// Being detached.
    pub draining: bool,
    /// Every address a pod could get from it (secondaries, then prefixes' addresses).
    pub addresses: Vec<(Ipv4Addr, AddressState)>,
}

impl EniShare {
    /// Its addresses in `state`.
    pub fn count(&self, state: AddressState) -> u32 {
        self.addresses.iter().filter(|(_, s)| *s == state).count() as u32
    }
}

#[derive(Debug, Default)]
pub struct Pool {
    enis: BTreeMap<String, PoolEni>,
    by_owner: BTreeMap<Owner, Allocation>,
    held: BTreeMap<Ipv4Addr, Owner>,
    /// Released addresses and when (unix ms): not handed out until the cooldown has passed.
    cooling: BTreeMap<Ipv4Addr, u64>,
    /// Secondary addresses and prefix bases being unassigned right now.
    leaving: BTreeSet<Ipv4Addr>,
    /// Held addresses EC2's last answers did not list, and since when (unix ms): EC2's view is
    /// eventually consistent, so a pod keeps its address through a short miss.
    missing: BTreeMap<Ipv4Addr, u64>,
}

impl Pool {
    /// Adds (or refreshes) an attached ENI.
    pub fn add_eni(&mut self, eni: Eni, for_pods: bool) {
        let old = self.enis.get(&eni.id);
        let draining = old.is_some_and(|e| e.draining);
        let retired = old.is_some_and(|e| e.retired);
        self.enis.insert(
            eni.id.clone(),
            PoolEni {
                eni,
                for_pods,
                draining,
                retired,
            },
        );
    }

    pub fn remove_eni(&mut self, id: &str) {
        self.enis.remove(id);
    }

    /// The ENIs pods draw from, by (card, device index).
    pub fn enis(&self) -> Vec<&Eni> {
        let mut enis: Vec<&Eni> = self.enis.values().map(|e| &e.eni).collect();
        enis.sort_by_key(|e| (e.network_card, e.device_index));
        enis
    }

    /// Each ENI's share of the pool (for metrics and introspection), by (card, device index).
    pub fn shares(&self) -> Vec<EniShare> {
        let mut shares: Vec<EniShare> = self
            .enis
            .values()
            .map(|e| EniShare {
                eni: e.eni.clone(),
                for_pods: e.for_pods,
                draining: e.draining,
                addresses: e.pod_addresses().map(|ip| (ip, self.state(ip))).collect(),
            })
            .collect();
        shares.sort_by_key(|s| (s.eni.network_card, s.eni.device_index));
        shares
    }

    fn state(&self, ip: Ipv4Addr) -> AddressState {
        if self.held.contains_key(&ip) {
            AddressState::Assigned
        } else if self.cooling.contains_key(&ip) {
            AddressState::Cooling
        } else if self.leaving.contains(&ip) || self.leaving.contains(&prefix_of(ip)) {
            AddressState::Leaving
        } else {
            AddressState::Warm
        }
    }

    pub fn has_trunk(&self) -> bool {
        self.enis.values().any(|e| e.eni.trunk)
    }

    /// ENIs that can take more addresses: for pods and not draining.
    pub fn growable(&self) -> Vec<&Eni> {
        let mut enis: Vec<&Eni> = self
            .enis
            .values()
            .filter(|e| e.open())
            .map(|e| &e.eni)
            .collect();
        enis.sort_by_key(|e| (e.network_card, e.device_index));
        enis
    }

    /// Newly assigned secondaries or prefixes on an ENI the pool knows.
    pub fn add_blocks(&mut self, eni: &str, blocks: &[Ipv4Addr], prefixes: bool) {
        if let Some(e) = self.enis.get_mut(eni) {
            let list = if prefixes {
                &mut e.eni.prefixes
            } else {
                &mut e.eni.addresses
            };
            for b in blocks {
                if !list.contains(b) {
                    list.push(*b);
                }
            }
        }
    }

    /// Every address pods may get, assigned or not, in order.
    pub fn pod_addresses(&self) -> Vec<Ipv4Addr> {
        let mut all: Vec<Ipv4Addr> = self
            .enis
            .values()
            .filter(|e| e.for_pods)
            .flat_map(|e| e.pod_addresses())
            .collect();
        all.sort();
        all
    }

    pub fn counts(&self) -> warm::Pool {
        let total = self
            .enis
            .values()
            .filter(|e| e.open())
            .map(|e| {
                e.secondaries().len() as u32 + e.eni.prefixes.len() as u32 * ADDRESSES_PER_PREFIX
            })
            .sum::<u32>();
        warm::Pool {
            total,
            assigned: self.held.len() as u32,
            cooling: self.cooling.len() as u32,
        }
    }

    fn usable(&self, ip: Ipv4Addr) -> bool {
        !self.held.contains_key(&ip)
            && !self.cooling.contains_key(&ip)
            && !self.leaving.contains(&ip)
            && !self.leaving.contains(&prefix_of(ip))
    }

    /// Hands `owner` an address (the same one again if it already has one): from the lowest ENI
    /// with one free, secondaries first, then the fullest prefix, so whole prefixes and whole
    /// ENIs stay free to give back.
    pub fn take(
        &mut self,
        owner: &Owner,
        pod: (&str, &str),
        now_ms: u64,
    ) -> Result<Allocation, PoolError> {
        if let Some(existing) = self.by_owner.get(owner) {
            return Ok(existing.clone());
        }
        let in_use = |base: Ipv4Addr| {
            prefix_addresses(base)
                .filter(|ip| !self.usable(*ip))
                .count()
        };
        let mut best: Option<(usize, Ipv4Addr, &str)> = None;
        // Lowest device index first: pods pack onto the first ENIs and the last ones empty out
        // to be given back.
        let mut enis: Vec<&PoolEni> = self.enis.values().filter(|e| e.open()).collect();
        enis.sort_by_key(|e| (e.eni.network_card, e.eni.device_index));
        for e in enis {
            if let Some(ip) = e.secondaries().iter().copied().find(|ip| self.usable(*ip)) {
                best = Some((usize::MAX, ip, &e.eni.id));
                break;
            }
            for base in &e.eni.prefixes {
                let used = in_use(*base);
                if best.is_some_and(|(b, _, _)| b >= used) {
                    continue;
                }
                if let Some(ip) = prefix_addresses(*base).find(|ip| self.usable(*ip)) {
                    best = Some((used, ip, &e.eni.id));
                }
            }
        }
        let Some((_, ipv4, eni)) = best else {
            let c = self.counts();
            return Err(PoolError::Empty {
                total: c.total,
                assigned: c.assigned,
                cooling: c.cooling,
            });
        };
        let allocation = Allocation {
            owner: owner.clone(),
            ipv4,
            eni: eni.to_owned(),
            pod_namespace: pod.0.to_owned(),
            pod_name: pod.1.to_owned(),
            allocated_at_ms: now_ms,
        };
        self.held.insert(ipv4, owner.clone());
        self.by_owner.insert(owner.clone(), allocation.clone());
        Ok(allocation)
    }

    /// Undoes a `take` that could not be persisted.
    pub fn untake(&mut self, owner: &Owner) {
        if let Some(a) = self.by_owner.remove(owner) {
            self.held.remove(&a.ipv4);
        }
    }

    /// Releases `owner`'s address into cooldown; None when it holds none (DEL is idempotent).
    pub fn release(&mut self, owner: &Owner, now_ms: u64) -> Option<Allocation> {
        let a = self.by_owner.remove(owner)?;
        self.held.remove(&a.ipv4);
        self.cooling.insert(a.ipv4, now_ms);
        Some(a)
    }

    /// Undoes a `release` that could not be persisted.
    pub fn unrelease(&mut self, allocation: Allocation) {
        self.cooling.remove(&allocation.ipv4);
        self.held.insert(allocation.ipv4, allocation.owner.clone());
        self.by_owner.insert(allocation.owner.clone(), allocation);
    }

    /// Ends the cooldown of addresses released at least `cooldown` ago.
    pub fn expire_cooling(&mut self, now_ms: u64, cooldown: Duration) {
        let cooldown = cooldown.as_millis() as u64;
        self.cooling
            .retain(|_, released| now_ms.saturating_sub(*released) < cooldown);
    }

    pub fn allocation(&self, owner: &Owner) -> Option<&Allocation> {
        self.by_owner.get(owner)
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.by_owner.values()
    }

    pub fn cooling(&self) -> impl Iterator<Item = (Ipv4Addr, u64)> + '_ {
        self.cooling.iter().map(|(ip, at)| (*ip, *at))
    }

    /// Restores checkpointed state onto the ENIs the pool holds; returns the allocations whose
    /// address is no longer on any of them (dropped).
    pub fn restore(
        &mut self,
        allocations: Vec<Allocation>,
        cooling: Vec<(Ipv4Addr, u64)>,
    ) -> Vec<Allocation> {
        let mut dropped = Vec::new();
        for mut a in allocations {
            match self.eni_of(a.ipv4) {
                Some(eni) if !self.held.contains_key(&a.ipv4) => {
                    a.eni = eni.to_owned();
                    self.held.insert(a.ipv4, a.owner.clone());
                    self.by_owner.insert(a.owner.clone(), a);
                }
                _ => dropped.push(a),
            }
        }
        for (ip, at) in cooling {
            if self.eni_of(ip).is_some() && !self.held.contains_key(&ip) {
                self.cooling.insert(ip, at);
            }
        }
        dropped
    }

    fn eni_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.enis
            .values()
            .find(|e| e.for_pods && e.pod_addresses().any(|a| a == ip))
            .map(|e| e.eni.id.as_str())
    }

    /// Brings the pool in line with the ENIs EC2 says are attached: ENIs detached or addresses
    /// unassigned behind eniflow's back leave the pool, new ones join it. A held address EC2
    /// does not list stays held until it has been missing for `grace` (so it is never handed
    /// to a second pod if it shows up again); then its allocation is returned as lost (its pod
    /// needs a new sandbox).
    pub fn reconcile(
        &mut self,
        attached: Vec<(Eni, bool)>,
        now_ms: u64,
        grace: Duration,
    ) -> Vec<Allocation> {
        let ids: BTreeSet<&str> = attached.iter().map(|(e, _)| e.id.as_str()).collect();
        self.enis
            .retain(|id, e| e.draining || ids.contains(id.as_str()));
        for (eni, for_pods) in attached {
            self.add_eni(eni, for_pods);
        }
        let present: BTreeSet<Ipv4Addr> = self.pod_addresses().into_iter().collect();
        self.cooling.retain(|ip, _| present.contains(ip));
        let absent: BTreeSet<Ipv4Addr> = self
            .held
            .keys()
            .filter(|ip| !present.contains(ip))
            .copied()
            .collect();
        self.missing.retain(|ip, _| absent.contains(ip));
        for ip in &absent {
            self.missing.entry(*ip).or_insert(now_ms);
        }
        let grace = grace.as_millis() as u64;
        let lost: Vec<Ipv4Addr> = self
            .missing
            .iter()
            .filter(|(_, since)| now_ms.saturating_sub(**since) >= grace)
            .map(|(ip, _)| *ip)
            .collect();
        lost.iter()
            .filter_map(|ip| {
                self.missing.remove(ip);
                let owner = self.held.remove(ip)?;
                self.by_owner.remove(&owner)
            })
            .collect()
    }

    /// Picks up to `count` free secondary addresses to give back and marks them leaving.
    pub fn pick_free_secondaries(&mut self, count: u32) -> Vec<(String, Vec<Ipv4Addr>)> {
        self.pick_free(count, |pool, e| {
            e.secondaries()
                .iter()
                .copied()
                .filter(|ip| pool.usable(*ip))
                .collect()
        })
    }

    /// Picks up to `count` wholly free prefixes to give back and marks them leaving.
    pub fn pick_free_prefixes(&mut self, count: u32) -> Vec<(String, Vec<Ipv4Addr>)> {
        self.pick_free(count, |pool, e| {
            e.eni
                .prefixes
                .iter()
                .copied()
                .filter(|base| prefix_addresses(*base).all(|ip| pool.usable(ip)))
                .collect()
        })
    }

    /// Up to `count` of the blocks `free` finds, from the highest device index down (the
    /// newest ENIs empty first), marked leaving.
    fn pick_free(
        &mut self,
        count: u32,
        free: impl Fn(&Pool, &PoolEni) -> Vec<Ipv4Addr>,
    ) -> Vec<(String, Vec<Ipv4Addr>)> {
        let mut enis: Vec<&PoolEni> = self.enis.values().filter(|e| e.open()).collect();
        enis.sort_by_key(|e| std::cmp::Reverse((e.eni.network_card, e.eni.device_index)));
        let mut picked: Vec<(String, Vec<Ipv4Addr>)> = Vec::new();
        let mut left = count as usize;
        for e in enis {
            if left == 0 {
                break;
            }
            let blocks: Vec<Ipv4Addr> = free(self, e).into_iter().take(left).collect();
            if !blocks.is_empty() {
                left -= blocks.len();
                picked.push((e.eni.id.clone(), blocks));
            }
        }
        for (_, blocks) in &picked {
            self.leaving.extend(blocks.iter().copied());
        }
        picked
    }

    /// Ends a give-back: `removed` blocks leave their ENI; either way they stop being "leaving".
    pub fn settle_leaving(&mut self, eni: &str, blocks: &[Ipv4Addr], removed: bool) {
        for b in blocks {
            self.leaving.remove(b);
        }
        if removed {
            if let Some(e) = self.enis.get_mut(eni) {
                let primary = e.eni.addresses.first().copied();
                e.eni
                    .addresses
                    .retain(|a| !blocks.contains(a) || Some(*a) == primary);
                e.eni.prefixes.retain(|p| !blocks.contains(p));
            }
        }
    }

    /// Picks up to `count` ENIs to detach: eniflow's own pod ENIs (never the primary, nor a trunk:
    /// it holds no pod address but carries every security-group pod), holding no assigned or
    /// cooling address, at least `min_age` old. Marks them draining.
    pub fn pick_free_enis(&mut self, count: u32, now: SystemTime, min_age: Duration) -> Vec<Eni> {
        let mut idle: Vec<&PoolEni> = self
            .enis
            .values()
            .filter(|e| !e.draining && e.eni.device_index != 0 && e.eni.attachment_id.is_some())
            .filter(|e| e.for_pods && !e.eni.trunk && e.eni.ours())
            .filter(|e| {
                e.eni.created_at.is_some_and(|created| {
                    now.duration_since(created).unwrap_or_default() >= min_age
                })
            })
            .filter(|e| {
                e.pod_addresses()
                    .all(|ip| !self.held.contains_key(&ip) && !self.cooling.contains_key(&ip))
            })
            .collect();
        // The smallest first (the plan counts whole ENIs; a part-filled one frees the least),
        // then the highest device index.
        idle.sort_by_key(|e| {
            (
                e.pod_addresses().count(),
                std::cmp::Reverse((e.eni.network_card, e.eni.device_index)),
            )
        });
        let ids: Vec<String> = idle
            .into_iter()
            .take(count as usize)
            .map(|e| e.eni.id.clone())
            .collect();
        let mut picked = Vec::new();
        for id in ids {
            if let Some(e) = self.enis.get_mut(&id) {
                e.draining = true;
                picked.push(e.eni.clone());
            }
        }
        picked
    }

    /// Retires the pod ENIs `follows` says are not of the node's ENIConfig (and un-retires
    /// those that are again); returns the ids newly retired.
    pub fn retire_unless(&mut self, follows: impl Fn(&Eni) -> bool) -> Vec<String> {
        let mut retired = Vec::new();
        for e in self
            .enis
            .values_mut()
            .filter(|e| e.for_pods && !e.eni.trunk)
        {
            let retire = !follows(&e.eni);
            if retire && !e.retired {
                retired.push(e.eni.id.clone());
            }
            e.retired = retire;
        }
        retired
    }

    /// Retired ENIs of eniflow's holding no assigned or cooling address, marked draining.
    pub fn pick_idle_retired(&mut self) -> Vec<Eni> {
        let idle: Vec<String> = self
            .enis
            .values()
            .filter(|e| e.retired && !e.draining && e.eni.ours() && e.eni.attachment_id.is_some())
            .filter(|e| e.pod_addresses().all(|ip| self.unheld(ip)))
            .map(|e| e.eni.id.clone())
            .collect();
        idle.iter()
            .filter_map(|id| {
                let e = self.enis.get_mut(id)?;
                e.draining = true;
                Some(e.eni.clone())
            })
            .collect()
    }

    /// Neither assigned nor cooling.
    fn unheld(&self, ip: Ipv4Addr) -> bool {
        !self.held.contains_key(&ip) && !self.cooling.contains_key(&ip)
    }

    /// A detach that failed: the ENI serves pods again.
    pub fn undrain(&mut self, id: &str) {
        if let Some(e) = self.enis.get_mut(id) {
            e.draining = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(id: &str, device: u32, addresses: &[&str], prefixes: &[&str]) -> Eni {
        Eni {
            id: id.into(),
            attachment_id: Some(format!("attach-{id}")),
            device_index: device,
            network_card: 0,
            subnet_id: "subnet-1".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            prefixes: prefixes.iter().map(|a| a.parse().unwrap()).collect(),
            created_at: (device > 0).then_some(SystemTime::UNIX_EPOCH),
            status: "in-use".into(),
            trunk: false,
            security_groups: vec![],
        }
    }

    fn owner(n: u32) -> Owner {
        Owner {
            network: "eniflow".into(),
            container_id: format!("c{n}"),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn take_is_idempotent_and_never_hands_out_an_address_twice() {
        let mut pool = Pool::default();
        pool.add_eni(
            eni("eni-0", 0, &["10.0.0.10", "10.0.0.11", "10.0.0.12"], &[]),
            true,
        );
        let a = pool.take(&owner(1), ("ns", "a"), 0).unwrap();
        assert_eq!(pool.take(&owner(1), ("ns", "a"), 5).unwrap(), a);
        let b = pool.take(&owner(2), ("ns", "b"), 0).unwrap();
        assert_ne!(a.ipv4, b.ipv4);
        assert!(matches!(
            pool.take(&owner(3), ("ns", "c"), 0),
            Err(PoolError::Empty {
                total: 2,
                assigned: 2,
                cooling: 0
            })
        ));
        // Released addresses cool before reuse.
        pool.release(&owner(1), 1_000);
        assert!(pool.take(&owner(3), ("ns", "c"), 1_000).is_err());
        pool.expire_cooling(60_000, Duration::from_secs(120));
        assert!(pool.take(&owner(3), ("ns", "c"), 60_000).is_err());
        pool.expire_cooling(121_000, Duration::from_secs(120));
        assert_eq!(
            pool.take(&owner(3), ("ns", "c"), 121_000).unwrap().ipv4,
            a.ipv4
        );
    }

    #[test]
    fn prefixes_fill_the_fullest_first_and_only_whole_free_ones_go_back() {
        let mut pool = Pool::default();
        pool.add_eni(
            eni("eni-0", 0, &["10.0.0.10"], &["10.0.1.0", "10.0.1.16"]),
            true,
        );
        for n in 0..3 {
            let a = pool.take(&owner(n), ("ns", "p"), 0).unwrap();
            assert_eq!(
                prefix_of(a.ipv4),
                prefix_of(pool.allocation(&owner(0)).unwrap().ipv4)
            );
        }
        assert_eq!(
            pool.counts(),
            warm::Pool {
                total: 32,
                assigned: 3,
                cooling: 0
            }
        );
        let picked = pool.pick_free_prefixes(2);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].1.len(), 1, "only the untouched prefix is free");
        // While leaving, nothing is taken from it.
        for n in 3..16 {
            pool.take(&owner(n), ("ns", "p"), 0).unwrap();
        }
        assert!(pool.take(&owner(16), ("ns", "p"), 0).is_err());
        let (eni_id, bases) = &picked[0];
        pool.settle_leaving(eni_id, bases, true);
        assert_eq!(pool.counts().total, 16);
    }

    #[test]
    fn a_retired_eni_keeps_its_pods_takes_no_new_one_and_goes_once_idle() {
        let mut pool = Pool::default();
        pool.add_eni(
            eni("eni-1", 1, &["10.0.1.10", "10.0.1.11", "10.0.1.12"], &[]),
            true,
        );
        let mut other = eni("eni-2", 2, &["10.0.2.10", "10.0.2.11"], &[]);
        other.subnet_id = "subnet-2".into();
        pool.add_eni(other, true);
        let first = pool.take(&owner(1), ("ns", "a"), 0).unwrap();
        assert_eq!(first.eni, "eni-1");
        // The node's ENIConfig moves to subnet-2: eni-1 is retired.
        let retired = pool.retire_unless(|e| e.subnet_id == "subnet-2");
        assert_eq!(retired, ["eni-1"]);
        assert!(
            pool.retire_unless(|e| e.subnet_id == "subnet-2").is_empty(),
            "once"
        );
        let second = pool.take(&owner(2), ("ns", "b"), 0).unwrap();
        assert_eq!(second.eni, "eni-2", "a new pod on the retired ENI");
        assert_eq!(
            pool.counts().total,
            1,
            "only eni-2's secondary counts as the pool"
        );
        // A reconcile keeps it retired; its pod keeps its address.
        pool.reconcile(
            vec![
                (
                    eni("eni-1", 1, &["10.0.1.10", "10.0.1.11", "10.0.1.12"], &[]),
                    true,
                ),
                (pool.enis()[1].clone(), true),
            ],
            0,
            Duration::from_secs(60),
        );
        assert_eq!(pool.allocation(&owner(1)), Some(&first));
        assert!(pool.pick_idle_retired().is_empty(), "it holds a pod");
        pool.release(&owner(1), 0);
        assert!(pool.pick_idle_retired().is_empty(), "its address cools");
        pool.expire_cooling(u64::MAX, Duration::ZERO);
        let picked: Vec<String> = pool.pick_idle_retired().into_iter().map(|e| e.id).collect();
        assert_eq!(picked, ["eni-1"]);
        assert!(pool.pick_idle_retired().is_empty(), "draining already");
    }

    #[test]
    fn only_idle_old_enis_of_ours_are_picked_to_detach() {
        let mut pool = Pool::default();
        pool.add_eni(eni("eni-0", 0, &["10.0.0.10", "10.0.0.11"], &[]), true);
        pool.add_eni(eni("eni-1", 1, &["10.0.0.20", "10.0.0.21"], &[]), true);
        pool.add_eni(eni("eni-2", 2, &["10.0.0.30", "10.0.0.31"], &[]), true);
        // Idle and old, but not eniflow's to detach: an ENI another tool attached, and a trunk
        // (made by eniflow, holding no pod address, carrying every security-group pod).
        let mut foreign = eni("eni-3", 3, &["10.0.0.40", "10.0.0.41"], &[]);
        foreign.created_at = None;
        pool.add_eni(foreign, true);
        let mut trunk = eni("eni-4", 4, &["10.0.0.50"], &[]);
        trunk.trunk = true;
        pool.add_eni(trunk, false);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(30);
        assert!(
            pool.pick_free_enis(3, now, Duration::from_secs(60))
                .is_empty(),
            "too young"
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(61);
        pool.take(&owner(1), ("ns", "a"), 0).unwrap();
        pool.take(&owner(2), ("ns", "b"), 0).unwrap();
        pool.release(&owner(2), 0);
        let picked: Vec<String> = pool
            .pick_free_enis(3, now, Duration::from_secs(60))
            .into_iter()
            .map(|e| e.id)
            .collect();
        // eni-0 is the primary; the others hold an assigned and a cooling address in order.
        let held_on: BTreeSet<&str> = [pool.allocation(&owner(1)).unwrap().eni.as_str()].into();
        assert!(picked
            .iter()
            .all(|id| id != "eni-0" && !held_on.contains(id.as_str())));
        assert_eq!(picked.len(), 1, "{picked:?}");
        assert!(
            pool.pick_free_enis(3, now, Duration::from_secs(60))
                .is_empty(),
            "neither the foreign ENI nor the trunk is picked"
        );
    }

    #[test]
    fn reconcile_follows_what_ec2_says_is_attached() {
        let mut pool = Pool::default();
        pool.add_eni(
            eni("eni-0", 0, &["10.0.0.10", "10.0.0.11", "10.0.0.12"], &[]),
            true,
        );
        pool.add_eni(eni("eni-1", 1, &["10.0.0.20", "10.0.0.21"], &[]), true);
        let on_primary = pool.take(&owner(1), ("ns", "a"), 0).unwrap();
        let on_second = pool.take(&owner(2), ("ns", "b"), 0).unwrap();
        assert_eq!(
            (on_primary.eni.as_str(), on_second.eni.as_str()),
            ("eni-0", "eni-0")
        );
        // eni-1 was detached and 10.0.0.11 unassigned behind the pool's back; eni-2 appeared.
        let grace = Duration::from_secs(60);
        let now_attached = || {
            vec![
                (eni("eni-0", 0, &["10.0.0.10", "10.0.0.12"], &[]), true),
                (eni("eni-2", 2, &["10.0.0.30", "10.0.0.31"], &[]), true),
            ]
        };
        // One answer without it is not proof (EC2 is eventually consistent): still held.
        assert!(pool.reconcile(now_attached(), 1_000, grace).is_empty());
        assert!(pool.allocation(&owner(1)).is_some());
        // It shows up again: nothing happened, the miss is forgotten.
        let with_it = vec![
            (
                eni("eni-0", 0, &["10.0.0.10", "10.0.0.11", "10.0.0.12"], &[]),
                true,
            ),
            (eni("eni-2", 2, &["10.0.0.30", "10.0.0.31"], &[]), true),
        ];
        assert!(pool.reconcile(with_it, 30_000, grace).is_empty());
        assert!(pool.reconcile(now_attached(), 40_000, grace).is_empty());
        assert!(
            pool.take(&owner(3), ("ns", "c"), 40_000)
                .is_ok_and(|a| a.ipv4 != "10.0.0.11".parse::<Ipv4Addr>().unwrap()),
            "a missing address is not handed to another pod"
        );
        pool.release(&owner(3), 40_000);
        // Missing for the whole grace (from 40 s): lost.
        let lost = pool.reconcile(now_attached(), 100_000, grace);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].ipv4, "10.0.0.11".parse::<Ipv4Addr>().unwrap());
        let addresses: Vec<String> = pool.pod_addresses().iter().map(|a| a.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.12", "10.0.0.31"]);
        assert!(pool.allocation(&owner(2)).is_some());
    }

    #[test]
    fn restore_drops_allocations_whose_address_is_gone() {
        let mut pool = Pool::default();
        pool.add_eni(eni("eni-0", 0, &["10.0.0.10", "10.0.0.11"], &[]), true);
        let keep = Allocation {
            owner: owner(1),
            ipv4: "10.0.0.11".parse().unwrap(),
            eni: "stale".into(),
            pod_namespace: String::new(),
            pod_name: String::new(),
            allocated_at_ms: 0,
        };
        let gone = Allocation {
            owner: owner(2),
            ipv4: "10.0.9.9".parse().unwrap(),
            ..keep.clone()
        };
        let dropped = pool.restore(vec![keep.clone(), gone.clone()], vec![]);
        assert_eq!(dropped, vec![gone]);
        assert_eq!(pool.allocation(&owner(1)).unwrap().eni, "eni-0");
    }
}
