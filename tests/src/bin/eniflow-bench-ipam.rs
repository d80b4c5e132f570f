//! `cargo xtask bench` (IPAM part): EC2 calls and idle addresses of the agent's pool against the
//! lab's EC2 emulator, for (a) one node going 0 → 110 → 0 pods and (b) five nodes each receiving
//! one replica of a 5-replica deployment, under VPC CNI's default knobs and eniflow's
//! recommended ones. Pods arrive one at a time and the refill settles after each arrival or
//! departure; time is compressed (cooldown, ENI minimum age and scale-down pacing are zero), so
//! the figures count decisions, not seconds.

use std::{collections::BTreeMap, time::Duration};

use eniflow_agent::{
    ec2::Ec2,
    instance::{self, Instance},
    ipam::{Config, Ipam, Knobs, Owner},
};
use eniflow_tests::lab::api_vpc::ApiVpc;

struct Knobset {
    name: &'static str,
    vars: &'static [(&'static str, &'static str)],
}

const VPC_CNI_DEFAULTS: Knobset = Knobset {
    name: "VPC CNI defaults (WARM_ENI_TARGET=1)",
    vars: &[],
};
const VPC_CNI_PREFIXES: Knobset = Knobset {
    name: "VPC CNI defaults with prefix delegation (WARM_PREFIX_TARGET=1)",
    vars: &[
        ("ENABLE_PREFIX_DELEGATION", "true"),
        ("WARM_PREFIX_TARGET", "1"),
    ],
};
/// Dense nodes: prefixes, with a small warm margin instead of a whole warm /28.
const ENIFLOW_DENSE: Knobset = Knobset {
    name: "eniflow recommended, dense (prefixes, WARM_IP_TARGET=8)",
    vars: &[
        ("ENABLE_PREFIX_DELEGATION", "true"),
        ("WARM_IP_TARGET", "8"),
    ],
};
/// Sparse nodes: single addresses with a small warm margin; a /28 per node wastes 15.
const ENIFLOW_SPARSE: Knobset = Knobset {
    name: "eniflow recommended, sparse (WARM_IP_TARGET=2, MINIMUM_IP_TARGET=2)",
    vars: &[("WARM_IP_TARGET", "2"), ("MINIMUM_IP_TARGET", "2")],
};

#[derive(Default)]
struct Tally {
    /// EC2 calls by action.
    calls: BTreeMap<&'static str, u64>,
    /// ADDs that found the pool empty and waited for the refill.
    waits: u64,
    peak_idle: u32,
}

impl Tally {
    fn total(&self) -> u64 {
        self.calls.values().sum()
    }

    fn mutating(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(action, _)| !action.starts_with("Describe"))
            .map(|(_, n)| n)
            .sum()
    }

    fn add(&mut self, ipam: &Ipam) {
        for ((action, _), n) in ipam.ec2().calls() {
            *self.calls.entry(action).or_default() += n;
        }
    }
}

fn owner(n: usize) -> Owner {
    Owner {
        network: "eniflow".into(),
        container_id: format!("bench-{n}"),
        ifname: "eth0".into(),
    }
}

async fn start(vpc: &ApiVpc, instance_id: &str, knobs: &Knobset, dir: &std::path::Path) -> Ipam {
    vpc.emulator.select_imds(instance_id);
    let client = instance::client(Some(&vpc.emulator.endpoint())).expect("IMDS client");
    let instance = Instance::read(&client).await.expect("instance metadata");
    let mut vars: Vec<(&str, &str)> = knobs.vars.to_vec();
    vars.push(("IP_COOLDOWN_PERIOD", "0"));
    let knobs = Knobs::from_vars(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    })
    .expect("valid knobs");
    let mut config = Config::new(knobs, dir.join(format!("{instance_id}.json")));
    config.eni_min_age = Duration::ZERO;
    config.release_interval = Duration::ZERO;
    config.leak_sweep = None;
    Ipam::start(Ec2::from_client(vpc.ec2.clone()), instance, config)
        .await
        .expect("the pool starts")
}

fn idle(ipam: &Ipam) -> u32 {
    let c = ipam.counts();
    c.total - c.assigned
}

/// Adds a pod; if the pool is empty, the refill runs (as kubelet's retry would wait for it).
async fn add_pod(ipam: &Ipam, n: usize, tally: &mut Tally) {
    if ipam.assign(&owner(n), ("bench", "pod")).is_err() {
        tally.waits += 1;
        ipam.refill().await.expect("refill");
        ipam.assign(&owner(n), ("bench", "pod"))
            .expect("an address after the refill");
    }
}

async fn one_node(knobs: &Knobset, dir: &std::path::Path) -> (Tally, u32, u32) {
    let vpc = ApiVpc::new().await;
    let subnet = vpc.subnet("10.0.0.0/18", "us-west-2a").await;
    let node = vpc.launch("c5.4xlarge", &subnet).await;
    let ipam = start(&vpc, &node.id, knobs, dir).await;
    let mut tally = Tally::default();
    ipam.refill().await.expect("refill");
    for n in 0..110 {
        add_pod(&ipam, n, &mut tally).await;
        ipam.refill().await.expect("refill");
        tally.peak_idle = tally.peak_idle.max(idle(&ipam));
    }
    let idle_at_110 = idle(&ipam);
    for n in 0..110 {
        ipam.release(&owner(n)).expect("release");
        ipam.refill().await.expect("refill");
    }
    let idle_at_0 = idle(&ipam);
    tally.add(&ipam);
    (tally, idle_at_110, idle_at_0)
}

async fn five_nodes(knobs: &Knobset, dir: &std::path::Path) -> (Tally, u32) {
    let vpc = ApiVpc::new().await;
    let subnet = vpc.subnet("10.0.0.0/18", "us-west-2a").await;
    let mut tally = Tally::default();
    let mut idle_total = 0;
    for replica in 0..5 {
        let node = vpc.launch("m5.large", &subnet).await;
        let ipam = start(&vpc, &node.id, knobs, dir).await;
        ipam.refill().await.expect("refill");
        add_pod(&ipam, replica, &mut tally).await;
        ipam.refill().await.expect("refill");
        idle_total += idle(&ipam);
        tally.add(&ipam);
    }
    (tally, idle_total)
}

fn calls_line(tally: &Tally) -> String {
    tally
        .calls
        .iter()
        .map(|(action, n)| format!("{action} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Removed when dropped, even if a scenario panics.
    let files = eniflow_tests::agent::PoolFiles::new("bench-ipam");
    let dir = std::path::PathBuf::from(files.path(""));

    println!("## (a) one c5.4xlarge going 0 → 110 → 0 pods, one pod at a time");
    println!();
    println!(
        "| knobs | EC2 calls (mutating) | ADDs that waited | idle at 110 | peak idle | idle at 0 |"
    );
    println!("|---|---|---|---|---|---|");
    let mut details = Vec::new();
    for knobs in [
        &VPC_CNI_DEFAULTS,
        &VPC_CNI_PREFIXES,
        &ENIFLOW_DENSE,
        &ENIFLOW_SPARSE,
    ] {
        let (tally, at_110, at_0) = one_node(knobs, &dir).await;
        println!(
            "| {} | {} ({}) | {} | {at_110} | {} | {at_0} |",
            knobs.name,
            tally.total(),
            tally.mutating(),
            tally.waits,
            tally.peak_idle
        );
        details.push(format!("(a) {}: {}", knobs.name, calls_line(&tally)));
    }
    println!();
    println!("## (b) five m5.large nodes, one replica of a 5-replica deployment each");
    println!();
    println!("| knobs | EC2 calls (mutating) | ADDs that waited | idle addresses, 5 nodes |");
    println!("|---|---|---|---|");
    for knobs in [
        &VPC_CNI_DEFAULTS,
        &VPC_CNI_PREFIXES,
        &ENIFLOW_DENSE,
        &ENIFLOW_SPARSE,
    ] {
        let (tally, idle_total) = five_nodes(knobs, &dir).await;
        println!(
            "| {} | {} ({}) | {} | {idle_total} |",
            knobs.name,
            tally.total(),
            tally.mutating(),
            tally.waits
        );
        details.push(format!("(b) {}: {}", knobs.name, calls_line(&tally)));
    }
    println!();
    println!("EC2 calls by action:");
    for line in details {
        println!("- {line}");
    }
}
