//! What is attached to an interface's tc hooks, read the way the kernel reports it: tcx
//! programs through BPF_PROG_QUERY, clsact qdiscs and filters through `tc -j`.

use aya::programs::{tc::TcAttachType, SchedClassifier};
use serde_json::Value;

use crate::netns::Netns;

/// A tc direction, as the tests name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::Ingress, Dir::Egress];

    pub fn name(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }

    /// The ENI program eniflow attaches at this hook.
    pub fn eni_program(self) -> &'static str {
        match self {
            Dir::Ingress => eniflow_common::programs::ENI_INGRESS,
            Dir::Egress => eniflow_common::programs::ENI_EGRESS,
        }
    }

    /// The direction code in eniflow's map keys.
    pub fn code(self) -> u32 {
        match self {
            Dir::Ingress => eniflow_common::DIRECTION_INGRESS,
            Dir::Egress => eniflow_common::DIRECTION_EGRESS,
        }
    }
}

/// A program attached to a hook: (program id, program name).
pub type Prog = (u32, String);

/// The programs attached with tcx to `ifname`'s hook, in order.
pub fn tcx_programs(ns: &Netns, ifname: &str, dir: Dir) -> Vec<Prog> {
    let attach_type = match dir {
        Dir::Ingress => TcAttachType::Ingress,
        Dir::Egress => TcAttachType::Egress,
    };
    ns.within(|| {
        let (_, progs) = SchedClassifier::query_tcx(ifname, attach_type)
            .unwrap_or_else(|e| panic!("query tcx {ifname} {}: {e}", dir.name()));
        progs
            .iter()
            .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_owned()))
            .collect()
    })
}

/// `tc -j filter show dev <ifname> <dir>` (empty without a clsact qdisc).
pub fn tc_filters(ns: &Netns, ifname: &str, dir: Dir) -> Vec<Value> {
    let out = ns.run("tc", &["-j", "filter", "show", "dev", ifname, dir.name()]);
    json_list(&out)
}

/// The bpf programs among the filters on a clsact hook: (program id, program name).
pub fn clsact_programs(ns: &Netns, ifname: &str, dir: Dir) -> Vec<Prog> {
    tc_filters(ns, ifname, dir)
        .iter()
        .filter(|f| f["kind"] == "bpf" && f["options"]["prog"]["id"].is_u64())
        .map(|f| {
            let prog = &f["options"]["prog"];
            (
                prog["id"].as_u64().unwrap() as u32,
                prog["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Every qdisc in the namespace, as `tc -j qdisc show` prints it.
pub fn qdiscs(ns: &Netns) -> Vec<Value> {
    json_list(&ns.run("tc", &["-j", "qdisc", "show"]))
}

/// Whether `ifname` has a clsact qdisc.
pub fn has_clsact(ns: &Netns, ifname: &str) -> bool {
    qdiscs(ns)
        .iter()
        .any(|q| q["kind"] == "clsact" && q["dev"] == ifname)
}

fn json_list(out: &str) -> Vec<Value> {
    if out.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str(out).unwrap_or_else(|e| panic!("tc -j printed no JSON ({e}): {out}"))
    {
        Value::Array(list) => list,
        other => panic!("tc -j: expected a list, got {other}"),
    }
}
