//! What the agent tells Prometheus. VPC CNI's `awscni_*` names and labels where the meaning is
//! VPC CNI's (dashboards and alerts carry over), eniflow's own under `eniflow_*`; every name is
//! here and nowhere else. Events are counted where they happen; the pool and the kernel's
//! counters are read when Prometheus scrapes, never copied on every packet.

pub mod listener;

use std::{
    collections::VecDeque,
    sync::{LazyLock, Mutex},
    time::Duration,
};

use eniflow_common::{DropReason, DIRECTION_INGRESS, HOOK_NAMES};
use prometheus::{
    core::Collector, proto::MetricFamily, Encoder, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    datapath::{self, Pins},
    ec2::NO_ANSWER,
    ipam::{pool::AddressState, Ipam, Shortage},
    limits::ADDRESSES_PER_PREFIX,
};

/// CNI commands timed (ADD, DEL, CHECK), as `eniflow_cni_<verb>_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
}

/// The steps of a pool pod's ADD, each timed (`eniflow_cni_add_step_duration_seconds`): where
/// an ADD's time goes, for an operator and for the bench's breakdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddStep {
    /// Taking a free address from the pool (in memory).
    Address,
    /// Writing the checkpoint that records it (fsync included).
    Checkpoint,
    /// The veth pair, the pod's address, routes and neighbour.
    Veth,
    /// The tc programs on the pod's host veth.
    Attach,
    /// The pod's entries in the data-plane maps.
    Maps,
}

impl AddStep {
    pub const ALL: [AddStep; 5] = [
        AddStep::Address,
        AddStep::Checkpoint,
        AddStep::Veth,
        AddStep::Attach,
        AddStep::Maps,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AddStep::Address => "address",
            AddStep::Checkpoint => "checkpoint",
            AddStep::Veth => "veth",
            AddStep::Attach => "attach",
            AddStep::Maps => "maps",
        }
    }
}

/// The agent's metrics (one set per process: `get`).
pub struct Metrics {
    registry: Registry,
    add_ip_req: IntCounter,
    del_ip_req: IntCounterVec,
    no_available_ip: IntCounter,
    ec2api_req: IntCounterVec,
    ec2api_err: IntCounterVec,
    aws_api_err: IntCounterVec,
    aws_api_latency: HistogramVec,
    reconcile: IntCounterVec,
    ipamd_err: IntCounterVec,
    force_removed_ips: IntCounter,
    startup: HistogramVec,
    eni_max: IntGauge,
    ip_max: IntGauge,
    eni_allocated: IntGauge,
    total_ips: IntGauge,
    assigned_ips: IntGauge,
    total_prefixes: IntGauge,
    assigned_per_eni: IntGaugeVec,
    cni: [HistogramVec; 3],
    add_steps: HistogramVec,
    ec2_calls: IntCounterVec,
    ec2_attempts: IntCounterVec,
    ec2_budget_waits: IntCounterVec,
    ec2_budget_wait_ms: IntCounterVec,
    given_back: IntCounterVec,
    subnet_pauses: IntCounterVec,
    paused_subnets: IntGaugeVec,
    enis_in_other_subnets: IntCounter,
    leaked_enis_deleted: IntCounter,
    pool_addresses: IntGaugeVec,
    eni_addresses: IntGaugeVec,
    /// The last errors of EC2 and of the pool's upkeep, newest last (for `status`).
    last_errors: Mutex<VecDeque<serde_json::Value>>,
}

/// Errors `status` shows.
const LAST_ERRORS: usize = 10;

/// The pool's address states, as label values.
const STATES: [(AddressState, &str); 4] = [
    (AddressState::Assigned, "assigned"),
    (AddressState::Warm, "warm"),
    (AddressState::Cooling, "cooling"),
    (AddressState::Leaving, "leaving"),
];

/// Latency buckets of a CNI command, in seconds (an ADD is tens of milliseconds).
const CNI_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Latency buckets of one ADD step, in seconds (tens of microseconds to tens of milliseconds).
const STEP_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];
/// Latency buckets of an EC2 call, in milliseconds (VPC CNI's unit for this series).
const EC2_BUCKETS_MS: &[f64] = &[
    10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
const STARTUP_BUCKETS: &[f64] = &[1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("a valid metric name");
    registry
        .register(Box::new(h.clone()))
        .expect("registered once");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let build = gauges(
            &r,
            "awscni_build_info",
            "A metric with a constant '1' value labeled by the version and revision eniflow was built from",
            &["version", "revision"],
        );
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("ENIFLOW_REVISION").unwrap_or("unknown"),
            ])
            .set(1);
        let cni = |verb: &str| {
            histogram(
                &r,
                &format!("eniflow_cni_{verb}_duration_seconds"),
                &format!("Time the agent took to answer a CNI {} (result ok or error, code the CNI error code, 0 for ok)", verb.to_uppercase()),
                CNI_BUCKETS,
                &["result", "code"],
            )
        };
        let m = Metrics {
            add_ip_req: counter(&r, "awscni_add_ip_req_count", "The number of add IP address requests"),
            del_ip_req: counters(
                &r,
                "awscni_del_ip_req_count",
                "The number of delete IP address requests",
                &["reason"],
            ),
            no_available_ip: counter(
                &r,
                "awscni_no_available_ip_addresses",
                "The number of pod IP assignments that fail due to no available IP addresses",
            ),
            ec2api_req: counters(
                &r,
                "awscni_ec2api_req_count",
                "The number of requests made to EC2 APIs by CNI",
                &["fn"],
            ),
            ec2api_err: counters(
                &r,
                "awscni_ec2api_error_count",
                "The number of failed EC2 APIs requests",
                &["fn"],
            ),
            aws_api_err: counters(
                &r,
                "awscni_aws_api_error_count",
                "The number of times AWS API returns an error",
                &["api", "error"],
            ),
            aws_api_latency: histogram(
                &r,
                "awscni_aws_api_latency_ms",
                "AWS API call latency in ms",
                EC2_BUCKETS_MS,
                &["api", "error", "status"],
            ),
            reconcile: counters(
                &r,
                "awscni_reconcile_count",
                "The number of times ipamd reconciles on ENIs and IP/Prefix addresses",
                &["fn"],
            ),
            ipamd_err: counters(
                &r,
                "awscni_ipamd_error_count",
                "The number of errors encountered in ipamd",
                &["fn"],
            ),
            force_removed_ips: counter(
                &r,
                "awscni_force_removed_ips",
                "The number of IPs force removed while they had assigned pods",
            ),
            startup: histogram(
                &r,
                "awscni_ipamd_startup_duration_seconds",
                "The duration of IPAMD startup from process start to ready to serve CNI requests",
                STARTUP_BUCKETS,
                &["success", "with_api_server", "failure_reason"],
            ),
            eni_max: gauge(
                &r,
                "awscni_eni_max",
                "The maximum number of ENIs that can be attached to the instance, accounting for unmanaged ENIs",
            ),
            ip_max: gauge(
                &r,
                "awscni_ip_max",
                "The maximum number of IP addresses that can be allocated to the instance",
            ),
            eni_allocated: gauge(&r, "awscni_eni_allocated", "The number of ENIs allocated"),
            total_ips: gauge(&r, "awscni_total_ip_addresses", "The total number of IP addresses"),
            assigned_ips: gauge(
                &r,
                "awscni_assigned_ip_addresses",
                "The number of IP addresses assigned to pods",
            ),
            total_prefixes: gauge(
                &r,
                "awscni_total_ipv4_prefixes",
                "The total number of IPv4 prefixes",
            ),
            assigned_per_eni: gauges(
                &r,
                "awscni_assigned_ip_per_eni",
                "The number of allocated ips partitioned by eni",
                &["eni"],
            ),
            cni: [cni("add"), cni("del"), cni("check")],
            add_steps: histogram(
                &r,
                "eniflow_cni_add_step_duration_seconds",
                "Time one step of a pool pod's CNI ADD took (address, checkpoint, veth, attach, maps)",
                STEP_BUCKETS,
                &["step"],
            ),
            ec2_calls: counters(
                &r,
                "eniflow_ec2_calls_total",
                "EC2 calls by action and outcome (ok, the EC2 error code, or no-answer)",
                &["action", "outcome"],
            ),
            ec2_attempts: counters(
                &r,
                "eniflow_ec2_attempts_total",
                "HTTP requests to EC2 by action and status (no-answer: none came), the SDK's retries included: attempts above calls are retries, 503s are throttling",
                &["action", "status"],
            ),
            ec2_budget_waits: counters(
                &r,
                "eniflow_ec2_budget_waits_total",
                "EC2 calls held back by the node's own budget (ENIFLOW_EC2_BUDGET) or a throttled class's backoff, by action class",
                &["class"],
            ),
            ec2_budget_wait_ms: counters(
                &r,
                "eniflow_ec2_budget_wait_milliseconds_total",
                "Time EC2 calls were held back by the node's budget or backoff, by action class",
                &["class"],
            ),
            given_back: counters(
                &r,
                "eniflow_addresses_given_back_total",
                "Pod addresses the pool gave back to their subnets, as single addresses or within /28 prefixes",
                &["block"],
            ),
            subnet_pauses: counters(
                &r,
                "eniflow_subnet_pauses_total",
                "Times a subnet was passed over for the subnet pause: out of addresses, or out of free /28s (prefix mode takes single addresses there meanwhile)",
                &["shortage"],
            ),
            paused_subnets: gauges(
                &r,
                "eniflow_paused_subnets",
                "Subnets passed over now, by what they ran out of (addresses, prefixes)",
                &["shortage"],
            ),
            enis_in_other_subnets: counter(
                &r,
                "eniflow_enis_in_other_subnets_total",
                "ENIs subnet discovery created outside the node's own subnet (it had fewer free addresses or none)",
            ),
            leaked_enis_deleted: counter(
                &r,
                "eniflow_leaked_enis_deleted_total",
                "Detached ENIs of eniflow's that the leak sweep deleted",
            ),
            pool_addresses: gauges(
                &r,
                "eniflow_pool_addresses",
                "The pool's pod addresses by state (assigned, warm: free to hand out, cooling: released, resting, leaving: being given back)",
                &["state"],
            ),
            eni_addresses: gauges(
                &r,
                "eniflow_eni_addresses",
                "Pod addresses per ENI and subnet by state (assigned, warm, cooling, leaving)",
                &["eni", "subnet", "state"],
            ),
            last_errors: Mutex::default(),
            registry: r,
        };
        // Every label value from the start, so a rate over the first event is not lost.
        for what in Shortage::ALL {
            m.subnet_pauses.with_label_values(&[what.name()]);
        }
        for block in ["address", "prefix"] {
            m.given_back.with_label_values(&[block]);
        }
        m
    }

    /// A CNI command answered after `took`: `code` is its CNI error code, None when it succeeded.
    pub fn cni_answered(&self, verb: Verb, code: Option<u32>, took: Duration) {
        match verb {
            Verb::Add => self.add_ip_req.inc(),
            // The only reason a runtime's DEL gives (VPC CNI's label value).
            Verb::Del => self.del_ip_req.with_label_values(&["PodDeleted"]).inc(),
            Verb::Check => {}
        }
        let result = if code.is_some() { "error" } else { "ok" };
        let code = code.unwrap_or(0).to_string();
        self.cni[verb as usize]
            .with_label_values(&[result, code.as_str()])
            .observe(took.as_secs_f64());
    }

    /// One step of an ADD took `took`.
    pub fn add_step(&self, step: AddStep, took: Duration) {
        self.add_steps
            .with_label_values(&[step.name()])
            .observe(took.as_secs_f64());
    }

    /// An ADD found the pool without a free address.
    pub fn no_available_address(&self) {
        self.no_available_ip.inc();
    }

    /// An EC2 call answered with `code` (None: success) and HTTP `status`, after `took`.
    pub fn ec2_call(&self, action: &str, code: Option<&str>, status: Option<u16>, took: Duration) {
        self.ec2api_req.with_label_values(&[action]).inc();
        let status = status.map_or_else(String::new, |s| s.to_string());
        if let Some(code) = code {
            self.note_error(format!("EC2 {action}: {code}"));
            self.ec2api_err.with_label_values(&[action]).inc();
            self.aws_api_err.with_label_values(&[action, code]).inc();
        }
        self.ec2_calls
            .with_label_values(&[action, code.unwrap_or("ok")])
            .inc();
        self.aws_api_latency
            .with_label_values(&[action, &code.is_some().to_string(), &status])
            .observe(took.as_secs_f64() * 1000.0);
    }

    /// One attempt of an EC2 call (the SDK may make several) got HTTP `status` (None: no answer).
    pub fn ec2_attempt(&self, action: &str, status: Option<u16>) {
        let status = status.map_or_else(|| NO_ANSWER.to_owned(), |s| s.to_string());
        self.ec2_attempts
            .with_label_values(&[action, status.as_str()])
            .inc();
    }

    /// An EC2 call of `class` held back `wait` by the node's budget.
    pub fn ec2_budget_wait(&self, class: &str, wait: Duration) {
        self.ec2_budget_waits.with_label_values(&[class]).inc();
        self.ec2_budget_wait_ms
            .with_label_values(&[class])
            .inc_by(wait.as_millis() as u64);
    }

    /// A pass of the pool's reconciliation with EC2 (`step` names it, VPC CNI's `fn`).
    pub fn reconciled(&self, step: &str) {
        self.reconcile.with_label_values(&[step]).inc();
    }

    /// A failed step of the pool's upkeep.
    pub fn ipam_error(&self, step: &str, error: &dyn std::fmt::Display) {
        self.note_error(format!("{step}: {error}"));
        self.ipamd_err.with_label_values(&[step]).inc();
    }

    fn note_error(&self, what: String) {
        let mut last = self.last_errors.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() == LAST_ERRORS {
            last.pop_front();
        }
        last.push_back(serde_json::json!({ "at_ms": crate::files::now_ms(), "error": what }));
    }

    /// The last errors noted, oldest first.
    pub fn last_errors(&self) -> Vec<serde_json::Value> {
        let last = self.last_errors.lock().unwrap_or_else(|e| e.into_inner());
        last.iter().cloned().collect()
    }

    /// Addresses of pods taken back because EC2 no longer has them.
    pub fn force_removed(&self, addresses: usize) {
        self.force_removed_ips.inc_by(addresses as u64);
    }

    /// `n` blocks given back: single addresses, or /28 prefixes when `prefixes`.
    pub fn given_back(&self, prefixes: bool, n: usize) {
        let (block, addresses) = if prefixes {
            ("prefix", n * ADDRESSES_PER_PREFIX as usize)
        } else {
            ("address", n)
        };
        self.given_back
            .with_label_values(&[block])
            .inc_by(addresses as u64);
    }

    /// A subnet is passed over for a while: it ran out of `what`.
    pub fn subnet_paused(&self, what: Shortage) {
        self.subnet_pauses.with_label_values(&[what.name()]).inc();
    }

    /// Subnet discovery put a new ENI outside the node's own subnet.
    pub fn eni_in_other_subnet(&self) {
        self.enis_in_other_subnets.inc();
    }

    /// The leak sweep deleted `n` ENIs.
    pub fn leaked_enis_deleted(&self, n: usize) {
        self.leaked_enis_deleted.inc_by(n as u64);
    }

    /// The agent is ready to serve CNI requests, `took` after it started.
    pub fn started(&self, took: Duration, with_api_server: bool) {
        self.startup
            .with_label_values(&["true", &with_api_server.to_string(), ""])
            .observe(took.as_secs_f64());
    }

    /// The exposition Prometheus scrapes: the counters, the pool as it is now and the kernel's
    /// counters read from the pinned maps.
    pub fn render(&self, ipam: Option<&Ipam>, pins: &Pins) -> String {
        if let Some(ipam) = ipam {
            self.read_pool(ipam);
        }
        let mut families = self.registry.gather();
        match kernel_families(pins) {
            Ok(kernel) => families.extend(kernel),
            Err(e) => tracing::warn!("metrics: the kernel's counters: {e}"),
        }
        encode(families)
    }

    fn read_pool(&self, ipam: &Ipam) {
        let shares = ipam.shares();
        let capacity = ipam.capacity();
        self.eni_max.set(i64::from(ipam.max_enis()));
        self.ip_max
            .set(i64::from(ipam.max_enis()) * i64::from(capacity.per_eni));
        let pods: Vec<_> = shares.iter().filter(|s| s.for_pods).collect();
        self.eni_allocated.set(pods.len() as i64);
        let sum = |state| -> i64 { pods.iter().map(|s| i64::from(s.count(state))).sum() };
        self.total_ips
            .set(pods.iter().map(|s| s.addresses.len() as i64).sum());
        self.assigned_ips.set(sum(AddressState::Assigned));
        self.total_prefixes
            .set(pods.iter().map(|s| s.eni.prefixes.len() as i64).sum());
        // ENIs come and go: the per-ENI series are rebuilt from what the pool holds now.
        self.assigned_per_eni.reset();
        self.eni_addresses.reset();
        for s in &pods {
            self.assigned_per_eni
                .with_label_values(&[s.eni.id.as_str()])
                .set(i64::from(s.count(AddressState::Assigned)));
            for (state, name) in STATES {
                self.eni_addresses
                    .with_label_values(&[s.eni.id.as_str(), s.eni.subnet_id.as_str(), name])
                    .set(i64::from(s.count(state)));
            }
        }
        for what in Shortage::ALL {
            self.paused_subnets
                .with_label_values(&[what.name()])
                .set(ipam.paused_count(what) as i64);
        }
        for (state, name) in STATES {
            self.pool_addresses
                .with_label_values(&[name])
                .set(sum(state));
        }
    }
}

/// The text exposition of `families`. A family with no series yet (the kernel's counters
/// before any packet) is left out: the encoder refuses one and would stop there, dropping
/// every family after it.
fn encode(mut families: Vec<MetricFamily>) -> String {
    families.retain(|f| !f.get_metric().is_empty());
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::warn!("metrics: encoding: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The data plane's counters as Prometheus counters: drops by hook and reason, packets and bytes
/// by interface and direction.
fn kernel_families(pins: &Pins) -> Result<Vec<MetricFamily>, datapath::DatapathError> {
    let drops = IntCounterVec::new(
        Opts::new(
            "eniflow_drops_total",
            "Packets eniflow's programs dropped (or failed to redirect), by hook and reason",
        ),
        &["hook", "reason"],
    )
    .expect("a valid metric name");
    for (hook, counted) in datapath::read_hook_drops(pins)? {
        for reason in DropReason::ALL {
            drops
                .with_label_values(&[HOOK_NAMES[hook as usize], reason.name()])
                .inc_by(counted.get(reason));
        }
    }
    let labels = &["ifindex", "direction"];
    let packets = IntCounterVec::new(
        Opts::new(
            "eniflow_hook_packets_total",
            "Packets eniflow's ENI programs saw, by interface and direction",
        ),
        labels,
    )
    .expect("a valid metric name");
    let bytes = IntCounterVec::new(
        Opts::new(
            "eniflow_hook_bytes_total",
            "Bytes eniflow's ENI programs saw, by interface and direction",
        ),
        labels,
    )
    .expect("a valid metric name");
    for (key, stats) in datapath::read_stats(pins)? {
        let direction = if key.direction == DIRECTION_INGRESS {
            "ingress"
        } else {
            "egress"
        };
        let ifindex = key.ifindex.to_string();
        packets
            .with_label_values(&[ifindex.as_str(), direction])
            .inc_by(stats.packets);
        bytes
            .with_label_values(&[ifindex.as_str(), direction])
            .inc_by(stats.bytes);
    }
    Ok([drops.collect(), packets.collect(), bytes.collect()]
        .into_iter()
        .flatten()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_without_series_does_not_hide_the_ones_after_it() {
        let family = |name: &str, observed: bool| {
            let c = IntCounterVec::new(Opts::new(name, "help"), &["l"]).unwrap();
            if observed {
                c.with_label_values(&["x"]).inc();
            }
            c.collect()
        };
        let families = [
            family("before_total", true),
            family("empty_total", false),
            family("after_total", true),
        ]
        .into_iter()
        .flatten()
        .collect();
        let text = encode(families);
        assert!(text.contains("before_total{l=\"x\"} 1"), "{text}");
        assert!(text.contains("after_total{l=\"x\"} 1"), "{text}");
        assert!(!text.contains("empty_total"), "{text}");
    }
}
