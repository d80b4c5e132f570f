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

    /// The ifindexes of the ENIs in the table.
    pub fn eni_ifindexes(&self) -> Vec<u32> {
        self.forwarding().enis().map(|e| e.ifindex).collect()
    }

    /// Re-adopts the pods an earlier agent wired: each known pod whose veth still exists keeps
    /// (or gets back) its programs and entries; pinned entries of anything else are removed.
    /// Returns how many pods were re-adopted.
    pub async fn restore(&self, known: &[KnownPod]) -> usize {
        let pinned = self.forwarding().pinned_pods();
        let mut adopted = 0;
        for pod in known {
            let Some((_, entry)) = pinned.iter().find(|(a, _)| *a == pod.addr) else {
                // Wired by another CNI (an imported VPC CNI pod): the stack routes it.
                continue;
            };
            match super::ifindex(&pod.host_veth) {
                Ok(ifindex) if ifindex == entry.host_ifindex => {}
                _ => continue,
            }
            let port = PodPort {
                addr: pod.addr,
                eni_id: pod.eni_id.clone(),
                host_ifindex: entry.host_ifindex,
                host_mac: entry.host_mac,
                pod_mac: entry.pod_mac,
                branch: pod.branch.clone(),
            };
            match self.add_pod(&pod.host_veth, port).await {
                Ok(()) => adopted += 1,
                Err(e) => tracing::warn!("pod {}: cannot re-adopt its data plane: {e}", pod.addr),
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
        adopted
    }
}
