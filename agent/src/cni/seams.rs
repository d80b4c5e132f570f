//! The pod lifecycle's three seams (where addresses come from, how a pod is wired, its data
//! plane) and the node's real parts behind them; the lifecycle's tests put fakes there.

use std::{future::Future, net::Ipv4Addr, sync::Arc, time::Duration};

use rtnetlink::Handle;

use super::{
    branch::{self, Branch, BranchPod, BranchPods, FromApi},
    error::CniError,
    holds::{Hold, Want},
    plumbing::{self, PlumbingError, Pod, Wired},
    request::Request,
};
use crate::{
    datapath::{DatapathError, KnownPod, Plane, PodPort},
    events::Kind,
    ipam::{pool::PoolError, warm, Ipam, IpamError, Owner},
};

/// Where pods' addresses come from: the pool, and the branch ENIs of security-group pods.
pub trait Addresses: Send + Sync {
    /// The branch ENI the request's pod needs, if it needs one.
    fn branch_of(
        &self,
        r: &Request,
    ) -> impl Future<Output = Result<Option<Branch>, CniError>> + Send;
    fn held(&self, owner: &Owner) -> Option<Hold>;
    /// Every hold, the pool's first.
    fn all(&self) -> Vec<Hold>;
    /// Takes what `want` names for `owner` (the same for a repeated ADD), persisted before it
    /// returns. Never calls EC2.
    fn take(
        &self,
        owner: &Owner,
        pod: (&str, &str),
        want: Want,
    ) -> impl Future<Output = Result<Hold, CniError>> + Send;
    /// Gives back the hold of a pod that was wired (its address or VLAN cools first).
    fn release(&self, hold: &Hold) -> impl Future<Output = Result<(), CniError>> + Send;
    /// Gives back the hold of a first ADD that failed.
    fn undo(&self, hold: &Hold) -> impl Future<Output = ()> + Send;
    fn counts(&self) -> warm::Pool;
}

/// A pod's veth pair, its addresses and routes (`plumbing`).
pub trait Wiring: Send + Sync {
    fn add(&self, pod: &Pod) -> impl Future<Output = Result<Wired, PlumbingError>> + Send;
    fn check(&self, pod: &Pod) -> impl Future<Output = Result<Wired, PlumbingError>> + Send;
    /// Deletes the host veth (and its peer); one that is gone is success.
    fn del(&self, host_veth: &str) -> impl Future<Output = Result<(), PlumbingError>> + Send;
    /// Whether the host veth exists (a doubt counts as yes).
    fn exists(&self, host_veth: &str) -> impl Future<Output = bool> + Send;
}

/// The pod's programs and map entries (`datapath::Plane`).
pub trait DataPlane: Send + Sync {
    fn wait_for_eni(&self, id: &str, limit: Duration) -> impl Future<Output = bool> + Send;
    fn trunk_eni(&self) -> Option<String>;
    fn add_pod(
        &self,
        host_veth: &str,
        pod: PodPort,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;
    /// Takes the pod's entries out; returns its veth's ifindex.
    fn remove_pod(&self, addr: Ipv4Addr) -> Option<u32>;
    fn forget_interface(&self, ifindex: u32) -> impl Future<Output = ()> + Send;
    /// Re-adopts (and takes over) the known pods; returns how many of each.
    fn restore(&self, known: &[KnownPod]) -> impl Future<Output = (usize, usize)> + Send;
}

/// The node's pool and its branch pods. What they change is written to disk (fsync) before
/// they answer: that runs on the runtime's blocking threads, never its two async ones.
pub struct Sources {
    ipam: Arc<Ipam>,
    branches: Arc<BranchPods>,
    /// In a cluster with ENABLE_POD_ENI: pods' branch ENIs the runtime did not pass.
    pod_annotations: Option<FromApi>,
    /// In a cluster: why a pod got no address goes on the pod.
    events: Option<crate::events::Recorder>,
}

impl Sources {
    pub fn new(
        ipam: Arc<Ipam>,
        branches: Arc<BranchPods>,
        pod_annotations: Option<FromApi>,
        events: Option<crate::events::Recorder>,
    ) -> Self {
        Sources {
            ipam,
            branches,
            pod_annotations,
            events,
        }
    }
}

impl Addresses for Sources {
    /// The runtimeConfig's annotation; without one, the pod's annotation in the API.
    async fn branch_of(&self, r: &Request) -> Result<Option<Branch>, CniError> {
        let branch = branch::from_config(&r.config)?;
        match (&branch, &self.pod_annotations) {
            (None, Some(from_api)) if !r.pod_name.is_empty() => {
                Ok(from_api.branch(&r.pod_namespace, &r.pod_name).await?)
            }
            _ => Ok(branch),
        }
    }

    fn held(&self, owner: &Owner) -> Option<Hold> {
        self.branches
            .get(owner)
            .map(Hold::Branch)
            .or_else(|| self.ipam.allocation(owner).map(Hold::Pool))
    }

    fn all(&self) -> Vec<Hold> {
        let pool = self.ipam.allocations().into_iter().map(Hold::Pool);
        pool.chain(self.branches.all().into_iter().map(Hold::Branch))
            .collect()
    }

    async fn take(&self, owner: &Owner, pod: (&str, &str), want: Want) -> Result<Hold, CniError> {
        let (ipam, branches, owner) = (self.ipam.clone(), self.branches.clone(), owner.clone());
        let events = self.events.clone();
        let (namespace, name) = (pod.0.to_owned(), pod.1.to_owned());
        blocking(move || match want {
            Want::Pool => {
                crate::faults::inject("take").map_err(|e| {
                    CniError::new(eniflow_api::cni_errors::IO_FAILURE, e.to_string())
                })?;
                let assigned = ipam.assign(&owner, (&namespace, &name));
                if let Err(e @ IpamError::Pool(PoolError::Empty { .. })) = &assigned {
                    // Why the pool is empty goes on the pod and into the runtime's error.
                    if let Some((reason, message)) = ipam.why_empty() {
                        let error = CniError::new(
                            eniflow_api::cni_errors::TRY_AGAIN_LATER,
                            format!("{e}; {message}"),
                        );
                        if let Some(events) = &events {
                            events.pod(&namespace, &name, Kind::Warning, reason, message);
                        }
                        return Err(error);
                    }
                }
                Ok(Hold::Pool(assigned?))
            }
            Want::Branch { branch, trunk_eni } => {
                let held = BranchPod {
                    owner,
                    branch,
                    trunk_eni,
                    pod_namespace: namespace,
                    pod_name: name,
                };
                branches.add(held.clone())?;
                Ok(Hold::Branch(held))
            }
        })
        .await
    }

    async fn release(&self, hold: &Hold) -> Result<(), CniError> {
        let (ipam, branches, hold) = (self.ipam.clone(), self.branches.clone(), hold.clone());
        blocking(move || {
            match hold {
                Hold::Pool(a) => ipam.release(&a.owner).map(drop)?,
                Hold::Branch(p) => branches.remove(&p.owner).map(drop)?,
            }
            Ok(())
        })
        .await
    }

    async fn undo(&self, hold: &Hold) {
        let (ipam, branches, hold) = (self.ipam.clone(), self.branches.clone(), hold.clone());
        let _ = blocking(move || {
            match hold {
                // To cool, as any release.
                Hold::Pool(a) => drop(ipam.release(&a.owner)),
                // It never carried traffic: its VLAN does not cool.
                Hold::Branch(p) => drop(branches.forget(&p.owner)),
            }
            Ok(())
        })
        .await;
    }

    fn counts(&self) -> warm::Pool {
        self.ipam.counts()
    }
}

/// Runs `f` (a checkpoint write, with its fsyncs) on the runtime's blocking threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CniError> + Send + 'static,
) -> Result<T, CniError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(CniError::new(
            eniflow_api::cni_errors::IO_FAILURE,
            format!("the checkpoint write did not finish: {e}"),
        ))
    })
}

/// The wiring of pods on this node, through a route netlink socket of the host's namespace.
pub struct HostWiring {
    host: Handle,
}

impl HostWiring {
    pub fn new(host: Handle) -> HostWiring {
        HostWiring { host }
    }
}

impl Wiring for HostWiring {
    async fn add(&self, pod: &Pod) -> Result<Wired, PlumbingError> {
        plumbing::add(&self.host, pod).await
    }

    async fn check(&self, pod: &Pod) -> Result<Wired, PlumbingError> {
        plumbing::check(&self.host, pod).await
    }

    async fn del(&self, host_veth: &str) -> Result<(), PlumbingError> {
        plumbing::del(&self.host, host_veth).await
    }

    async fn exists(&self, host_veth: &str) -> bool {
        plumbing::exists(&self.host, host_veth).await
    }
}

impl DataPlane for Plane {
    async fn wait_for_eni(&self, id: &str, limit: Duration) -> bool {
        Plane::wait_for_eni(self, id, limit).await
    }

    fn trunk_eni(&self) -> Option<String> {
        self.trunk().map(|t| t.id)
    }

    async fn add_pod(&self, host_veth: &str, pod: PodPort) -> Result<(), DatapathError> {
        Plane::add_pod(self, host_veth, pod).await
    }

    fn remove_pod(&self, addr: Ipv4Addr) -> Option<u32> {
        Plane::remove_pod(self, addr)
    }

    async fn forget_interface(&self, ifindex: u32) {
        Plane::forget_interface(self, ifindex).await
    }

    async fn restore(&self, known: &[KnownPod]) -> (usize, usize) {
        Plane::restore(self, known).await
    }
}
