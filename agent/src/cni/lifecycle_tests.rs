//! The lifecycle's unwind paths, with fakes of the addresses, the wiring and the data plane.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Mutex,
    },
};

use serde_json::json;

use super::*;
use crate::{
    cni::{
        branch::{Branch, BranchPod},
        plumbing::PlumbingError,
    },
    datapath::DatapathError,
    ipam::{warm, Allocation},
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap()
}

const POOL_ENI: &str = "eni-pool";
const TRUNK: &str = "eni-trunk";

#[derive(Default)]
struct FakeAddresses {
    free: Mutex<Vec<Ipv4Addr>>,
    held: Mutex<BTreeMap<Owner, Hold>>,
    /// What `branch_of` answers for every request.
    branch: Mutex<Option<Branch>>,
    fail_release: AtomicBool,
    undone: Mutex<Vec<Owner>>,
}

impl FakeAddresses {
    fn with_free(n: u8) -> FakeAddresses {
        let fake = FakeAddresses::default();
        *lock(&fake.free) = (1..=n).rev().map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        fake
    }
}

impl Addresses for FakeAddresses {
    async fn branch_of(&self, _: &Request) -> Result<Option<Branch>, CniError> {
        Ok(lock(&self.branch).clone())
    }

    fn held(&self, owner: &Owner) -> Option<Hold> {
        lock(&self.held).get(owner).cloned()
    }

    fn all(&self) -> Vec<Hold> {
        lock(&self.held).values().cloned().collect()
    }

    async fn take(&self, owner: &Owner, pod: (&str, &str), want: Want) -> Result<Hold, CniError> {
        if let Some(hold) = self.held(owner) {
            return Ok(hold);
        }
        let hold = match want {
            Want::Pool => {
                let ipv4 = lock(&self.free)
                    .pop()
                    .ok_or_else(|| CniError::new(cni_errors::TRY_AGAIN_LATER, "pool empty"))?;
                Hold::Pool(Allocation {
                    owner: owner.clone(),
                    ipv4,
                    eni: POOL_ENI.into(),
                    pod_namespace: pod.0.into(),
                    pod_name: pod.1.into(),
                    allocated_at_ms: 0,
                })
            }
            Want::Branch { branch, trunk_eni } => Hold::Branch(BranchPod {
                owner: owner.clone(),
                branch,
                trunk_eni,
                pod_namespace: pod.0.into(),
                pod_name: pod.1.into(),
            }),
        };
        lock(&self.held).insert(owner.clone(), hold.clone());
        Ok(hold)
    }

    async fn release(&self, hold: &Hold) -> Result<(), CniError> {
        if self.fail_release.load(Ordering::SeqCst) {
            return Err(CniError::new(
                cni_errors::IO_FAILURE,
                "checkpoint write failed",
            ));
        }
        self.give_back(hold);
        Ok(())
    }

    async fn undo(&self, hold: &Hold) {
        lock(&self.undone).push(hold.owner().clone());
        self.give_back(hold);
    }

    fn counts(&self) -> warm::Pool {
        let assigned = lock(&self.held).len() as u32;
        warm::Pool {
            total: assigned + lock(&self.free).len() as u32,
            assigned,
            cooling: 0,
        }
    }
}

impl FakeAddresses {
    fn give_back(&self, hold: &Hold) {
        if lock(&self.held).remove(hold.owner()).is_some() {
            if let Hold::Pool(a) = hold {
                lock(&self.free).push(a.ipv4);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WiringFault {
    None,
    Add,
    NameTaken,
    Del,
}

struct FakeWiring {
    veths: Mutex<BTreeMap<String, Wired>>,
    fault: Mutex<WiringFault>,
    adds: AtomicU32,
    /// How long creating a veth takes.
    delay: Mutex<Duration>,
}

impl Default for FakeWiring {
    fn default() -> Self {
        FakeWiring {
            veths: Mutex::default(),
            fault: Mutex::new(WiringFault::None),
            adds: AtomicU32::new(0),
            delay: Mutex::new(Duration::ZERO),
        }
    }
}

fn plumbing_error(step: &str, taken: bool) -> PlumbingError {
    PlumbingError {
        step: step.into(),
        message: "injected".into(),
        taken,
    }
}

impl Wiring for FakeWiring {
    async fn add(&self, pod: &Pod) -> Result<Wired, PlumbingError> {
        let delay = *lock(&self.delay);
        tokio::time::sleep(delay).await;
        match *lock(&self.fault) {
            WiringFault::Add => return Err(plumbing_error("create veth", false)),
            WiringFault::NameTaken => return Err(plumbing_error("CNI_IFNAME eth0", true)),
            _ => {}
        }
        let n = self.adds.fetch_add(1, Ordering::SeqCst);
        let wired = Wired {
            host_ifindex: 100 + n,
            host_mac: [2, 0, 0, 0, 0, n as u8],
            pod_mac: [2, 1, 0, 0, 0, n as u8],
        };
        lock(&self.veths).insert(pod.host_veth.clone(), wired.clone());
        Ok(wired)
    }

    async fn check(&self, pod: &Pod) -> Result<Wired, PlumbingError> {
        lock(&self.veths)
            .get(&pod.host_veth)
            .cloned()
            .ok_or_else(|| plumbing_error("check", false))
    }

    async fn del(&self, host_veth: &str) -> Result<(), PlumbingError> {
        if *lock(&self.fault) == WiringFault::Del {
            return Err(plumbing_error(&format!("delete {host_veth}"), false));
        }
        lock(&self.veths).remove(host_veth);
        Ok(())
    }

    async fn exists(&self, host_veth: &str) -> bool {
        lock(&self.veths).contains_key(host_veth)
    }
}

#[derive(Default)]
struct FakePlane {
    enis: Mutex<BTreeSet<String>>,
    trunk: Mutex<Option<String>>,
    pods: Mutex<BTreeMap<Ipv4Addr, PodPort>>,
    fail_add: AtomicBool,
    forgotten: Mutex<Vec<u32>>,
}

impl DataPlane for FakePlane {
    async fn wait_for_eni(&self, id: &str, _: Duration) -> bool {
        lock(&self.enis).contains(id)
    }

    fn trunk_eni(&self) -> Option<String> {
        lock(&self.trunk).clone()
    }

    async fn add_pod(&self, host_veth: &str, pod: PodPort) -> Result<(), DatapathError> {
        if self.fail_add.load(Ordering::SeqCst) {
            return Err(DatapathError::Attach {
                hook: format!("{host_veth} ingress"),
                message: "injected".into(),
            });
        }
        lock(&self.pods).insert(pod.addr, pod);
        Ok(())
    }

    fn remove_pod(&self, addr: Ipv4Addr) -> Option<u32> {
        lock(&self.pods).remove(&addr).map(|p| p.host_ifindex)
    }

    async fn forget_interface(&self, ifindex: u32) {
        lock(&self.forgotten).push(ifindex);
    }

    async fn restore(&self, known: &[KnownPod]) -> (usize, usize) {
        (known.len(), 0)
    }
}

type Fakes = Lifecycle<FakeAddresses, FakeWiring, FakePlane>;

fn lifecycle(free: u8) -> Fakes {
    let plane = FakePlane::default();
    lock(&plane.enis).insert(POOL_ENI.into());
    Lifecycle::new(
        FakeAddresses::with_free(free),
        FakeWiring::default(),
        Arc::new(plane),
        "eni".into(),
    )
}

fn request(container: &str, pod: &str) -> Request {
    Request {
        cni_version: "1.0.0".into(),
        network: "eniflow".into(),
        container_id: container.into(),
        // Any path that exists: the fakes never enter it.
        netns: PathBuf::from("/proc/self/ns/net"),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: pod.into(),
        mtu: 9001,
        config: json!({}),
    }
}

fn branch() -> Branch {
    Branch {
        eni_id: "eni-branch".into(),
        mac: [0x0a, 0, 0, 0, 0, 7],
        ipv4: Ipv4Addr::new(10, 0, 1, 50),
        vlan: 7,
        subnet: (Ipv4Addr::new(10, 0, 1, 0), 24),
    }
}

/// Nothing of any pod anywhere: no hold, no veth, no data-plane entry.
fn assert_empty(l: &Fakes, free: usize) {
    assert!(lock(&l.addresses.held).is_empty(), "a hold is left");
    assert_eq!(lock(&l.addresses.free).len(), free, "an address is lost");
    assert!(lock(&l.wiring.veths).is_empty(), "a veth is left");
    assert!(lock(&l.plane.pods).is_empty(), "a data-plane entry is left");
}

#[tokio::test]
async fn an_add_enters_the_pod_once_with_the_veths_index_and_macs() {
    let l = lifecycle(2);
    let out = l.add(&request("c1", "web-0")).await.unwrap();
    assert_eq!(out["ips"][0]["address"], "10.0.0.1/32");
    let pods = lock(&l.plane.pods);
    let port = &pods[&Ipv4Addr::new(10, 0, 0, 1)];
    let veths = lock(&l.wiring.veths);
    let wired = veths.values().next().unwrap();
    assert_eq!(
        (port.host_ifindex, port.host_mac, port.pod_mac),
        (wired.host_ifindex, wired.host_mac, wired.pod_mac)
    );
    assert_eq!((port.eni_id.as_str(), &port.branch), (POOL_ENI, &None));
}

#[tokio::test]
async fn a_first_add_that_fails_at_any_step_leaves_nothing() {
    type Break = fn(&Fakes);
    let steps: [(&str, Break, u32, &str); 4] = [
        (
            "ENI not set up",
            |l| lock(&l.plane.enis).clear(),
            cni_errors::TRY_AGAIN_LATER,
            "not set up on the node",
        ),
        (
            "veth creation",
            |l| *lock(&l.wiring.fault) = WiringFault::Add,
            cni_errors::PLUMBING_FAILED,
            "create veth",
        ),
        (
            "interface name taken",
            |l| *lock(&l.wiring.fault) = WiringFault::NameTaken,
            cni_errors::INVALID_ENV,
            "CNI_IFNAME",
        ),
        (
            "data plane",
            |l| l.plane.fail_add.store(true, Ordering::SeqCst),
            cni_errors::PLUMBING_FAILED,
            "data plane for eni",
        ),
    ];
    for (step, break_it, code, named) in steps {
        let l = lifecycle(1);
        break_it(&l);
        let e = l.add(&request("c1", "web-0")).await.unwrap_err();
        assert_eq!(e.code, code, "{step}: {e:?}");
        assert!(e.msg.contains(named), "{step}: {e:?}");
        assert_empty(&l, 1);
        assert_eq!(lock(&l.addresses.undone).len(), 1, "{step}: undone once");
    }
}

#[tokio::test]
async fn a_repeated_add_keeps_the_first_ones_pod() {
    let l = lifecycle(2);
    let first = l.add(&request("c1", "web-0")).await.unwrap();
    let again = l.add(&request("c1", "web-0")).await.unwrap();
    assert_eq!(first, again, "the same answer");
    assert_eq!(l.wiring.adds.load(Ordering::SeqCst), 1, "wired once");

    // A repeated ADD that fails gives back nothing the first one took.
    l.plane.fail_add.store(true, Ordering::SeqCst);
    l.add(&request("c1", "web-0")).await.unwrap_err();
    assert_eq!(lock(&l.addresses.held).len(), 1);
    assert!(lock(&l.addresses.undone).is_empty());
}

#[tokio::test]
async fn an_empty_pool_is_a_retry_and_touches_nothing() {
    let l = lifecycle(0);
    let e = l.add(&request("c1", "web-0")).await.unwrap_err();
    assert_eq!(e.code, cni_errors::TRY_AGAIN_LATER);
    assert_empty(&l, 0);
    assert_eq!(l.wiring.adds.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_branch_pod_goes_through_the_trunk_on_its_vlan() {
    let l = lifecycle(1);
    *lock(&l.addresses.branch) = Some(branch());
    let e = l.add(&request("c1", "db-0")).await.unwrap_err();
    assert_eq!(e.code, cni_errors::TRY_AGAIN_LATER, "{e:?}");
    assert!(e.msg.contains("trunk ENI"), "{e:?}");
    assert_empty(&l, 1);

    *lock(&l.plane.trunk) = Some(TRUNK.into());
    lock(&l.plane.enis).insert(TRUNK.into());
    let out = l.add(&request("c1", "db-0")).await.unwrap();
    assert_eq!(out["ips"][0]["address"], "10.0.1.50/32");
    let pods = lock(&l.plane.pods);
    let port = &pods[&Ipv4Addr::new(10, 0, 1, 50)];
    assert_eq!(port.eni_id, TRUNK);
    assert_eq!(port.branch.as_ref().map(|b| b.vlan), Some(7));
    assert_eq!(lock(&l.addresses.free).len(), 1, "no pool address taken");
}

#[tokio::test]
async fn del_keeps_the_address_until_the_veth_is_gone_and_reports_every_failure() {
    let l = lifecycle(1);
    l.add(&request("c1", "web-0")).await.unwrap();
    *lock(&l.wiring.fault) = WiringFault::Del;
    let e = l.del(&request("c1", "web-0")).await.unwrap_err();
    assert_eq!(e.code, cni_errors::IO_FAILURE);
    assert!(e.msg.contains("delete eni"), "{e:?}");
    assert!(lock(&l.plane.pods).is_empty(), "out of the maps first");
    assert_eq!(*lock(&l.plane.forgotten), vec![100], "hooks forgotten");
    // The veth is still there: its address is kept for the retry, not given to another pod.
    assert_eq!(lock(&l.addresses.held).len(), 1);

    // The retried DEL deletes the veth; now the release fails, and is reported.
    *lock(&l.wiring.fault) = WiringFault::None;
    l.addresses.fail_release.store(true, Ordering::SeqCst);
    let e = l.del(&request("c1", "web-0")).await.unwrap_err();
    assert!(e.msg.contains("checkpoint write failed"), "{e:?}");
    assert!(lock(&l.wiring.veths).is_empty());

    // The next DEL finishes the job.
    l.addresses.fail_release.store(false, Ordering::SeqCst);
    l.del(&request("c1", "web-0")).await.unwrap();
    assert_empty(&l, 1);
    l.del(&request("c1", "web-0")).await.unwrap();
}

#[tokio::test]
async fn check_names_a_missing_pod_and_a_missing_veth() {
    let l = lifecycle(1);
    let e = l.check(&request("c1", "web-0")).await.unwrap_err();
    assert_eq!(e.code, cni_errors::UNKNOWN_CONTAINER);
    l.add(&request("c1", "web-0")).await.unwrap();
    l.check(&request("c1", "web-0")).await.unwrap();
    lock(&l.wiring.veths).clear();
    let e = l.check(&request("c1", "web-0")).await.unwrap_err();
    assert_eq!(e.code, cni_errors::PLUMBING_FAILED);
}

#[tokio::test]
async fn gc_unwires_only_this_networks_pods_the_runtime_forgot() {
    let l = lifecycle(3);
    for (c, pod) in [("c1", "web-0"), ("c2", "web-1")] {
        l.add(&request(c, pod)).await.unwrap();
    }
    let mut other = request("c3", "web-2");
    other.network = "other".into();
    l.add(&other).await.unwrap();
    let mut gc = request("", "");
    gc.config = json!({"cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}]});
    l.gc(&gc).await.unwrap();
    let held: Vec<String> = lock(&l.addresses.held)
        .keys()
        .map(|o| o.container_id.clone())
        .collect();
    assert_eq!(held, ["c1", "c3"]);
    assert_eq!(lock(&l.wiring.veths).len(), 2);
}

#[tokio::test]
async fn gc_reads_the_specs_key_and_unwires_nothing_without_a_list() {
    let l = lifecycle(2);
    for (c, pod) in [("c1", "web-0"), ("c2", "web-1")] {
        l.add(&request(c, pod)).await.unwrap();
    }
    let mut gc = request("", "");
    l.gc(&gc).await.unwrap();
    assert_eq!(lock(&l.addresses.held).len(), 2, "no list: nothing unwired");
    gc.config = json!({"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]});
    l.gc(&gc).await.unwrap();
    let held: Vec<String> = lock(&l.addresses.held)
        .keys()
        .map(|o| o.container_id.clone())
        .collect();
    assert_eq!(held, ["c2"]);
}

#[tokio::test]
async fn at_start_pods_whose_veth_is_gone_are_released() {
    let l = lifecycle(2);
    l.add(&request("c1", "web-0")).await.unwrap();
    l.add(&request("c2", "web-1")).await.unwrap();
    let gone = l.veth_of("default", "web-1", "c2");
    assert!(lock(&l.wiring.veths).remove(&gone).is_some());
    assert_eq!(l.release_unwired().await, 1);
    assert_eq!(lock(&l.addresses.held).len(), 1);
    assert_eq!(lock(&l.plane.pods).len(), 1);
    assert_eq!(l.restore_data_plane().await, (1, 0));
}

#[tokio::test]
async fn status_is_ready_only_with_a_free_address() {
    let l = lifecycle(1);
    l.status().unwrap();
    l.add(&request("c1", "web-0")).await.unwrap();
    assert_eq!(l.status().unwrap_err().code, cni_errors::NOT_READY);
}

#[tokio::test]
async fn a_request_the_runtime_gives_up_on_still_runs_to_completion() {
    use eniflow_api::v1::{cni_server::Cni, CniRequest};

    let l = lifecycle(1);
    *lock(&l.wiring.delay) = Duration::from_millis(300);
    let plane = l.plane.clone();
    let service = crate::cni::server::Service::new(Arc::new(l));
    let request = CniRequest {
        protocol: eniflow_api::PROTOCOL,
        container_id: "c1".into(),
        netns: "/proc/self/ns/net".into(),
        ifname: "eth0".into(),
        args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0".into(),
        config: br#"{"cniVersion":"1.0.0","name":"eniflow"}"#.to_vec(),
    };
    // The shim's timeout: the client stops waiting while the veth is being made.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        Cni::add(&service, tonic::Request::new(request)),
    )
    .await;
    assert!(gave_up.is_err(), "the ADD should still be wiring");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while lock(&plane.pods).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned ADD never finished: its address would be held by no pod"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_branch_pod_taken_over_from_vpc_cni_is_deleted_by_its_pod_name_and_kept_by_gc() {
    let l = lifecycle(1);
    // VPC CNI's strict mode names a branch pod's veth `vlan` + the pod's hash.
    let ours = l.veth_of("default", "sg-0", "c1");
    let theirs = format!("vlan{}", ours.strip_prefix("eni").unwrap());
    let owner = crate::cni::branch::taken_over_owner(&theirs);
    let held = Hold::Branch(BranchPod {
        owner: owner.clone(),
        branch: branch(),
        trunk_eni: TRUNK.into(),
        pod_namespace: String::new(),
        pod_name: String::new(),
    });
    lock(&l.addresses.held).insert(owner.clone(), held);
    lock(&l.wiring.veths).insert(
        theirs.clone(),
        Wired {
            host_ifindex: 9,
            host_mac: [2; 6],
            pod_mac: [4; 6],
        },
    );
    assert_eq!(l.release_unwired().await, 0, "its veth is there");
    // GC cannot match it to a container: it stays.
    let mut gc = request("", "");
    gc.config = json!({"cni.dev/valid-attachments": [{"containerID": "c9", "ifname": "eth0"}]});
    l.gc(&gc).await.unwrap();
    assert!(lock(&l.addresses.held).contains_key(&owner));
    // kubelet's DEL names the pod (and a container id VPC CNI kept no record of).
    l.del(&request("c1", "sg-0")).await.unwrap();
    assert!(
        lock(&l.addresses.held).is_empty(),
        "the branch pod is released"
    );
    assert!(
        !lock(&l.wiring.veths).contains_key(&theirs),
        "its veth is deleted"
    );
}
