//! Many nodes scaling at once in one VPC, for EC2's account-wide request budget: each node the
//! agent's real pool, in process, with its own EC2 client (the agent's: its retries, its
//! budget) over HTTP to the one emulator, which enforces EC2's token buckets for the whole
//! account. In process rather than one agent process per node: the budget is the pool's and
//! its EC2 client's, and a hundred pools need no namespaces, so what is measured is EC2's view
//! of the calls. Used by the CI test (10 nodes) and `cargo xtask bench scale` (100).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_sdk_ec2::config::Credentials;
use eniflow_agent::{
    ec2::{self, Ec2},
    ec2_budget::Rates,
    instance::Instance,
    ipam::{Config, Ipam, IpamError, Knobs, Owner, PoolError},
};

use crate::lab::{
    api_vpc::{ApiVpc, Launched},
    emulator::{LoggedCall, REGION},
};

/// One run: who scales, how fast, against which buckets.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// The Deployment goes from 0 to nodes × pods_per_node over this long, then back to 0 over
    /// as long once every pod has an address.
    pub ramp: Duration,
    pub instance_type: String,
    /// VPC CNI's knobs, as the agent reads them from its environment.
    pub knobs: Vec<(String, String)>,
    /// Each node's budget (ENIFLOW_EC2_BUDGET).
    pub budget: Rates,
    /// The account's buckets that differ from AWS's defaults: (class, capacity, per second).
    pub account: Vec<(String, f64, f64)>,
    /// Seeds who gets which pod when.
    pub seed: u64,
    /// Back to 0 after the peak, until the pools have given back what they let go.
    pub scale_down: bool,
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Every EC2 call the emulator logged (the VPC's set-up excluded).
    pub calls: Vec<LoggedCall>,
    /// How long each pod waited for its address, from when the Deployment asked for it.
    pub waits: Vec<Duration>,
    /// Free addresses the pools held when the last pod got one, and when all had given back.
    pub idle_at_peak: u32,
    pub idle_at_end: u32,
    pub pods: usize,
}

impl Outcome {
    /// Calls by action and outcome.
    pub fn by_action(&self) -> BTreeMap<(String, String), usize> {
        let mut counts = BTreeMap::new();
        for c in &self.calls {
            *counts
                .entry((c.action.clone(), c.outcome.clone()))
                .or_default() += 1;
        }
        counts
    }

    pub fn throttled(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| c.outcome == "RequestLimitExceeded")
            .count()
    }

    /// The `q`-quantile of the pods' waits.
    pub fn wait(&self, q: f64) -> Duration {
        let mut waits = self.waits.clone();
        waits.sort();
        let i = ((waits.len() as f64 - 1.0) * q).round() as usize;
        waits.get(i).copied().unwrap_or_default()
    }
}

/// An EC2 client maker as the agent's, calling as `node` (its access key: the emulator's log
/// names the caller by it).
pub fn ec2_of(vpc: &ApiVpc, node: &str, budget: Rates) -> impl Fn() -> Ec2 + Send + 'static {
    let settings = ec2::Settings {
        budget,
        ..Default::default()
    };
    let config = vpc
        .emulator
        .ec2_config()
        .credentials_provider(Credentials::new(node, "lab", None, None, "lab"));
    move || Ec2::configured(config.clone(), &settings)
}

/// Starts a pool as kubelet restarts a crashing agent: a start EC2 throttled past the SDK's
/// retries is tried again after kubelet's crash-loop backoff (10 s, doubling to 5 minutes),
/// for up to ten minutes.
async fn start_retrying(ec2: impl Fn() -> Ec2, instance: Instance, config: Config) -> Ipam {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut backoff = Duration::from_secs(10);
    loop {
        match Ipam::start(ec2(), instance.clone(), config.clone()).await {
            Ok(pool) => return pool,
            Err(e) if Instant::now() < deadline => {
                eprintln!(
                    "{}: the pool did not start ({e}); again in {backoff:?}",
                    instance.id
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
            Err(e) => panic!("{}: the pool did not start: {e}", instance.id),
        }
    }
}

/// The agent's view of `launched` (what it reads from IMDS), an `instance_type` in `subnet`
/// of `vpc`, zone us-west-2a.
pub fn instance_of(
    vpc: &ApiVpc,
    launched: &Launched,
    instance_type: &str,
    subnet: &str,
) -> Instance {
    Instance {
        id: launched.id.clone(),
        instance_type: instance_type.to_owned(),
        availability_zone: "us-west-2a".into(),
        region: REGION.into(),
        primary_eni: launched.primary_eni.clone(),
        subnet_id: subnet.to_owned(),
        vpc_id: vpc.id.clone(),
        security_groups: vec![vpc.sg.clone()],
    }
}

fn owner(pod: usize) -> Owner {
    Owner {
        network: "eniflow".into(),
        container_id: format!("pod-{pod}"),
        ifname: "eth0".into(),
    }
}

/// Runs `s` in a new VPC: every node's agent starts at once (as after a rollout), then the
/// Deployment scales up (a pod that finds its node's pool empty is retried a second later, as
/// the runtime retries its sandbox; none may wait more than `give_up`) and back to 0.
pub async fn run(s: &Scenario, give_up: Duration) -> Outcome {
    let vpc = ApiVpc::new().await;
    let subnet = vpc.subnet("10.0.0.0/16", "us-west-2a").await;
    let account: Vec<(&str, f64, f64)> = s
        .account
        .iter()
        .map(|(c, capacity, rate)| (c.as_str(), *capacity, *rate))
        .collect();
    let dir = std::env::temp_dir().join(crate::unique_name("scale"));
    let knobs = Knobs::from_vars(|name| {
        s.knobs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
    .expect("valid knobs");
    // The nodes exist before the throttle is on and their agents start.
    let mut launched = Vec::new();
    for _ in 0..s.nodes {
        launched.push(vpc.launch(&s.instance_type, &subnet).await);
    }
    vpc.emulator.throttle(true, &account);
    let mut starting = Vec::new();
    for (n, launched) in launched.iter().enumerate() {
        let instance = instance_of(&vpc, launched, &s.instance_type, &subnet);
        let mut config = Config::new(knobs.clone(), dir.join(format!("node-{n}.json")));
        config.leak_sweep = None;
        let ec2 = ec2_of(&vpc, &launched.id, s.budget);
        starting.push(tokio::spawn(start_retrying(ec2, instance, config)));
    }
    let mut pools = Vec::new();
    for start in starting {
        let pool = Arc::new(start.await.expect("a start"));
        tokio::spawn(pool.clone().run_refill());
        pools.push(pool);
    }

    // Up: pods arrive spread over the ramp, each to a node drawn at random.
    let total = s.nodes * s.pods_per_node;
    let mut rng = fastrand::Rng::with_seed(s.seed);
    let mut per_node = vec![0usize; s.nodes];
    let mut placed: Vec<usize> = Vec::new();
    for _ in 0..total {
        let open: Vec<usize> = (0..s.nodes)
            .filter(|n| per_node[*n] < s.pods_per_node)
            .collect();
        let node = open[rng.usize(..open.len())];
        per_node[node] += 1;
        placed.push(node);
    }
    let started = Instant::now();
    let mut waits = Vec::new();
    let mut waiting: Vec<(usize, usize, Instant)> = Vec::new();
    let mut next = 0;
    while next < total || !waiting.is_empty() {
        let due = (started.elapsed().as_secs_f64() / s.ramp.as_secs_f64() * total as f64).ceil();
        while next < total && (next as f64) < due.min(total as f64) {
            waiting.push((placed[next], next, Instant::now()));
            next += 1;
        }
        waiting.retain(|(node, pod, since)| {
            match pools[*node].assign(&owner(*pod), ("default", &format!("pod-{pod}"))) {
                Ok(_) => {
                    waits.push(since.elapsed());
                    false
                }
                Err(IpamError::Pool(PoolError::Empty { .. })) => {
                    assert!(
                        since.elapsed() < give_up,
                        "pod-{pod} on node {node} has no address after {give_up:?}"
                    );
                    true
                }
                Err(e) => panic!("pod-{pod}: {e}"),
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle = |pools: &[Arc<Ipam>]| pools.iter().map(|p| p.counts().available()).sum::<u32>();
    let idle_at_peak = idle(&pools);
    let nodes_calls = |vpc: &ApiVpc| -> Vec<LoggedCall> {
        // The nodes' calls: the lab's own (access key "lab") set the VPC up.
        let log = vpc.emulator.call_log();
        log.into_iter()
            .filter(|c| c.caller.as_deref() != Some("lab"))
            .collect()
    };
    if !s.scale_down {
        let calls = nodes_calls(&vpc);
        let _ = std::fs::remove_dir_all(&dir);
        return Outcome {
            calls,
            waits,
            idle_at_peak,
            idle_at_end: idle_at_peak,
            pods: total,
        };
    }

    // Down: the pods go over the ramp, and the pools give back what the warm targets let go.
    let down = s.ramp / total.max(1) as u32;
    for (pod, node) in placed.iter().enumerate() {
        pools[*node].release(&owner(pod)).expect("a release");
        tokio::time::sleep(down).await;
    }
    // Give-backs are paced (30 s apart per node by default): wait until nothing moves.
    let mut last = (idle(&pools), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = idle(&pools);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(75) {
            break;
        }
    }
    let idle_at_end = idle(&pools);
    let calls = nodes_calls(&vpc);
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        calls,
        waits,
        idle_at_peak,
        idle_at_end,
        pods: total,
    }
}
