//! `cargo xtask bench scale`: a hundred nodes (ENIFLOW_SCALE_NODES) in one VPC scaling at once
//! against EC2's account-wide request buckets (AWS's default sizes, enforced by the lab's
//! emulator): a Deployment from 0 to nodes × 30 pods in one minute, then back to 0, with VPC
//! CNI's default knobs (no client-side limit: VPC CNI has none) and with eniflow's recommended
//! ones. Each node is the agent's real pool in process with the agent's EC2 client
//! (`eniflow_tests::scale`). Beside it, a paper model: calls per node in the scale-out minute
//! against each bucket's capacity and refill, and at how many nodes each configuration starts
//! to throttle.

use std::{collections::BTreeMap, time::Duration};

use eniflow_tests::{
    report::{self, Part, Series, Table},
    scale::{self, Outcome, Scenario},
};

/// AWS's default account buckets (capacity, refill per second), as the emulator has them.
const BUCKETS: &[(&str, f64, f64)] = &[
    ("mutating", 50.0, 5.0),
    ("eni-and-ip", 100.0, 5.0),
    ("create-tags", 100.0, 10.0),
    ("describe", 100.0, 20.0),
    ("describe-unfiltered", 50.0, 10.0),
];

struct Knobset {
    name: &'static str,
    knobs: &'static [(&'static str, &'static str)],
    budget: &'static str,
}

const VPC_CNI: Knobset = Knobset {
    name: "VPC CNI defaults (WARM_ENI_TARGET=1), no client-side limit",
    knobs: &[],
    budget: "unlimited",
};
/// Dense nodes (the pool bench's recommendation), with the node budget recommended for 100
/// nodes and more: the default sustained rates (a hundredth of the account's refill) and bursts
/// of one call, so a hundred nodes starting at once never ask more than the buckets hold.
const ENIFLOW: Knobset = Knobset {
    name: "eniflow recommended (prefixes, WARM_IP_TARGET=8, ENIFLOW_EC2_BUDGET with bursts of 1)",
    knobs: &[
        ("ENABLE_PREFIX_DELEGATION", "true"),
        ("WARM_IP_TARGET", "8"),
    ],
    budget: LARGE_CLUSTER_BUDGET,
};

/// ENIFLOW_EC2_BUDGET for 100 nodes and more.
const LARGE_CLUSTER_BUDGET: &str =
    "mutating=0.05/1,eni-and-ip=0.05/1,create-tags=0.1/1,describe=0.2/1";

const PODS_PER_NODE: usize = 30;
const RAMP: Duration = Duration::from_secs(60);

/// Calls of `class` per node in the scale-out minute, and the node count at which they exceed
/// what the bucket serves in that minute (its capacity plus a minute of refill).
fn paper(outcome: &Outcome, nodes: usize, class: &str, ramp_end: f64) -> (f64, f64) {
    let (capacity, refill) = BUCKETS
        .iter()
        .find(|(c, _, _)| *c == class)
        .map(|(_, c, r)| (*c, *r))
        .unwrap();
    let start = outcome.calls.first().map_or(0.0, |c| c.t);
    let in_minute = outcome
        .calls
        .iter()
        .filter(|c| c.class == class && c.t - start <= ramp_end)
        .filter(|c| c.outcome != "RequestLimitExceeded")
        .count() as f64;
    let per_node = in_minute / nodes as f64;
    let served = capacity + refill * ramp_end;
    let limit = if per_node > 0.0 {
        served / per_node
    } else {
        f64::INFINITY
    };
    (per_node, limit)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nodes: usize = eniflow_tests::env_number("ENIFLOW_SCALE_NODES").unwrap_or(100);
    let mut part = Part {
        name: "scale".into(),
        title: format!("Cluster scale: {nodes} nodes against EC2's account-wide request budget"),
        method: format!(
            "{nodes} nodes (m5.xlarge) in one VPC, each the agent's pool in process with the agent's EC2 client over HTTP to the lab's emulator, which enforces AWS's default token buckets for the whole account (mutating 50 at 5/s, ENI and address actions 100 at 5/s, CreateTags 100 at 10/s, Describe 100 at 20/s). Every agent starts at once; a Deployment goes from 0 to {} pods in one minute (pods placed at random, a pod whose node has no free address retried every 200 ms), then back to 0 over a minute, and the pools settle. Real time, default pacing (30 s between give-backs, 60 s reconcile).",
            nodes * PODS_PER_NODE
        ),
        ..Default::default()
    };
    let mut rows = Vec::new();
    let mut paper_rows = Vec::new();
    let mut series = Vec::new();
    let mut data = BTreeMap::new();
    for knobset in [&VPC_CNI, &ENIFLOW] {
        println!("==> {nodes} nodes: {}", knobset.name);
        let scenario = Scenario {
            nodes,
            pods_per_node: PODS_PER_NODE,
            ramp: RAMP,
            instance_type: "m5.xlarge".into(),
            knobs: knobset
                .knobs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            budget: knobset.budget.parse().expect("a valid budget"),
            account: Vec::new(),
            seed: 15,
            scale_down: true,
        };
        let outcome = scale::run(&scenario, Duration::from_secs(900)).await;
        let pods = outcome.pods as f64;
        let ok_calls = outcome
            .calls
            .iter()
            .filter(|c| c.outcome != "RequestLimitExceeded")
            .count();
        let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
        for c in &outcome.calls {
            *by_action.entry(c.action.clone()).or_default() += 1;
        }
        let actions = by_action
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(vec![
            knobset.name.to_owned(),
            outcome.calls.len().to_string(),
            outcome.throttled().to_string(),
            format!(
                "{:.1} / {:.1} / {:.1}",
                outcome.wait(0.5).as_secs_f64(),
                outcome.wait(0.99).as_secs_f64(),
                outcome.wait(1.0).as_secs_f64()
            ),
            outcome.idle_at_peak.to_string(),
            outcome.idle_at_end.to_string(),
            format!("{:.2}", ok_calls as f64 / pods),
        ]);
        println!("    {}", rows.last().unwrap().join(" | "));
        println!("    calls: {actions}");
        for class in ["eni-and-ip", "mutating", "describe"] {
            let (per_node, limit) = paper(&outcome, nodes, class, RAMP.as_secs_f64());
            paper_rows.push(vec![
                knobset.name.to_owned(),
                class.to_owned(),
                format!("{per_node:.2}"),
                if limit.is_finite() {
                    format!("{limit:.0}")
                } else {
                    "no calls".into()
                },
            ]);
        }
        // Throttled calls per 5 s.
        let start = outcome.calls.first().map_or(0.0, |c| c.t);
        let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
        for c in &outcome.calls {
            let slot = ((c.t - start) / 5.0) as u64;
            let e = buckets.entry(slot).or_default();
            if c.outcome == "RequestLimitExceeded" {
                *e += 1.0;
            }
        }
        series.push(Series {
            name: knobset.name.to_owned(),
            points: buckets.iter().map(|(s, n)| (*s as f64 * 5.0, *n)).collect(),
        });
        data.insert(
            knobset.name,
            serde_json::json!({
                "calls_by_action": by_action,
                "throttled": outcome.throttled(),
                "waits_s": outcome.waits.iter().map(|w| w.as_secs_f64()).collect::<Vec<_>>(),
                "idle_at_peak": outcome.idle_at_peak,
                "idle_at_end": outcome.idle_at_end,
            }),
        );
    }
    let figure = report::line_chart(
        "scale-throttled.svg",
        &format!("{nodes} nodes scaling out: throttled EC2 calls"),
        (
            "seconds since the agents started",
            "RequestLimitExceeded per 5 s",
        ),
        &series,
        &[],
    );
    part.figures.push((
        figure,
        "Throttled calls over time, each configuration".into(),
    ));
    part.tables = vec![
        Table {
            caption: format!("{nodes} nodes, 0 → {} → 0 pods", nodes * PODS_PER_NODE),
            header: [
                "knobs",
                "EC2 calls",
                "throttled",
                "pod wait p50 / p99 / max (s)",
                "idle at peak",
                "idle at the end",
                "calls per pod",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        },
        Table {
            caption: "Paper model: calls per node in the scale-out minute, and the node count at which a minute of them exceeds the bucket's capacity plus a minute of refill".into(),
            header: ["knobs", "bucket", "calls per node per minute", "throttles from (nodes)"]
                .map(String::from)
                .to_vec(),
            rows: paper_rows,
        },
    ];
    part.data = serde_json::to_value(data).unwrap();
    part.write();
}
