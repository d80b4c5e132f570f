//! EC2's account-wide request budget, small enough for CI: ten nodes scaling at once against
//! the emulator's account buckets (`eniflow_tests::scale`: each node the agent's real pool in
//! process, with the agent's EC2 client), the node budget's shared backoff, and a subnet's
//! reserve. `cargo xtask bench scale` runs a hundred.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use eniflow_agent::{
    ec2::Ec2,
    ipam::{Config, Ipam, IpamError, Knobs, Owner, PoolError},
};
use eniflow_tests::{
    lab::api_vpc::ApiVpc,
    scale::{self, ec2_of, instance_of, Scenario},
};

/// The account's buckets a fifth of AWS's defaults (capacity, refill per second): ten nodes
/// starting and scaling at once overrun them, as fifty would EC2's.
const ACCOUNT: &[(&str, f64, f64)] = &[
    ("mutating", 10.0, 1.0),
    ("eni-and-ip", 20.0, 1.0),
    ("create-tags", 20.0, 2.0),
    ("describe", 20.0, 4.0),
    ("describe-unfiltered", 10.0, 2.0),
];

/// Each node's share of `ACCOUNT`: a tenth of each refill rate, and bursts that add up to no
/// more than the buckets (but at least one call).
const SHARE: &str = "mutating=0.1/1,eni-and-ip=0.1/2,create-tags=0.2/2,describe=0.4/2";

fn ten_nodes(budget: &str) -> Scenario {
    Scenario {
        nodes: 10,
        pods_per_node: 10,
        ramp: Duration::from_secs(10),
        instance_type: "m5.large".into(),
        knobs: Vec::new(),
        budget: budget.parse().unwrap(),
        account: ACCOUNT
            .iter()
            .map(|(c, capacity, rate)| (c.to_string(), *capacity, *rate))
            .collect(),
        seed: 15,
        scale_down: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_scaling_at_once_get_every_pod_an_address_and_the_budget_spares_the_account() {
    let give_up = Duration::from_secs(240);
    let without = scale::run(&ten_nodes("unlimited"), give_up).await;
    let with = scale::run(&ten_nodes(SHARE), give_up).await;
    for (what, o) in [("without a node budget", &without), ("with", &with)] {
        println!(
            "{what}: {} calls, {} throttled, pod waits p50 {:?} max {:?}",
            o.calls.len(),
            o.throttled(),
            o.wait(0.5),
            o.wait(1.0)
        );
    }
    // Every pod got its address (run() fails a pod that waits past give_up).
    assert_eq!(with.waits.len(), with.pods);
    assert!(
        without.throttled() > 0,
        "the scenario never loads the account's buckets: {:?}",
        without.by_action()
    );
    assert!(
        with.throttled() < without.throttled(),
        "the node budget did not spare the account: {} throttled with it, {} without",
        with.throttled(),
        without.throttled()
    );
}

/// A pool in a small subnet that keeps `reserve` free addresses.
async fn reserve_node(reserve: u32) -> (ApiVpc, String, Arc<Ipam>, PathBuf) {
    let vpc = ApiVpc::new().await;
    // 64 addresses, 5 reserved by EC2, one the primary ENI's: 58 free.
    let subnet = vpc.subnet("10.0.8.0/26", "us-west-2a").await;
    let launched = vpc.launch("m5.xlarge", &subnet).await;
    let instance = instance_of(&vpc, &launched, "m5.xlarge", &subnet);
    let dir = std::env::temp_dir().join(eniflow_tests::unique_name("reserve"));
    let knobs = Knobs::from_vars(|name| (name == "WARM_IP_TARGET").then(|| "50".into())).unwrap();
    let mut config = Config::new(knobs, dir.join("ipam.json"));
    config.refill_period = Duration::from_millis(100);
    config.leak_sweep = None;
    config.subnet_reserve = reserve;
    let ec2 = Ec2::from_client(vpc.ec2.clone());
    let pool = Arc::new(Ipam::start(ec2, instance, config).await.unwrap());
    (vpc, subnet, pool, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_reserve_stops_warm_refills_and_pods_still_get_every_address() {
    let reserve = 20;
    let (vpc, subnet, pool, dir) = reserve_node(reserve).await;
    pool.refill().await.unwrap();
    let free = vpc.available(&subnet).await as u32;
    let warm = pool.counts().total;
    // Warm refills stopped at the reserve (give or take the ENIs' own primary addresses), far
    // short of WARM_IP_TARGET=50.
    assert!(warm < 50, "the reserve held nothing back: {warm} warm");
    assert!(
        free + 3 >= reserve && free <= reserve + 14,
        "{free} free in the subnet after warming {warm}"
    );
    // Pods keep coming: each one the pool has no address for gets one, until the subnet is
    // truly full; beyond the reserve the pool never holds a warm address it does not need.
    tokio::spawn(pool.clone().run_refill());
    let mut pods = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let owner = Owner {
            network: "eniflow".into(),
            container_id: format!("pod-{pods}"),
            ifname: "eth0".into(),
        };
        match pool.assign(&owner, ("default", "p")) {
            Ok(_) => pods += 1,
            Err(IpamError::Pool(PoolError::Empty { .. })) => {
                if vpc.available(&subnet).await == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "{pods} pods, then none");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
        let c = pool.counts();
        if pods as u32 > warm {
            assert!(
                c.available() <= 1,
                "past the reserve the pool warmed {} addresses",
                c.available()
            );
        }
    }
    assert_eq!(vpc.available(&subnet).await, 0);
    assert_eq!(
        pool.counts().available(),
        0,
        "the subnet is full and the pool still holds a free address"
    );
    assert!(pods as u32 > warm + 10, "pods stopped at {pods}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_call_holds_back_the_nodes_next_call_of_its_class() {
    let vpc = ApiVpc::new().await;
    let subnet = vpc.subnet("10.0.0.0/20", "us-west-2a").await;
    let launched = vpc.launch("m5.large", &subnet).await;
    // No budget of the node's own: only the shared backoff is at work.
    let ec2 = Arc::new(ec2_of(&vpc, "node-a", "unlimited".parse().unwrap())());
    let eni = launched.primary_eni.clone();
    let first = ec2.assign(&eni, 1, false).await.expect("an address");
    // One token, the next in ten seconds: the second assign is throttled (and retried by the
    // SDK meanwhile).
    vpc.emulator.throttle(true, &[("eni-and-ip", 1.0, 0.1)]);
    ec2.assign(&eni, 1, false).await.expect("the token");
    let retried = tokio::spawn({
        let (ec2, eni) = (ec2.clone(), eni.clone());
        async move { ec2.assign(&eni, 1, false).await }
    });
    let throttled_at = loop {
        let log = vpc.emulator.call_log();
        if let Some(call) = log.iter().find(|c| c.outcome == "RequestLimitExceeded") {
            assert_eq!(call.caller.as_deref(), Some("node-a"), "the log's caller");
            break call.t;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // EC2 logs the throttle before the node reads the answer: wait until the node has.
    let read_by = std::time::Instant::now() + Duration::from_secs(30);
    while !ec2.backing_off("UnassignPrivateIpAddresses") {
        assert!(
            std::time::Instant::now() < read_by,
            "the node never backed off the throttled class"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Another call of the class, sent at once, reaches EC2 only after the class's backoff.
    let _ = ec2.unassign(&eni, &first, false).await;
    let log = vpc.emulator.call_log();
    let unassigned_at = log
        .iter()
        .find(|c| c.action == "UnassignPrivateIpAddresses")
        .map(|c| c.t)
        .expect("the unassign reached EC2");
    assert!(
        unassigned_at - throttled_at >= 0.25,
        "the unassign went {:.3} s after the throttle, inside the class's backoff",
        unassigned_at - throttled_at
    );
    retried.abort();
}
