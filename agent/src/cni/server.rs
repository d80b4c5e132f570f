//! The agent's gRPC service on its unix socket: each CNI command from the shim, answered with the
//! exact JSON the shim prints. ADD takes an address from the pool (never waiting on EC2) and wires
//! the pod; DEL unwires and releases, and succeeds for what is already gone.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use eniflow_api::{
    cni_errors, compatible,
    v1::{
        cni_server::{Cni, CniServer},
        CniReply, CniRequest,
    },
    PROTOCOL,
};
use rtnetlink::Handle;
use serde_json::Value;
use tonic::{Request as GrpcRequest, Response, Status};

use super::{
    branch::{self, Branch, BranchPod, BranchPods},
    plumbing::{self, Pod, Wired},
    request::{self, host_veth_name, CniError, Request},
    result,
};
use crate::{
    datapath::{BranchLink, KnownPod, Plane, PodPort},
    ipam::{Ipam, IpamError, Owner, PoolError},
};

/// How long an ADD waits for the ENI of the address it took to be set up on the node.
const ENI_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The CNI service.
pub struct Service {
    ipam: Arc<Ipam>,
    plane: Arc<Plane>,
    branches: BranchPods,
    host: Handle,
    /// AWS_VPC_K8S_CNI_VETHPREFIX: host veth names start with it.
    veth_prefix: String,
    /// In a cluster with ENABLE_POD_ENI: pods' branch ENIs the runtime did not pass.
    pod_annotations: Option<branch::FromApi>,
}

impl Service {
    pub fn new(
        ipam: Arc<Ipam>,
        plane: Arc<Plane>,
        branches: BranchPods,
        host: Handle,
        veth_prefix: String,
    ) -> Service {
        Service {
            ipam,
            plane,
            branches,
            host,
            veth_prefix,
            pod_annotations: None,
        }
    }

    /// Reads a pod's branch ENI from the Kubernetes API when its runtimeConfig names none.
    pub fn with_pod_annotations(mut self, from_api: branch::FromApi) -> Service {
        self.pod_annotations = Some(from_api);
        self
    }
}

#[derive(Clone, Copy, Debug)]
enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
}

fn reply(output: Option<Value>, failed: bool) -> Response<CniReply> {
    Response::new(CniReply {
        protocol: PROTOCOL,
        output: output
            .map(|v| v.to_string().into_bytes())
            .unwrap_or_default(),
        failed,
    })
}

impl Service {
    async fn answer(&self, request: CniRequest, command: Command) -> Response<CniReply> {
        let version = serde_json::from_slice::<Value>(&request.config)
            .ok()
            .and_then(|c| c.get("cniVersion")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "1.0.0".into());
        if !compatible(request.protocol) {
            let e = CniError::new(
                cni_errors::PROTOCOL_MISMATCH,
                format!(
                    "eniflow-cni speaks protocol {}, this agent {} (it serves {}..={}): upgrade the older one",
                    request.protocol,
                    PROTOCOL,
                    eniflow_api::OLDEST_PROTOCOL,
                    PROTOCOL + 1
                ),
            );
            return reply(Some(result::error(&version, &e)), true);
        }
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let outcome = match request::parse(&request, needs_container) {
            Ok(r) => match command {
                Command::Add => self.add(&r).await.map(Some),
                Command::Del => self.del(&r).await.map(|()| None),
                Command::Check => self.check(&r).await.map(|()| None),
                Command::Status => self.status().map(|()| None),
                Command::Gc => self.gc(&r).await.map(|()| None),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(output) => reply(output, false),
            Err(e) => {
                log::warn!("{command:?} {}: {}", request.container_id, e.msg);
                reply(Some(result::error(&version, &e)), true)
            }
        }
    }

    fn owner(r: &Request) -> Owner {
        Owner {
            network: r.network.clone(),
            container_id: r.container_id.clone(),
            ifname: r.ifname.clone(),
        }
    }

    /// The host veth name of a pod's container (VPC CNI's naming).
    fn veth(&self, pod_namespace: &str, pod_name: &str, container_id: &str) -> String {
        host_veth_name(&self.veth_prefix, pod_namespace, pod_name, container_id)
    }

    fn pod(
        &self,
        r: &Request,
        pod_namespace: &str,
        pod_name: &str,
        ipv4: std::net::Ipv4Addr,
    ) -> Pod {
        Pod {
            netns: r.netns.clone(),
            ifname: r.ifname.clone(),
            host_veth: self.veth(pod_namespace, pod_name, &r.container_id),
            ipv4,
            mtu: r.mtu,
        }
    }

    async fn add(&self, r: &Request) -> Result<Value, CniError> {
        if r.netns.as_os_str().is_empty() || !r.netns.exists() {
            return Err(CniError::new(
                cni_errors::INVALID_ENV,
                format!(
                    "CNI_NETNS {:?} does not exist",
                    r.netns.display().to_string()
                ),
            ));
        }
        let mut branch = branch::from_config(&r.config)
            .map_err(|e| CniError::new(cni_errors::INVALID_CONFIG, e))?;
        if let (None, Some(from_api), false) =
            (&branch, &self.pod_annotations, r.pod_name.is_empty())
        {
            branch = from_api
                .branch(&r.pod_namespace, &r.pod_name)
                .await
                .map_err(|(code, msg)| CniError::new(code, msg))?;
        }
        if let Some(branch) = branch {
            return self.add_branch(r, branch).await;
        }
        let owner = Self::owner(r);
        let repeated = self.ipam.allocation(&owner).is_some();
        let allocation = self
            .ipam
            .assign(&owner, (&r.pod_namespace, &r.pod_name))
            .map_err(pool_error)?;
        // An address of an ENI attached moments ago: its interface (or IMDS's word on it) may
        // lag the attach, and until the watcher has set the ENI up the pod's packets could not
        // leave by it.
        if !self
            .plane
            .wait_for_eni(&allocation.eni, ENI_READY_WAIT)
            .await
        {
            if !repeated {
                let _ = self.ipam.release(&owner);
            }
            return Err(CniError::new(
                cni_errors::TRY_AGAIN_LATER,
                format!(
                    "{} belongs to ENI {}, which is not set up on the node after {ENI_READY_WAIT:?} (its interface or IMDS lags the attach); retry",
                    allocation.ipv4, allocation.eni
                ),
            ));
        }
        let pod = self.pod(
            r,
            &allocation.pod_namespace,
            &allocation.pod_name,
            allocation.ipv4,
        );
        let port = PodPort {
            addr: allocation.ipv4,
            eni_id: allocation.eni.clone(),
            host_ifindex: 0,
            host_mac: [0; 6],
            pod_mac: [0; 6],
            branch: None,
        };
        // Nothing was handed out on a failed first ADD: the address goes back (to cool, as any
        // release).
        let wired = self
            .wire(&pod, repeated, port, || {
                let _ = self.ipam.release(&owner);
            })
            .await?;
        log::info!(
            "ADD {} {}/{}: {} on {}",
            r.container_id,
            r.pod_namespace,
            r.pod_name,
            allocation.ipv4,
            pod.host_veth
        );
        Ok(added(r, &pod, &wired))
    }

    /// Wires `pod` (a repeated ADD of a wired pod checks the first wiring and gets the same
    /// answer) and adds it to the data plane. On failure nothing of the pod is left, and on a
    /// first ADD `undo` gives back what the caller took for it.
    async fn wire(
        &self,
        pod: &Pod,
        repeated: bool,
        mut port: PodPort,
        undo: impl FnOnce(),
    ) -> Result<Wired, CniError> {
        let checked = if repeated {
            plumbing::check(&self.host, pod).await.ok()
        } else {
            None
        };
        let wired = match checked {
            Some(wired) => Ok(wired),
            None => plumbing::add(&self.host, pod).await,
        };
        let wired = match wired {
            Ok(wired) => wired,
            Err(e) => {
                if !repeated {
                    undo();
                }
                let code = if e.taken {
                    cni_errors::INVALID_ENV
                } else {
                    cni_errors::PLUMBING_FAILED
                };
                return Err(CniError::new(code, e.to_string()));
            }
        };
        port.host_mac = wired.host_mac;
        port.pod_mac = wired.pod_mac;
        if let Err(e) = self.plane.add_pod(&pod.host_veth, port).await {
            // Half a pod is no pod: the veth goes too.
            let _ = plumbing::del(&self.host, &pod.host_veth).await;
            if !repeated {
                undo();
            }
            return Err(CniError::new(
                cni_errors::PLUMBING_FAILED,
                format!("data plane for {}: {e}", pod.host_veth),
            ));
        }
        Ok(wired)
    }

    /// Unwires and releases; what is already gone is success.
    async fn del(&self, r: &Request) -> Result<(), CniError> {
        let owner = Self::owner(r);
        if let Some(held) = self.branches.get(&owner) {
            return self.unwire_branch(&held).await;
        }
        let allocation = self.ipam.allocation(&owner);
        let mut veths = BTreeSet::new();
        veths.insert(self.veth(&r.pod_namespace, &r.pod_name, &r.container_id));
        if let Some(a) = &allocation {
            veths.insert(self.veth(&a.pod_namespace, &a.pod_name, &r.container_id));
        }
        self.unwire_and_release(&owner, &veths).await
    }

    async fn unwire_and_release(
        &self,
        owner: &Owner,
        veths: &BTreeSet<String>,
    ) -> Result<(), CniError> {
        let addr = self.ipam.allocation(owner).map(|a| a.ipv4);
        self.unwire(addr, veths, || {
            self.ipam
                .release(owner)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Takes the pod at `addr` out of the maps (first, so nothing is steered into a veth being
    /// deleted), deletes `veths`, forgets the veth's hooks, then gives back what the pod held
    /// with `release`. What is already gone is success.
    async fn unwire(
        &self,
        addr: Option<std::net::Ipv4Addr>,
        veths: &BTreeSet<String>,
        release: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), CniError> {
        let mut errors = Vec::new();
        let ifindex = addr.and_then(|a| self.plane.remove_pod(a));
        for veth in veths {
            if let Err(e) = plumbing::del(&self.host, veth).await {
                errors.push(e.to_string());
            }
        }
        if let Some(ifindex) = ifindex {
            self.plane.forget_interface(ifindex).await;
        }
        if let Err(e) = release() {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(cni_errors::IO_FAILURE, errors.join("; ")))
        }
    }

    async fn check(&self, r: &Request) -> Result<(), CniError> {
        let owner = Self::owner(r);
        if let Some(held) = self.branches.get(&owner) {
            let pod = self.pod(r, &held.pod_namespace, &held.pod_name, held.branch.ipv4);
            return plumbing::check(&self.host, &pod)
                .await
                .map(|_| ())
                .map_err(|e| CniError::new(cni_errors::PLUMBING_FAILED, e.to_string()));
        }
        let allocation = self.ipam.allocation(&owner).ok_or_else(|| {
            CniError::new(
                cni_errors::UNKNOWN_CONTAINER,
                format!(
                    "no address is allocated to container {} ({})",
                    r.container_id, r.ifname
                ),
            )
        })?;
        let pod = self.pod(
            r,
            &allocation.pod_namespace,
            &allocation.pod_name,
            allocation.ipv4,
        );
        plumbing::check(&self.host, &pod)
            .await
            .map(|_| ())
            .map_err(|e| CniError::new(cni_errors::PLUMBING_FAILED, e.to_string()))
    }

    /// Ready when the pool has a free address for the next ADD.
    fn status(&self) -> Result<(), CniError> {
        let c = self.ipam.counts();
        if c.total > c.assigned + c.cooling {
            Ok(())
        } else {
            Err(CniError::new(
                cni_errors::NOT_READY,
                format!(
                    "no free address yet ({} held, {} assigned, {} cooling); the refill loop is adding more",
                    c.total, c.assigned, c.cooling
                ),
            ))
        }
    }

    /// Releases this network's attachments the runtime no longer knows (`cni.dev/attachments`).
    async fn gc(&self, r: &Request) -> Result<(), CniError> {
        let valid: BTreeSet<(String, String)> = r
            .config
            .get("cni.dev/attachments")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|a| {
                        Some((
                            a.get("containerID")?.as_str()?.to_owned(),
                            a.get("ifname")?.as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for a in self.ipam.allocations() {
            let key = (a.owner.container_id.clone(), a.owner.ifname.clone());
            if a.owner.network != r.network || valid.contains(&key) {
                continue;
            }
            let veth = self.veth(&a.pod_namespace, &a.pod_name, &a.owner.container_id);
            log::info!(
                "GC {}: {} is no longer attached",
                a.owner.container_id,
                a.ipv4
            );
            self.unwire_and_release(&a.owner, &BTreeSet::from([veth]))
                .await?;
        }
        for held in self.branches.all() {
            let key = (held.owner.container_id.clone(), held.owner.ifname.clone());
            if held.owner.network == r.network && !valid.contains(&key) {
                log::info!("GC {}: branch pod is no longer attached", key.0);
                self.unwire_branch(&held).await?;
            }
        }
        Ok(())
    }

    /// ADD of a security-group pod: its address is its branch ENI's (not the pool's), reached
    /// through the trunk on its VLAN. Nothing is left when any step fails.
    async fn add_branch(&self, r: &Request, branch: Branch) -> Result<Value, CniError> {
        let owner = Self::owner(r);
        let Some(trunk) = self.plane.trunk() else {
            return Err(CniError::new(
                cni_errors::TRY_AGAIN_LATER,
                format!(
                    "annotation {}: branch ENI {} needs the node's trunk ENI, and none is attached (ENABLE_POD_ENI; the VPC resource controller or --create-trunk attaches it)",
                    branch::ANNOTATION,
                    branch.eni_id
                ),
            ));
        };
        let repeated = self.branches.get(&owner).is_some();
        let held = BranchPod {
            owner: owner.clone(),
            branch: branch.clone(),
            trunk_eni: trunk.id.clone(),
            pod_namespace: r.pod_namespace.clone(),
            pod_name: r.pod_name.clone(),
        };
        self.branches
            .add(held.clone())
            .map_err(|e| CniError::new(cni_errors::TRY_AGAIN_LATER, e))?;
        let pod = self.pod(r, &r.pod_namespace, &r.pod_name, branch.ipv4);
        let port = PodPort {
            addr: branch.ipv4,
            eni_id: trunk.id.clone(),
            host_ifindex: 0,
            host_mac: [0; 6],
            pod_mac: [0; 6],
            branch: Some(link(&branch)),
        };
        let wired = self
            .wire(&pod, repeated, port, || {
                let _ = self.branches.forget(&owner);
            })
            .await?;
        log::info!(
            "ADD {} {}/{}: {} on branch ENI {} (VLAN {} of trunk {})",
            r.container_id,
            r.pod_namespace,
            r.pod_name,
            branch.ipv4,
            branch.eni_id,
            branch.vlan,
            trunk.id
        );
        Ok(added(r, &pod, &wired))
    }

    /// Unwires a security-group pod and forgets it (its VLAN starts cooling).
    async fn unwire_branch(&self, held: &BranchPod) -> Result<(), CniError> {
        let veth = self.veth(
            &held.pod_namespace,
            &held.pod_name,
            &held.owner.container_id,
        );
        self.unwire(Some(held.branch.ipv4), &BTreeSet::from([veth]), || {
            self.branches.remove(&held.owner).map(|_| ())
        })
        .await
    }
}

/// The ADD result the shim prints.
fn added(r: &Request, pod: &Pod, wired: &Wired) -> Value {
    result::added(&result::Added {
        cni_version: &r.cni_version,
        host_veth: &pod.host_veth,
        host_mac: wired.host_mac,
        ifname: &r.ifname,
        pod_mac: wired.pod_mac,
        netns: &r.netns.display().to_string(),
        ipv4: pod.ipv4,
    })
}

fn link(branch: &Branch) -> BranchLink {
    BranchLink {
        vlan: branch.vlan,
        mac: branch.mac,
        gateway: crate::eni_links::gateway(branch.subnet),
    }
}

impl Service {
    /// Releases allocations whose pod's veth is gone (deleted while the agent was down: DEL
    /// succeeds without it). Returns how many.
    pub async fn release_unwired(&self) -> usize {
        let mut released = 0;
        for a in self.ipam.allocations() {
            let veth = self.veth(&a.pod_namespace, &a.pod_name, &a.owner.container_id);
            if plumbing::exists(&self.host, &veth).await {
                continue;
            }
            log::info!(
                "{} of {}: its veth {veth} is gone; released",
                a.ipv4,
                a.owner.container_id
            );
            if let Some(ifindex) = self.plane.remove_pod(a.ipv4) {
                self.plane.forget_interface(ifindex).await;
            }
            if self.ipam.release(&a.owner).is_ok() {
                released += 1;
            }
        }
        for held in self.branches.all() {
            let veth = self.veth(
                &held.pod_namespace,
                &held.pod_name,
                &held.owner.container_id,
            );
            if !plumbing::exists(&self.host, &veth).await && self.unwire_branch(&held).await.is_ok()
            {
                log::info!(
                    "branch pod {}: its veth {veth} is gone; forgotten",
                    held.branch.ipv4
                );
                released += 1;
            }
        }
        released
    }

    /// Re-adopts the data plane of the pods in the checkpoint (run after `release_unwired`).
    pub async fn restore_data_plane(&self) -> usize {
        let mut known: Vec<KnownPod> = self
            .ipam
            .allocations()
            .into_iter()
            .map(|a| KnownPod {
                addr: a.ipv4,
                host_veth: self.veth(&a.pod_namespace, &a.pod_name, &a.owner.container_id),
                eni_id: a.eni,
                branch: None,
            })
            .collect();
        known.extend(self.branches.all().into_iter().map(|held| KnownPod {
            addr: held.branch.ipv4,
            host_veth: self.veth(
                &held.pod_namespace,
                &held.pod_name,
                &held.owner.container_id,
            ),
            eni_id: held.trunk_eni.clone(),
            branch: Some(link(&held.branch)),
        }));
        self.plane.restore(&known).await
    }
}

fn pool_error(e: IpamError) -> CniError {
    match e {
        IpamError::Pool(PoolError::Empty { .. }) => {
            CniError::new(cni_errors::TRY_AGAIN_LATER, e.to_string())
        }
        other => CniError::new(cni_errors::IO_FAILURE, other.to_string()),
    }
}

#[tonic::async_trait]
impl Cni for Service {
    async fn add(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.answer(r.into_inner(), Command::Add).await)
    }

    async fn del(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.answer(r.into_inner(), Command::Del).await)
    }

    async fn check(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.answer(r.into_inner(), Command::Check).await)
    }

    async fn status(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.answer(r.into_inner(), Command::Status).await)
    }

    async fn gc(&self, r: GrpcRequest<CniRequest>) -> Result<Response<CniReply>, Status> {
        Ok(self.answer(r.into_inner(), Command::Gc).await)
    }
}

/// Serves `service` (and gRPC health) on the unix socket at `socket`, root only; returns once
/// the socket accepts connections.
pub async fn serve(socket: &Path, service: Service) -> std::io::Result<PathBuf> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<CniServer<Service>>().await;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(CniServer::new(service))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            log::error!("the CNI service stopped: {e}");
        }
    });
    Ok(socket.to_owned())
}
