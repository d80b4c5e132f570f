//! One lifecycle for every kind of pod. ADD takes the pod's address (one of the pool's, or its
//! own branch ENI's), wires the pod, and adds it to the data plane, unwinding all of it when a
//! step fails; DEL, GC and the agent's start take pods apart the same way whatever their kind.
//! The addresses, the wiring and the data plane sit behind `seams` (netavark's `NetworkDriver` is
//! the model), so every unwind path is tested here with fakes.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use eniflow_api::cni_errors;
use serde_json::Value;

use super::{
    error::{CniError, ErrorList},
    holds::{Hold, Want},
    network_policy::NetworkPolicy,
    plumbing::{Pod, Wired},
    pod_ips::PodIps,
    request::{host_veth_name, Request},
    result,
    seams::{Addresses, DataPlane, Wiring},
};
use crate::{
    datapath::{KnownPod, PodPort},
    ipam::{Allocation, Owner},
    metrics::AddStep,
};

/// How long an ADD waits for the ENI of the address it took to be set up on the node.
const ENI_READY_WAIT: Duration = Duration::from_secs(5);

/// The CNI verbs over the three seams.
pub struct Lifecycle<A, W, D> {
    addresses: A,
    wiring: W,
    plane: Arc<D>,
    /// AWS_VPC_K8S_CNI_VETHPREFIX: host veth names start with it.
    veth_prefix: String,
    /// ANNOTATE_POD_IP: added pods' addresses go on the pods.
    pod_ips: Option<PodIps>,
    /// NETWORK_POLICY_ENFORCING_MODE: the policy agent hears of each pod.
    network_policy: Option<NetworkPolicy>,
}

fn owner(r: &Request) -> Owner {
    Owner {
        network: r.network.clone(),
        container_id: r.container_id.clone(),
        ifname: r.ifname.clone(),
    }
}

impl<A: Addresses, W: Wiring, D: DataPlane> Lifecycle<A, W, D> {
    pub fn new(addresses: A, wiring: W, plane: Arc<D>, veth_prefix: String) -> Self {
        Lifecycle {
            addresses,
            wiring,
            plane,
            veth_prefix,
            pod_ips: None,
            network_policy: None,
        }
    }

    /// Tells the network policy agent of each pod wired and taken apart.
    pub fn with_network_policy(mut self, network_policy: NetworkPolicy) -> Self {
        self.network_policy = Some(network_policy);
        self
    }

    /// Annotates each added pod with its address (ANNOTATE_POD_IP).
    pub fn with_pod_ips(mut self, pod_ips: PodIps) -> Self {
        self.pod_ips = Some(pod_ips);
        self
    }

    /// The host veth of a pod's container (VPC CNI's naming).
    fn veth_of(&self, pod_namespace: &str, pod_name: &str, container_id: &str) -> String {
        host_veth_name(&self.veth_prefix, pod_namespace, pod_name, container_id)
    }

    fn veth(&self, hold: &Hold) -> String {
        if let Some(veth) = super::branch::taken_over_veth(hold.owner()) {
            return veth.to_owned();
        }
        let (namespace, name) = hold.pod();
        self.veth_of(namespace, name, &hold.owner().container_id)
    }

    fn pod(&self, r: &Request, hold: &Hold) -> Pod {
        Pod {
            netns: r.netns.clone(),
            ifname: r.ifname.clone(),
            host_veth: self.veth(hold),
            ipv4: hold.addr(),
            mtu: r.mtu,
        }
    }

    /// ADD: the pod's address, its wiring and its data plane; on a failure nothing of it is left
    /// (a repeated ADD keeps what the first one made).
    pub async fn add(&self, r: &Request) -> Result<Value, CniError> {
        if r.netns.as_os_str().is_empty() || !r.netns.exists() {
            return Err(CniError::new(
                cni_errors::INVALID_ENV,
                format!(
                    "CNI_NETNS {:?} does not exist",
                    r.netns.display().to_string()
                ),
            ));
        }
        let want = match self.addresses.branch_of(r).await? {
            None => Want::Pool,
            Some(branch) => {
                let Some(trunk_eni) = self.plane.trunk_eni() else {
                    return Err(CniError::new(
                        cni_errors::TRY_AGAIN_LATER,
                        format!(
                            "annotation {}: branch ENI {} needs the node's trunk ENI, and none is attached (ENABLE_POD_ENI; the VPC resource controller or --create-trunk attaches it)",
                            super::branch::ANNOTATION,
                            branch.eni_id
                        ),
                    ));
                };
                Want::Branch { branch, trunk_eni }
            }
        };
        let owner = owner(r);
        let repeated = self
            .addresses
            .held(&owner)
            .is_some_and(|held| held.is_kind_of(&want));
        let hold = self
            .addresses
            .take(&owner, (&r.pod_namespace, &r.pod_name), want)
            .await?;
        let wired = match self.wire(r, &hold, repeated).await {
            Ok(wired) => wired,
            Err(e) => {
                // Nothing was handed out on a failed first ADD: what it took goes back.
                if !repeated {
                    self.addresses.undo(&hold).await;
                }
                return Err(e);
            }
        };
        let pod = self.pod(r, &hold);
        if let Some(policy) = &self.network_policy {
            if let Err(e) = policy.enforce(&r.pod_namespace, &r.pod_name).await {
                // A first ADD leaves nothing; a repeated one keeps what the first made.
                if !repeated {
                    let veths = BTreeSet::from([pod.host_veth.clone()]);
                    let mut errors = ErrorList::default();
                    if self.unplug(Some(&hold), &veths, &mut errors).await {
                        self.addresses.undo(&hold).await;
                    }
                    if let Err(left) = errors.into_result() {
                        tracing::warn!("unwinding {}: {}", r.container_id, left.msg);
                    }
                }
                return Err(e);
            }
        }
        tracing::info!(
            "ADD {} {}/{}: {hold}, veth {}",
            r.container_id,
            r.pod_namespace,
            r.pod_name,
            pod.host_veth
        );
        if let Some(pod_ips) = &self.pod_ips {
            pod_ips
                .annotate(&r.pod_namespace, &r.pod_name, pod.ipv4)
                .await;
        }
        Ok(result::added(&result::Added {
            cni_version: &r.cni_version,
            host_veth: &pod.host_veth,
            host_mac: wired.host_mac,
            ifname: &r.ifname,
            pod_mac: wired.pod_mac,
            netns: &r.netns.display().to_string(),
            ipv4: pod.ipv4,
        }))
    }

    /// Waits for the hold's ENI, wires the pod (a repeated ADD of a wired pod keeps the first
    /// wiring) and adds it to the data plane. On failure nothing of the wiring is left.
    async fn wire(&self, r: &Request, hold: &Hold, repeated: bool) -> Result<Wired, CniError> {
        // An address of an ENI attached moments ago: its interface (or IMDS's word on it) may
        // lag the attach, and until the watcher has set the ENI up the pod's packets could not
        // leave by it.
        if !self.plane.wait_for_eni(hold.eni(), ENI_READY_WAIT).await {
            return Err(CniError::new(
                cni_errors::TRY_AGAIN_LATER,
                format!(
                    "{} belongs to ENI {}, which is not set up on the node after {ENI_READY_WAIT:?} (its interface or IMDS lags the attach); retry",
                    hold.addr(),
                    hold.eni()
                ),
            ));
        }
        let pod = self.pod(r, hold);
        let checked = if repeated {
            self.wiring.check(&pod).await.ok()
        } else {
            None
        };
        let wired = match checked {
            Some(wired) => wired,
            None => {
                let started = Instant::now();
                let wired = self.wiring.add(&pod).await?;
                crate::metrics::get().add_step(AddStep::Veth, started.elapsed());
                wired
            }
        };
        let port = PodPort {
            addr: hold.addr(),
            eni_id: hold.eni().to_owned(),
            host_ifindex: wired.host_ifindex,
            host_mac: wired.host_mac,
            pod_mac: wired.pod_mac,
            branch: hold.branch_link(),
        };
        if let Err(e) = self.plane.add_pod(&pod.host_veth, port).await {
            // Half a pod is no pod: the veth goes too.
            let _ = self.wiring.del(&pod.host_veth).await;
            return Err(CniError::new(
                cni_errors::PLUMBING_FAILED,
                format!("data plane for {}: {e}", pod.host_veth),
            ));
        }
        Ok(wired)
    }

    /// DEL: unwires and gives back what the pod held; what is already gone is success.
    pub async fn del(&self, r: &Request) -> Result<(), CniError> {
        // The request's name too: a pod imported from VPC CNI's checkpoint may carry no name.
        let named = self.veth_of(&r.pod_namespace, &r.pod_name, &r.container_id);
        // A branch pod taken over from VPC CNI is held by its veth (VPC CNI's strict mode
        // names it `vlan…`), not by its container.
        let vpc_cni_names = crate::vpc_cni::takeover::vpc_cni_veth_names(&named, &self.veth_prefix);
        let hold = self.addresses.held(&owner(r)).or_else(|| {
            vpc_cni_names
                .iter()
                .find_map(|v| self.addresses.held(&super::branch::taken_over_owner(v)))
        });
        let mut veths = BTreeSet::from([named]);
        if let Some(hold) = &hold {
            veths.insert(self.veth(hold));
        }
        self.unwire(hold.as_ref(), &veths).await?;
        if let Some(policy) = &self.network_policy {
            if !r.pod_name.is_empty() {
                policy.forget(&r.pod_namespace, &r.pod_name).await;
            }
        }
        Ok(())
    }

    /// Takes the pod out of the maps (first, so nothing is steered into a veth being deleted),
    /// deletes `veths`, forgets the veth's hooks, then gives back the hold, unless a veth is
    /// still there (its address must not go to another pod before the retried DEL removes
    /// it). Goes on past each failure and reports them all.
    async fn unwire(&self, hold: Option<&Hold>, veths: &BTreeSet<String>) -> Result<(), CniError> {
        let mut errors = ErrorList::default();
        let all_gone = self.unplug(hold, veths, &mut errors).await;
        if let (Some(hold), true) = (hold, all_gone) {
            errors.check(self.addresses.release(hold).await);
        }
        errors.into_result()
    }

    /// The data plane and veth part of `unwire`; returns whether every veth is gone.
    async fn unplug(
        &self,
        hold: Option<&Hold>,
        veths: &BTreeSet<String>,
        errors: &mut ErrorList,
    ) -> bool {
        let ifindex = hold.and_then(|h| self.plane.remove_pod(h.addr()));
        let mut all_gone = true;
        for veth in veths {
            if let Err(e) = self.wiring.del(veth).await {
                all_gone = false;
                errors.push(e);
            }
        }
        if let Some(ifindex) = ifindex {
            self.plane.forget_interface(ifindex).await;
        }
        all_gone
    }

    /// A pod whose address the node lost (reconcile, or a restart, found it on none of the
    /// node's ENIs; the pool has forgotten it): its map entries and veth go, so that address
    /// reaches nothing if EC2 gives it to another pod, and the runtime sees the pod broken.
    pub async fn unwire_lost(&self, lost: Allocation) -> Result<(), CniError> {
        let hold = Hold::Pool(lost);
        let mut errors = ErrorList::default();
        self.unplug(
            Some(&hold),
            &BTreeSet::from([self.veth(&hold)]),
            &mut errors,
        )
        .await;
        errors.into_result()
    }

    /// CHECK: the pod's wiring is in place.
    pub async fn check(&self, r: &Request) -> Result<(), CniError> {
        let hold = self.addresses.held(&owner(r)).ok_or_else(|| {
            CniError::new(
                cni_errors::UNKNOWN_CONTAINER,
                format!(
                    "no address is allocated to container {} ({})",
                    r.container_id, r.ifname
                ),
            )
        })?;
        self.wiring
            .check(&self.pod(r, &hold))
            .await
            .map(|_| ())
            .map_err(|e| CniError::new(cni_errors::PLUMBING_FAILED, e.to_string()))
    }

    /// STATUS: ready when the pool has a free address for the next ADD.
    pub fn status(&self) -> Result<(), CniError> {
        let c = self.addresses.counts();
        if c.total > c.assigned + c.cooling {
            return Ok(());
        }
        Err(CniError::new(
            cni_errors::NOT_READY,
            format!(
                "no free address yet ({} held, {} assigned, {} cooling); the refill loop is adding more",
                c.total, c.assigned, c.cooling
            ),
        ))
    }

    /// GC: unwires this network's pods the runtime no longer knows. The valid attachments come
    /// under the spec's `cni.dev/valid-attachments` (CNI 1.1) or the `cni.dev/attachments` some
    /// runtimes send; a request with neither lists nothing, and nothing is unwired.
    pub async fn gc(&self, r: &Request) -> Result<(), CniError> {
        let Some(valid) = super::request::valid_attachments(&r.config) else {
            tracing::warn!(
                "GC of network {}: no cni.dev/valid-attachments in the request, so every pod counts as attached; nothing unwired",
                r.network
            );
            return Ok(());
        };
        for hold in self.addresses.all() {
            let owner = hold.owner();
            let key = (owner.container_id.clone(), owner.ifname.clone());
            // A pod taken over from VPC CNI by its veth has no container id to match: its DEL
            // (by pod name) releases it.
            let unmatchable = super::branch::taken_over_veth(owner).is_some();
            if owner.network != r.network || valid.contains(&key) || unmatchable {
                continue;
            }
            tracing::info!("GC {}: {hold} is no longer attached", owner.container_id);
            self.unwire(Some(&hold), &BTreeSet::from([self.veth(&hold)]))
                .await?;
        }
        Ok(())
    }

    /// At start: gives back what pods held whose veth is gone (deleted while the agent was
    /// down: DEL succeeds without it). Returns how many.
    pub async fn release_unwired(&self) -> usize {
        let mut released = 0;
        for hold in self.addresses.all() {
            let veth = self.veth(&hold);
            if self.wiring.exists(&veth).await {
                continue;
            }
            if self
                .unwire(Some(&hold), &BTreeSet::from([veth.clone()]))
                .await
                .is_ok()
            {
                tracing::info!(
                    "{hold} of {}: its veth {veth} is gone; released",
                    hold.owner().container_id
                );
                released += 1;
            }
        }
        released
    }

    /// At start, after `release_unwired`: re-adopts the data plane of the pods still held (and
    /// takes over those VPC CNI wired); returns how many of each.
    pub async fn restore_data_plane(&self) -> (usize, usize) {
        let known: Vec<KnownPod> = self
            .addresses
            .all()
            .iter()
            .map(|hold| KnownPod {
                addr: hold.addr(),
                host_veth: self.veth(hold),
                eni_id: hold.eni().to_owned(),
                branch: hold.branch_link(),
            })
            .collect();
        self.plane.restore(&known).await
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
