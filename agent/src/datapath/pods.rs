//! The data plane as the CNI service and the ENI watcher use it: a pod's programs and map
//! entries go in on ADD and out on DEL, ENIs and the VPC's CIDRs are kept current, and a
//! restarted agent re-adopts the pods an earlier one wired.

use std::{net::Ipv4Addr, sync::Mutex, time::Instant};

use super::{BranchLink, Datapath, DatapathError, EniPort, Forwarding, Modes, PodPort};
use crate::metrics::AddStep;

pub struct Plane {
    datapath: tokio::sync::Mutex<Datapath>,
    forwarding: Mutex<Forwarding>,
    /// Woken whenever the watcher updates the ENI table.
    enis_changed: tokio::sync::Notify,
}

/// A pod the agent knows from its checkpoint, with its host veth's name.
pub struct KnownPod {
    pub addr: Ipv4Addr,
    pub eni_id: String,
    pub host_veth: String,
    pub branch: Option<BranchLink>,
}

impl Plane {
    pub fn new(datapath: Datapath) -> Result<Plane, DatapathError> {
        let forwarding = Forwarding::open(datapath.pins())?;
        Ok(Plane {
            datapath: tokio::sync::Mutex::new(datapath),
            forwarding: Mutex::new(forwarding),
            enis_changed: tokio::sync::Notify::new(),
        })
    }

    fn forwarding(&self) -> std::sync::MutexGuard<'_, Forwarding> {
        self.forwarding.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches the pod programs to its host veth (`host_veth`, ifindex `pod.host_ifindex`) and
    /// adds the pod's entries. On failure nothing of the pod stays in the data plane.
    pub async fn add_pod(&self, host_veth: &str, pod: PodPort) -> Result<(), DatapathError> {
        let (addr, ifindex) = (pod.addr, pod.host_ifindex);
        let metrics = crate::metrics::get();
        let mut datapath = self.datapath.lock().await;
        let started = Instant::now();
        datapath.attach_pod_veth(host_veth, ifindex).await?;
        metrics.add_step(AddStep::Attach, started.elapsed());
        let started = Instant::now();
        // Bound first: a guard in the `if let` would live through the block, and the second
        // lock of the same mutex would deadlock.
        let added = self.forwarding().add_pod(pod);
        metrics.add_step(AddStep::Maps, started.elapsed());
        if let Err(e) = added {
            self.forwarding().remove_pod(addr);
            datapath.forget_hooks(ifindex);
            return Err(e);
        }
        Ok(())
    }

    /// A pod another CNI wired: its entries first, then its programs. Until the programs are
    /// on its veth the stack still carries what it sends; were the programs first, a reply
    /// the stack delivered meanwhile would mark the pod's flow as the stack's for good.
    async fn add_taken_over(&self, host_veth: &str, pod: PodPort) -> Result<(), DatapathError> {
        let (addr, ifindex) = (pod.addr, pod.host_ifindex);
        let mut datapath = self.datapath.lock().await;
        let added = self.forwarding().add_pod(pod);
        if let Err(e) = added {
            self.forwarding().remove_pod(addr);
            return Err(e);
        }
        if let Err(e) = datapath.attach_pod_veth(host_veth, ifindex).await {
            self.forwarding().remove_pod(addr);
            datapath.forget_hooks(ifindex);
            return Err(e);
        }
        Ok(())
    }

    /// Takes the pod's entries out (before its veth is deleted, so nothing is steered into a
    /// dying interface); returns its veth's ifindex for `forget_interface`.
    pub fn remove_pod(&self, addr: Ipv4Addr) -> Option<u32> {
        self.forwarding().remove_pod(addr)
    }

    /// After an interface (a pod's veth, a detached ENI) is deleted: its attachment records and
    /// link pins go too.
    pub async fn forget_interface(&self, ifindex: u32) {
        self.datapath.lock().await.forget_hooks(ifindex);
    }

    /// Attaches the ENI programs to each ENI and makes the ENI table and destinations current.
    pub async fn set_enis(
        &self,
        enis: Vec<EniPort>,
        vpc_cidrs: &[(Ipv4Addr, u8)],
    ) -> Result<(), DatapathError> {
        {
            let mut datapath = self.datapath.lock().await;
            for eni in &enis {
                if !self.forwarding().enis().any(|e| e == eni) {
                    datapath.attach_eni(&eni.ifname).await?;
                }
            }
        }
        let node_addrs: Vec<Ipv4Addr> = enis.iter().map(|e| e.primary).collect();
        let gone = {
            let mut forwarding = self.forwarding();
            forwarding.set_destinations(vpc_cidrs, &node_addrs)?;
            forwarding.set_enis(enis)?
        };
        self.enis_changed.notify_waiters();
        // A detached ENI's interface is gone, and its programs with it: its records and link
        // pins go too (an interface that is still there keeps what is attached to it).
        for ifindex in gone {
            if crate::netlink::ifname(ifindex).is_none() {
                tracing::info!("ENI ifindex {ifindex} is gone; its attachments are forgotten");
                self.forget_interface(ifindex).await;
            }
        }
        Ok(())
    }

    /// Waits until ENI `id` is in the ENI table (its interface found and set up), at most
    /// `limit`; false if it is not by then.
    pub async fn wait_for_eni(&self, id: &str, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Made before the check: a table update in between still wakes it.
            let changed = self.enis_changed.notified();
            if self.forwarding().enis().any(|e| e.id == id) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// The trunk ENI, once the watcher has reported one.
    pub fn trunk(&self) -> Option<EniPort> {
        self.forwarding().trunk().cloned()
    }

    /// The node-wide modes of delivery and routing.
    pub fn set_modes(&self, modes: Modes) -> Result<(), DatapathError> {
        self.forwarding().set_modes(modes)
    }

    /// The pods in the maps now.
    pub fn carried_pods(&self) -> Vec<PodPort> {
        self.forwarding().pods().cloned().collect()
    }

    /// The ENIs in the table now.
    pub fn enis(&self) -> Vec<EniPort> {
        self.forwarding().enis().cloned().collect()
    }

    /// The ifindexes of the ENIs in the table.
    pub fn eni_ifindexes(&self) -> Vec<u32> {
        self.forwarding().enis().map(|e| e.ifindex).collect()
    }

    /// Re-adopts the pods an earlier agent wired: each known pod whose veth still exists keeps
    /// (or gets back) its programs and entries; pinned entries of anything else are removed.
    /// A known pod with no entry was wired by VPC CNI (imported from its checkpoint, or found by
    /// its VLAN device): it is taken over, its MACs read from its veth pair, once its ENI is set
    /// up. Returns how many pods were re-adopted and how many taken over.
    pub async fn restore(&self, known: &[KnownPod]) -> (usize, usize) {
        let pinned = self.forwarding().pinned_pods();
        let (mut adopted, mut taken_over) = (0, 0);
        // An ENI that did not come is not waited for again by its next pod.
        let mut missing = std::collections::BTreeSet::new();
        // One socket for every pod taken over.
        let nl = crate::netlink::connect();
        for pod in known {
            let Ok(ifindex) = super::ifindex(&pod.host_veth) else {
                continue;
            };
            let port = match pinned.iter().find(|(a, _)| *a == pod.addr) {
                Some((_, entry)) if entry.host_ifindex == ifindex => PodPort {
                    addr: pod.addr,
                    eni_id: pod.eni_id.clone(),
                    host_ifindex: entry.host_ifindex,
                    host_mac: entry.host_mac,
                    pod_mac: entry.pod_mac,
                    branch: pod.branch.clone(),
                },
                Some(_) => continue,
                None => match self
                    .take_over(nl.as_ref(), pod, ifindex, &mut missing)
                    .await
                {
                    Ok(port) => port,
                    Err(e) => {
                        tracing::warn!(
                            "pod {} (veth {}): not taken over, the stack still routes it: {e}",
                            pod.addr,
                            pod.host_veth
                        );
                        continue;
                    }
                },
            };
            let added = if pinned.iter().any(|(a, _)| *a == pod.addr) {
                self.add_pod(&pod.host_veth, port)
                    .await
                    .map(|()| adopted += 1)
            } else {
                self.add_taken_over(&pod.host_veth, port)
                    .await
                    .map(|()| taken_over += 1)
            };
            if let Err(e) = added {
                tracing::warn!("pod {}: cannot re-adopt its data plane: {e}", pod.addr);
            }
        }
        let stale: Vec<Ipv4Addr> = {
            let forwarding = self.forwarding();
            pinned
                .iter()
                .map(|(a, _)| *a)
                .filter(|a| !forwarding.pods().any(|p| p.addr == *a))
                .collect()
        };
        for addr in stale {
            self.remove_pod(addr);
        }
        // Interfaces that are gone take their records and link pins with them (an ifindex that
        // exists again belongs to someone else now and keeps them).
        let gone = self.datapath.lock().await.forget_gone_interfaces();
        if !gone.is_empty() {
            tracing::info!(
                "forgot the attachments of {} interface(s) that are gone",
                gone.len()
            );
        }
        (adopted, taken_over)
    }

    /// The entry of a pod another CNI wired on the same veth shape as eniflow's: the host
    /// veth's MAC, the pod's eth0 MAC (from the pod's namespace), once its ENI is set up.
    async fn take_over(
        &self,
        nl: Result<&rtnetlink::Handle, &std::io::Error>,
        pod: &KnownPod,
        ifindex: u32,
        missing: &mut std::collections::BTreeSet<String>,
    ) -> Result<PodPort, String> {
        if missing.contains(&pod.eni_id) || !self.wait_for_eni(&pod.eni_id, TAKEOVER_ENI_WAIT).await
        {
            missing.insert(pod.eni_id.clone());
            return Err(format!(
                "its ENI {} is not set up after {TAKEOVER_ENI_WAIT:?}",
                pod.eni_id
            ));
        }
        let nl = nl.map_err(|e| format!("netlink socket: {e}"))?;
        let macs = crate::netlink::veth_macs(nl, ifindex)
            .await
            .map_err(|e| format!("read the veth pair: {e}"))?
            .ok_or("the veth has no MAC or no peer in another namespace")?;
        Ok(PodPort {
            addr: pod.addr,
            eni_id: pod.eni_id.clone(),
            host_ifindex: ifindex,
            host_mac: macs.host,
            pod_mac: macs.peer,
            branch: pod.branch.clone(),
        })
    }
}

/// How long a takeover waits for a pod's ENI to be set up by the watcher.
const TAKEOVER_ENI_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
