//! Reading the agent's pinned data-plane maps the way an on-call engineer does (bpftool, by
//! field name), and another tool's tc programs chained around eniflow's (the lab's taps).

use std::{
    collections::BTreeMap,
    io::BufRead,
    net::Ipv4Addr,
    process::{Command, Stdio},
};

use aya::{
    maps::PerCpuHashMap,
    programs::{
        tc::{NlOptions, TcAttachOptions, TcAttachType},
        LinkOrder, SchedClassifier,
    },
    Ebpf,
};
use eniflow_common::{maps, DropReason, HOOK_NAMES};
use eniflow_lab_common::{self as lab, TapKey};
use serde_json::Value;

use crate::{
    bpftool,
    cni::PodNode,
    hooks::{self, Dir},
    netns::Netns,
};

static LAB_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("ENIFLOW_LAB_EBPF_EMBED"));

/// An address as bpftool prints a `[u8; 4]` key: `[10,0,1,6]`.
pub fn wire(ip: &str) -> Value {
    serde_json::json!(ip.parse::<Ipv4Addr>().unwrap().octets())
}

impl PodNode {
    /// The pod's entry in the pinned `pods` map, by field name.
    pub fn pod_entry(&self, ip: &str) -> Option<Value> {
        bpftool::dump(&self.map(maps::PODS))
            .iter()
            .map(|e| bpftool::formatted(e, maps::PODS).clone())
            .find(|f| f["key"] == wire(ip))
            .map(|f| f["value"].clone())
    }

    /// One of the pod's counters, summed over CPUs.
    pub fn pod_counter(&self, ip: &str, field: &str) -> u64 {
        bpftool::dump(&self.map(maps::POD_STATS))
            .iter()
            .map(|e| bpftool::formatted(e, maps::POD_STATS).clone())
            .find(|f| f["key"] == wire(ip))
            .map_or(0, |f| bpftool::per_cpu_sum(&f, field))
    }
}

/// Nonzero drop counters, (where, reason name) → packets, as bpftool prints them by field name.
pub type DropCounts = BTreeMap<(String, &'static str), u64>;

impl PodNode {
    /// Every pod's nonzero drop counters, keyed (pod address, reason).
    pub fn pod_drops(&self) -> DropCounts {
        let mut out = DropCounts::new();
        for entry in bpftool::dump(&self.map(maps::POD_STATS)) {
            let f = bpftool::formatted(&entry, maps::POD_STATS);
            let addr: Vec<String> = f["key"]
                .as_array()
                .expect("an address key")
                .iter()
                .map(|o| o.to_string())
                .collect();
            for reason in DropReason::ALL {
                let n = bpftool::per_cpu_sum(f, &format!("drops.{}", reason.name()));
                if n != 0 {
                    out.insert((addr.join("."), reason.name()), n);
                }
            }
        }
        out
    }

    /// Every hook's nonzero drop counters, keyed (hook's program, reason).
    pub fn hook_drops(&self) -> DropCounts {
        let mut out = DropCounts::new();
        for entry in bpftool::dump(&self.map(maps::HOOK_DROPS)) {
            let f = bpftool::formatted(&entry, maps::HOOK_DROPS);
            let hook = HOOK_NAMES[f["key"].as_u64().expect("a hook index") as usize];
            for reason in DropReason::ALL {
                let n = bpftool::per_cpu_sum(f, reason.name());
                if n != 0 {
                    out.insert((hook.to_owned(), reason.name()), n);
                }
            }
        }
        out
    }
}

/// What moved between two readings of drop counters (only counters that grew).
pub fn drops_moved(before: &DropCounts, after: &DropCounts) -> DropCounts {
    after
        .iter()
        .filter_map(|(k, n)| {
            let grew = n - before.get(k).copied().unwrap_or(0);
            (grew > 0).then(|| (k.clone(), grew))
        })
        .collect()
}

/// As kube-proxy or portmap does on the node: packets matching `matching` (iptables match
/// arguments) are DNAT'd to `to` in nat/PREROUTING.
pub fn dnat(node_ns: &Netns, matching: &[&str], to: &str) {
    let mut args = vec!["-t", "nat", "-A", "PREROUTING"];
    args.extend_from_slice(matching);
    args.extend(["-j", "DNAT", "--to-destination", to]);
    node_ns.run("iptables", &args);
}

/// Another tool's counting programs on one tc ingress hook, one before eniflow's and one after.
pub struct Taps {
    ebpf: Ebpf,
    ifindex: u32,
}

impl Taps {
    /// Attaches the taps to `ifname`'s tc ingress in `ns`, first and last in the chain
    /// eniflow's program is on: tcx (an ENI), or clsact by priority around eniflow's filter (a
    /// pod's veth, where the agent's default attach mode uses cls_bpf).
    pub fn ingress(ns: &Netns, ifname: &str) -> Taps {
        let mut ebpf = Ebpf::load(LAB_OBJECT).expect("load the lab object");
        let on_clsact = hooks::clsact_programs(ns, ifname, Dir::Ingress)
            .iter()
            .any(|(_, name)| name.starts_with("pod_") || name.starts_with("eni_"));
        ns.within(|| {
            for (name, order, priority) in [
                (lab::TAP_FIRST_PROGRAM, LinkOrder::first(), 1),
                (lab::TAP_LAST_PROGRAM, LinkOrder::last(), u16::MAX),
            ] {
                let program: &mut SchedClassifier =
                    ebpf.program_mut(name).unwrap().try_into().unwrap();
                program.load().unwrap();
                let options = if on_clsact {
                    TcAttachOptions::Netlink(NlOptions {
                        priority,
                        ..Default::default()
                    })
                } else {
                    TcAttachOptions::TcxOrder(order)
                };
                program
                    .attach_with_options(ifname, TcAttachType::Ingress, options)
                    .unwrap();
            }
        });
        Taps {
            ebpf,
            ifindex: ns.ifindex(ifname),
        }
    }

    /// IPv4 packets the tap at `position` (`lab::TAP_FIRST` or `TAP_LAST`) saw.
    pub fn seen(&self, position: u32) -> u64 {
        let map: PerCpuHashMap<_, TapKey, u64> =
            PerCpuHashMap::try_from(self.ebpf.map(lab::TAPS).unwrap()).unwrap();
        map.get(
            &TapKey {
                ifindex: self.ifindex,
                position,
            },
            0,
        )
        .map_or(0, |values| values.iter().sum())
    }
}

/// A stand-in for EKS's network policy agent's programs on a pod's host veth, attached as it
/// attaches them (clsact cls_bpf, priority 1, handle 1, both directions; `lab::POLICY_PROGRAM`);
/// detached when dropped.
pub struct PolicyPrograms {
    _ebpf: Ebpf,
}

impl PolicyPrograms {
    pub fn attach(ns: &Netns, host_veth: &str) -> PolicyPrograms {
        let mut ebpf = Ebpf::load(LAB_OBJECT).expect("load the lab object");
        ns.within(|| {
            let program: &mut SchedClassifier = ebpf
                .program_mut(lab::POLICY_PROGRAM)
                .unwrap()
                .try_into()
                .unwrap();
            program.load().unwrap();
            for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
                let options = TcAttachOptions::Netlink(NlOptions {
                    priority: 1,
                    handle: 1.into(),
                    classid: None,
                });
                program
                    .attach_with_options(host_veth, hook, options)
                    .unwrap_or_else(|e| panic!("attach the policy stand-in to {host_veth}: {e}"));
            }
        });
        PolicyPrograms { _ebpf: ebpf }
    }
}

/// The lab's no-op program on tc hooks (one loaded program per hook, so each has its own
/// run-time accounting); detached when dropped.
pub struct Noops {
    /// Each hook's program id, in the order given, and the objects that keep them attached.
    pub ids: Vec<u32>,
    _loaded: Vec<Ebpf>,
}

impl Noops {
    /// Attaches one no-op to each `(ifname, hook)` of `ns`, last in its tcx chain.
    pub fn attach(ns: &Netns, hooks: &[(&str, TcAttachType)]) -> Noops {
        let (mut ids, mut loaded) = (Vec::new(), Vec::new());
        for (ifname, hook) in hooks {
            let mut ebpf = Ebpf::load(LAB_OBJECT).expect("load the lab object");
            let program: &mut SchedClassifier = ebpf
                .program_mut(lab::NOOP_PROGRAM)
                .unwrap()
                .try_into()
                .unwrap();
            program.load().unwrap();
            ns.within(|| {
                program
                    .attach_with_options(
                        ifname,
                        *hook,
                        TcAttachOptions::TcxOrder(LinkOrder::last()),
                    )
                    .unwrap_or_else(|e| panic!("attach the no-op to {ifname}: {e}"))
            });
            ids.push(program.info().expect("the no-op's id").id());
            loaded.push(ebpf);
        }
        Noops {
            ids,
            _loaded: loaded,
        }
    }
}

/// Frames on the interfaces `eths` of `node_ns` while `during` runs, as tcpdump prints them
/// with link-level headers (each capture ends after two frames or 6 s).
pub fn capture(node_ns: &Netns, eth: &str, filter: &str, during: impl FnOnce()) -> String {
    capture_on(node_ns, &[eth], filter, during)
}

/// The same on several interfaces at once, their frames one after the other.
pub fn capture_on(node_ns: &Netns, eths: &[&str], filter: &str, during: impl FnOnce()) -> String {
    let mut running = Vec::new();
    for eth in eths {
        let mut child = Command::new("nsenter")
            .args([
                &format!("--net={}", node_ns.path()),
                "timeout",
                "6",
                "tcpdump",
                "-e",
                "-nn",
                "-l",
                "-c",
                "2",
                "-i",
                eth,
                filter,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // tcpdump says "listening on ..." once it captures: only then is the traffic made.
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        while !said.contains("listening on") {
            let read = stderr.read_line(&mut said).unwrap();
            assert!(read > 0, "tcpdump on {eth} did not start: {said}");
        }
        running.push((child, stderr));
    }
    during();
    let mut seen = String::new();
    for (child, stderr) in running {
        let out = child.wait_with_output().unwrap();
        drop(stderr);
        seen += &String::from_utf8_lossy(&out.stdout);
    }
    seen
}
