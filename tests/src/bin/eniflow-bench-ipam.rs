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
use eniflow_tests::{
    lab::api_vpc::ApiVpc,
    report::{self, Part, Series, Table},
};

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

    /// Calls (mutating) per pod added, `pods` in all.
    fn per_pod(&self, pods: u64) -> String {
        let per = |n: u64| n as f64 / pods as f64;
        format!("{:.2} ({:.2})", per(self.total()), per(self.mutating()))
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

/// The pool step by step (each pod arriving or leaving, then the refill): addresses held and
/// assigned, and the steps that made mutating EC2 calls.
#[derive(Default)]
struct Trace {
    held: Vec<(f64, f64)>,
    assigned: Vec<(f64, f64)>,
    ec2_steps: Vec<f64>,
}

impl Trace {
    fn record(&mut self, step: usize, ipam: &Ipam, mutating_before: &mut u64) {
        let c = ipam.counts();
        self.held.push((step as f64, f64::from(c.total)));
        self.assigned.push((step as f64, f64::from(c.assigned)));
        let mutating: u64 = ipam
            .ec2()
            .calls()
            .iter()
            .filter(|((action, _), _)| !action.starts_with("Describe"))
            .map(|(_, n)| n)
            .sum();
        if mutating > *mutating_before {
            self.ec2_steps.push(step as f64);
        }
        *mutating_before = mutating;
    }
}

async fn one_node(knobs: &Knobset, dir: &std::path::Path) -> (Tally, u32, u32, Trace) {
    let vpc = ApiVpc::new().await;
    let subnet = vpc.subnet("10.0.0.0/18", "us-west-2a").await;
    let node = vpc.launch("c5.4xlarge", &subnet).await;
    let ipam = start(&vpc, &node.id, knobs, dir).await;
    let mut tally = Tally::default();
    let mut trace = Trace::default();
    let mut mutating = 0;
    ipam.refill().await.expect("refill");
    trace.record(0, &ipam, &mut mutating);
    for n in 0..110 {
        add_pod(&ipam, n, &mut tally).await;
        ipam.refill().await.expect("refill");
        tally.peak_idle = tally.peak_idle.max(idle(&ipam));
        trace.record(n + 1, &ipam, &mut mutating);
    }
    let idle_at_110 = idle(&ipam);
    for n in 0..110 {
        ipam.release(&owner(n)).expect("release");
        ipam.refill().await.expect("refill");
        trace.record(111 + n, &ipam, &mut mutating);
    }
    let idle_at_0 = idle(&ipam);
    tally.add(&ipam);
    (tally, idle_at_110, idle_at_0, trace)
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
        "| knobs | EC2 calls (mutating) | per pod added | ADDs that waited | idle at 110 | peak idle | idle at 0 |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut details = Vec::new();
    let mut part = Part {
        name: "ipam".into(),
        title: "The pool: EC2 calls and idle addresses".into(),
        method: "The agent's pool against the lab's EC2 emulator, pods arriving one at a time and the refill settling after each arrival or departure; time is compressed (cooldown, ENI minimum age and scale-down pacing are zero), so the figures count decisions, not seconds.".into(),
        ..Default::default()
    };
    let mut one_node_rows = Vec::new();
    let mut five_node_rows = Vec::new();
    for knobs in [
        &VPC_CNI_DEFAULTS,
        &VPC_CNI_PREFIXES,
        &ENIFLOW_DENSE,
        &ENIFLOW_SPARSE,
    ] {
        let (tally, at_110, at_0, trace) = one_node(knobs, &dir).await;
        let row = vec![
            knobs.name.to_owned(),
            format!("{} ({})", tally.total(), tally.mutating()),
            tally.per_pod(110),
            tally.waits.to_string(),
            at_110.to_string(),
            tally.peak_idle.to_string(),
            at_0.to_string(),
        ];
        println!("| {} |", row.join(" | "));
        one_node_rows.push(row);
        let file = report::line_chart(
            &format!("ipam-0-110-0-{}.svg", part.figures.len()),
            &format!("0 → 110 → 0 pods: {}", knobs.name),
            (
                "step (a pod arrives, then leaves, one at a time)",
                "addresses",
            ),
            &[
                Series {
                    name: "addresses held".into(),
                    points: trace.held,
                },
                Series {
                    name: "assigned to pods".into(),
                    points: trace.assigned,
                },
            ],
            &trace
                .ec2_steps
                .iter()
                .map(|s| (*s, "EC2".to_owned()))
                .collect::<Vec<_>>(),
        );
        part.figures.push((
            file,
            format!(
                "The pool through 0 → 110 → 0 pods, {} (x: steps with mutating EC2 calls)",
                knobs.name
            ),
        ));
        details.push(format!("(a) {}: {}", knobs.name, calls_line(&tally)));
    }
    println!();
    println!("## (b) five m5.large nodes, one replica of a 5-replica deployment each");
    println!();
    println!("| knobs | EC2 calls (mutating) | per pod added | ADDs that waited | idle addresses, 5 nodes |");
    println!("|---|---|---|---|---|");
    for knobs in [
        &VPC_CNI_DEFAULTS,
        &VPC_CNI_PREFIXES,
        &ENIFLOW_DENSE,
        &ENIFLOW_SPARSE,
    ] {
        let (tally, idle_total) = five_nodes(knobs, &dir).await;
        let row = vec![
            knobs.name.to_owned(),
            format!("{} ({})", tally.total(), tally.mutating()),
            tally.per_pod(5),
            tally.waits.to_string(),
            idle_total.to_string(),
        ];
        println!("| {} |", row.join(" | "));
        five_node_rows.push(row);
        details.push(format!("(b) {}: {}", knobs.name, calls_line(&tally)));
    }
    println!();
    println!("EC2 calls by action:");
    for line in &details {
        println!("- {line}");
    }
    part.tables = vec![
        Table {
            caption: "(a) one c5.4xlarge going 0 → 110 → 0 pods, one pod at a time".into(),
            header: [
                "knobs",
                "EC2 calls (mutating)",
                "calls per pod added (mutating)",
                "ADDs that waited",
                "idle at 110",
                "peak idle",
                "idle at 0",
            ]
            .map(String::from)
            .to_vec(),
            rows: one_node_rows,
        },
        Table {
            caption: "(b) five m5.large nodes, one replica of a 5-replica deployment each".into(),
            header: [
                "knobs",
                "EC2 calls (mutating)",
                "calls per pod added (mutating)",
                "ADDs that waited",
                "idle addresses, 5 nodes",
            ]
            .map(String::from)
            .to_vec(),
            rows: five_node_rows,
        },
    ];
    part.data = serde_json::json!({ "calls_by_action": details });
    part.write();
}
