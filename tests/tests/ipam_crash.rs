//! The pool killed (SIGKILL) at random moments during a stream of assigns and releases while its
//! refill loop talks to EC2, and restarted from its checkpoint, again and again: every
//! acknowledged assign survives, no address is handed out twice, and once the pool has
//! reconciled and the leak sweep has run, EC2 and the pool agree and no ENI is left behind.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use eniflow_agent::{
    ec2::Ec2,
    instance::{self, Instance},
    ipam::{leaks, Config, Ipam, Knobs},
};
use eniflow_tests::{agent, lab::api_vpc::ApiVpc};

/// Runs the churn process for `millis`, kills it, and returns the lines it acknowledged.
fn churn_until_killed(endpoint: &str, checkpoint: &str, round: u64, millis: u64) -> Vec<String> {
    let mut child = Command::new(agent::binary("eniflow-ipam-churn"))
        .args([
            endpoint,
            checkpoint,
            &(round * 7919 + 1).to_string(),
            &format!("r{round}"),
        ])
        .env("AWS_ACCESS_KEY_ID", "lab")
        .env("AWS_SECRET_ACCESS_KEY", "lab")
        .env("RUST_LOG", "warn")
        .env("IP_COOLDOWN_PERIOD", "0")
        // Odd rounds keep whole warm ENIs (ENIs attach and detach), even ones a few addresses.
        .env(
            "WARM_IP_TARGET",
            if round.is_multiple_of(2) { "3" } else { "0" },
        )
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start eniflow-ipam-churn");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(millis));
    // SAFETY: the pid of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    reader.join().unwrap();
    rx.try_iter().collect()
}

/// The checkpoint's allocations, owner → address.
fn saved_allocations(path: &std::path::Path) -> BTreeMap<String, Ipv4Addr> {
    let Ok(text) = std::fs::read(path) else {
        return BTreeMap::new();
    };
    let saved: serde_json::Value = serde_json::from_slice(&text).expect("a JSON checkpoint");
    saved["allocations"]
        .as_array()
        .expect("allocations")
        .iter()
        .map(|a| {
            (
                a["owner"]["container_id"].as_str().unwrap().to_owned(),
                a["ipv4"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_nothing_is_lost_duplicated_or_leaked() {
    let vpc = ApiVpc::new().await;
    let subnet = vpc.subnet("10.0.0.0/22", "us-west-2a").await;
    let node = vpc.launch("t3.medium", &subnet).await; // 3 ENIs × 6: ENIs come and go
    vpc.emulator.select_imds(&node.id);
    let files = agent::PoolFiles::new("ipam-crash");
    let checkpoint = std::path::PathBuf::from(files.checkpoint());
    let endpoint = vpc.emulator.endpoint();

    // Who holds what: the checkpoint after each kill, moved on by the acknowledged lines.
    let mut held: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    let mut acknowledged = 0;
    for round in 0..8 {
        let millis = 300 + (round * 211) % 900;
        // The operation announced and not acknowledged when the kill came, if any.
        let mut in_flight: Option<String> = None;
        for line in churn_until_killed(&endpoint, checkpoint.to_str().unwrap(), round, millis) {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["begin", _, owner] => {
                    in_flight = Some(owner.to_owned());
                    continue;
                }
                _ => acknowledged += 1,
            }
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["assign", owner, ip] => {
                    assert_eq!(in_flight.as_deref(), Some(owner), "unannounced {line:?}");
                    in_flight = None;
                    let ip: Ipv4Addr = ip.parse().unwrap();
                    assert!(
                        !held.values().any(|h| *h == ip),
                        "{ip} handed to {owner} while held: {held:?}"
                    );
                    held.insert(owner.to_owned(), ip);
                }
                ["release", owner] => {
                    assert_eq!(in_flight.as_deref(), Some(owner), "unannounced {line:?}");
                    in_flight = None;
                    assert!(held.remove(owner).is_some(), "released {owner}, never held");
                }
                _ => panic!("unexpected line {line:?}"),
            }
        }
        // Only the owner of the operation in flight at the kill may differ (persisted, its line
        // not printed yet); every other owner's entry is exactly what was acknowledged.
        let saved = saved_allocations(&checkpoint);
        let differ: Vec<&String> = held
            .keys()
            .chain(saved.keys())
            .filter(|o| held.get(*o) != saved.get(*o))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let allowed: Vec<&String> = in_flight.iter().collect();
        assert!(
            differ.iter().all(|o| allowed.contains(o)),
            "round {round}: the checkpoint differs from what was acknowledged for {differ:?} (in flight: {in_flight:?}); acknowledged {held:?}, saved {saved:?}"
        );
        held = saved;
    }
    assert!(
        acknowledged > 50,
        "too few operations to mean much: {acknowledged}"
    );

    let ec2 = Ec2::from_client(vpc.ec2.clone());
    let imds = instance::client(Some(&endpoint)).unwrap();
    let knobs =
        Knobs::from_vars(|name| (name == "IP_COOLDOWN_PERIOD").then(|| "0".into())).unwrap();
    let ipam = Ipam::start(
        ec2,
        Instance::read(&imds).await.unwrap(),
        Config::new(knobs, checkpoint),
    )
    .await
    .expect("the pool restarts");
    let restored: BTreeMap<String, Ipv4Addr> = ipam
        .allocations()
        .into_iter()
        .map(|a| (a.owner.container_id, a.ipv4))
        .collect();
    assert_eq!(
        restored, held,
        "the restarted pool differs from its checkpoint"
    );
    let unique: BTreeSet<&Ipv4Addr> = restored.values().collect();
    assert_eq!(
        unique.len(),
        restored.len(),
        "an address held twice: {restored:?}"
    );

    // Kills between CreateNetworkInterface and attach, or detach and delete, leave ENIs behind
    // for the sweep (which waits 5 minutes on a node; here it need not).
    let swept = leaks::sweep(
        ipam.ec2(),
        None,
        Duration::ZERO,
        std::time::SystemTime::now(),
    )
    .await
    .expect("the leak sweep");
    // Any detached ENI in the VPC, tagged or not (the sweep's own filter would hide an
    // untagged leak).
    let available = vpc
        .ec2
        .describe_network_interfaces()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("status")
                .values("available")
                .build(),
        )
        .send()
        .await
        .expect("DescribeNetworkInterfaces");
    let leaks_left: Vec<&str> = available
        .network_interfaces()
        .iter()
        .filter_map(|n| n.network_interface_id())
        .collect();
    assert!(
        leaks_left.is_empty(),
        "left after the sweep ({swept:?}): {leaks_left:?}"
    );
    assert!(
        ipam.reconcile().await.unwrap().is_empty(),
        "an allocation lost its address"
    );
    let on_enis: BTreeSet<Ipv4Addr> = ipam
        .ec2()
        .attached_enis(&node.id)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|e| {
            let prefixes: Vec<Ipv4Addr> = e
                .prefixes
                .iter()
                .flat_map(|p| (0..16).map(move |i| Ipv4Addr::from(u32::from(*p) + i)))
                .collect();
            e.addresses.into_iter().skip(1).chain(prefixes)
        })
        .collect();
    let pool: BTreeSet<Ipv4Addr> = ipam.addresses().into_iter().collect();
    assert_eq!(pool, on_enis, "the pool and EC2 disagree");
    for ip in restored.values() {
        assert!(on_enis.contains(ip), "{ip} is held but not on the node");
    }
    let calls = vpc.emulator.calls();
    eprintln!("{acknowledged} operations acknowledged; EC2 calls: {calls:?}; swept {swept:?}");
    for action in ["CreateNetworkInterface", "UnassignPrivateIpAddresses"] {
        assert!(
            calls.get(action).is_some_and(|&n| n > 0),
            "the churn never called {action}"
        );
    }
}
