//! The agent SIGKILLed at random moments while pods come and go through the real shim, eight at
//! a time as a runtime would: after every restart, no address is held by two live pods and every
//! live pod is in the checkpoint, the pods map and EC2; pods that were up before the storm never
//! lose a ping; at the end, nothing is left. `ENIFLOW_STORM_KILLS` sets the number of kills (200
//! by default, about three minutes), `ENIFLOW_STORM_SEED` replays a run.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use eniflow_common::maps;
use eniflow_tests::{
    bpftool,
    cni::{address, pod_args, PodNode as Node},
    dataplane::wire,
    env_number,
    netns::Netns,
    require_root,
};
use serde_json::Value;

/// Concurrent runtimes' worth of ADD/DEL (containerd's default is unbounded; kubelet's is 8
/// pods in flight per node in practice).
const WORKERS: usize = 8;
const DEFAULT_KILLS: u64 = 200;
/// Pods a worker keeps at most: 8 x 2 and the steady pods stay within the m5.large's 27 pod addresses.
const LIVE_PER_WORKER: usize = 2;

/// A small PRNG (xorshift64*): the run's seed is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Pods whose ADD succeeded and whose DEL has not started: container id → address.
type Live = Mutex<BTreeMap<String, String>>;

#[derive(Default)]
struct Counts {
    adds: AtomicU64,
    adds_failed: AtomicU64,
    dels: AtomicU64,
}

/// A runtime's pods: ADD into a fresh namespace (on failure DEL and drop the sandbox, as kubelet
/// does, then try again with a new one), keep up to two, DEL the oldest.
fn runtime(node: &Node, worker: usize, seed: u64, live: &Live, counts: &Counts, stop: &AtomicBool) {
    let mut rng = Rng(seed);
    let mut mine: Vec<(String, String, Netns)> = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        if mine.len() == LIVE_PER_WORKER || (!mine.is_empty() && rng.below(3) == 0) {
            let (container, name, netns) = mine.remove(0);
            live.lock().unwrap().remove(&container);
            let del = node.cni("DEL", &container, Some(&netns), "eth0", &pod_args(&name));
            assert!(del.ok, "DEL {container}: {}", del.json);
            counts.dels.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        n += 1;
        let name = format!("storm-{worker}-{n}");
        let container = format!("c-{name}");
        let netns = Netns::new("pod");
        let add = node.cni("ADD", &container, Some(&netns), "eth0", &pod_args(&name));
        counts.adds.fetch_add(1, Ordering::Relaxed);
        if add.ok {
            let ip = address(&add);
            let mut live = live.lock().unwrap();
            if let Some((other, _)) = live.iter().find(|(_, a)| **a == ip) {
                panic!("{ip} given to {container} while {other} holds it");
            }
            live.insert(container.clone(), ip);
            mine.push((container, name, netns));
        } else {
            counts.adds_failed.fetch_add(1, Ordering::Relaxed);
            let del = node.cni("DEL", &container, Some(&netns), "eth0", &pod_args(&name));
            assert!(del.ok, "DEL after a failed ADD {container}: {}", del.json);
            // A runtime backs off before it tries again.
            std::thread::sleep(Duration::from_millis(100 + rng.below(200)));
        }
    }
    for (container, name, netns) in mine {
        live.lock().unwrap().remove(&container);
        let del = node.cni("DEL", &container, Some(&netns), "eth0", &pod_args(&name));
        assert!(del.ok, "DEL {container}: {}", del.json);
    }
}

/// Pod addresses on the node's ENIs as EC2 has them (secondaries; no prefixes in this test).
fn addresses_in_ec2(node: &Node) -> BTreeSet<String> {
    node.lab.emulator.view()["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["instance_id"] == node.lab.node.id.as_str())
        .flat_map(|e| e["private_ips"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// The checkpoint's allocations: address → container id.
fn checkpoint(node: &Node) -> BTreeMap<String, String> {
    let saved: Value =
        serde_json::from_slice(&std::fs::read(node.files.checkpoint()).unwrap()).unwrap();
    saved["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["ipv4"].as_str().unwrap().to_owned(),
                a["owner"]["container_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pods_map_keys(node: &Node) -> BTreeSet<String> {
    bpftool::dump(&node.map(maps::PODS))
        .iter()
        .map(|e| bpftool::formatted(e, maps::PODS)["key"].to_string())
        .collect()
}

/// Every pod live from before these reads to after them is in the checkpoint (as its own), in
/// the pods map and on an ENI in EC2. Returns how many pods were checked.
fn check_live(node: &Node, live: &Live) -> usize {
    let before = live.lock().unwrap().clone();
    let saved = checkpoint(node);
    let wired = pods_map_keys(node);
    let in_ec2 = addresses_in_ec2(node);
    let after = live.lock().unwrap().clone();
    let mut checked = 0;
    for (container, ip) in before.iter().filter(|(c, _)| after.contains_key(*c)) {
        assert_eq!(
            saved.get(ip),
            Some(container),
            "{container}'s {ip} in the checkpoint"
        );
        assert!(
            wired.contains(&wire(ip).to_string()),
            "{container}'s {ip} in the pods map"
        );
        assert!(in_ec2.contains(ip), "{container}'s {ip} on an ENI in EC2");
        checked += 1;
    }
    checked
}

/// Attachment records and link pins of interfaces that no longer exist.
fn attachments_of_gone_interfaces(node: &Node) -> Vec<String> {
    let links: Value =
        serde_json::from_str(&node.lab.node.netns.ip(&["-j", "link", "show"])).unwrap();
    let present: BTreeSet<u64> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifindex"].as_u64())
        .collect();
    let mut left = Vec::new();
    for e in bpftool::dump(&node.map(maps::ATTACHMENTS)) {
        let key = &bpftool::formatted(&e, maps::ATTACHMENTS)["key"];
        if !key["ifindex"]
            .as_u64()
            .is_some_and(|i| present.contains(&i))
        {
            left.push(format!("attachment record {key}"));
        }
    }
    let pins = node.map("").parent().unwrap().join("links");
    for pin in std::fs::read_dir(&pins).into_iter().flatten().flatten() {
        let name = pin.file_name().to_string_lossy().into_owned();
        let ifindex = name
            .strip_prefix("if")
            .and_then(|rest| rest.split('_').next())
            .and_then(|i| i.parse().ok());
        if !ifindex.is_some_and(|i| present.contains(&i)) {
            left.push(format!("link pin {name}"));
        }
    }
    left
}

/// `ping -i 0.01` from `pod` to `to` until stopped.
struct Pinger(std::process::Child);

impl Pinger {
    fn start(pod: &Netns, to: &str) -> Pinger {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                pod.name(),
                "ping",
                "-i",
                "0.01",
                "-W",
                "1",
                to,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ping");
        Pinger(child)
    }

    /// Stops it; returns how many echoes it sent and the sequence numbers never answered, but
    /// for the last one (it may have been in flight when ping was stopped).
    fn finish(self) -> (u64, Vec<u64>) {
        // SAFETY: the pid of a child we started and have not reaped yet.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let out = self.0.wait_with_output().expect("wait for ping");
        let said = String::from_utf8_lossy(&out.stdout);
        let answered: BTreeSet<u64> = said
            .lines()
            .filter_map(|l| l.split("icmp_seq=").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect();
        let summary = said
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no summary from ping: {said}"));
        let sent: u64 = summary
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("ping's summary: {summary}"));
        let lost = (1..sent).filter(|seq| !answered.contains(seq)).collect();
        (sent, lost)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_through_a_pod_storm_the_agent_loses_leaks_and_doubles_nothing() {
    require_root();
    let kills: u64 = env_number("ENIFLOW_STORM_KILLS").unwrap_or(DEFAULT_KILLS);
    let seed = env_number("ENIFLOW_STORM_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    println!("crash storm: {kills} kills, ENIFLOW_STORM_SEED={seed}");
    let mut node = Node::start_custom(
        Default::default(),
        &[],
        &[("WARM_IP_TARGET", "4"), ("IP_COOLDOWN_PERIOD", "0")],
    )
    .await;
    // The agent's logs of a storm are long: a file, kept only when the test fails.
    let log_path = std::env::temp_dir().join(format!("eniflow-storm-{}.log", std::process::id()));
    println!("crash storm: the agent logs to {}", log_path.display());
    let logs = || {
        let file = File::options().create(true).append(true).open(&log_path);
        Stdio::from(file.expect("the storm's log file"))
    };
    node.agent.take().expect("the agent").stop();
    let mut agent = Some(node.new_agent(&[], logs()));

    // Pods up before the storm, pinging a VPC host every 10 ms throughout.
    let host = node.lab.hosts[0].primary_ip.clone();
    let steady: Vec<(String, Netns)> = (0..2)
        .map(|i| {
            let netns = Netns::new("pod");
            let add = node.cni(
                "ADD",
                &format!("c-steady-{i}"),
                Some(&netns),
                "eth0",
                &pod_args(&format!("steady-{i}")),
            );
            assert!(add.ok, "{}", add.json);
            (address(&add), netns)
        })
        .collect();
    let pingers: Vec<Pinger> = steady
        .iter()
        .map(|(_, ns)| Pinger::start(ns, &host))
        .collect();

    let live: Live = Mutex::new(
        steady
            .iter()
            .enumerate()
            .map(|(i, (ip, _))| (format!("c-steady-{i}"), ip.clone()))
            .collect(),
    );
    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let mut rng = Rng(seed);
    let mut checks = 0;
    let started = Instant::now();
    std::thread::scope(|s| {
        let runtimes: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (node, live, counts, stop) = (&node, &live, &counts, &stop);
                let seed = seed.wrapping_add(w as u64 + 1).wrapping_mul(0x9e37_79b9);
                s.spawn(move || runtime(node, w, seed, live, counts, stop))
            })
            .collect();
        for _ in 0..kills {
            std::thread::sleep(Duration::from_millis(50 + rng.below(350)));
            agent.take().expect("the agent").kill();
            // Sometimes down a while: DELs meanwhile succeed without the agent.
            std::thread::sleep(Duration::from_millis(rng.below(3) * 100));
            agent = Some(node.new_agent(&[], logs()));
            checks += check_live(&node, &live);
            if runtimes.iter().any(|r| r.is_finished()) {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in runtimes {
            if let Err(panic) = r.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    let storm = started.elapsed();
    checks += check_live(&node, &live);
    for (i, (sent, lost)) in pingers.into_iter().map(Pinger::finish).enumerate() {
        assert!(sent > 100, "steady-{i} sent only {sent} pings");
        assert!(lost.is_empty(), "steady-{i} lost pings {lost:?} of {sent}");
    }
    for (i, (_, netns)) in steady.iter().enumerate() {
        let name = format!("steady-{i}");
        let del = node.cni(
            "DEL",
            &format!("c-{name}"),
            Some(netns),
            "eth0",
            &pod_args(&name),
        );
        assert!(del.ok, "{}", del.json);
    }
    drop(steady);

    // Pods deleted while the agent was down are released when it starts: one last restart.
    agent.take().expect("the agent").kill();
    let _agent = node.new_agent(&[], logs());
    let held = checkpoint(&node);
    assert!(held.is_empty(), "allocations left: {held:?}");
    let veths = node.host_veths();
    assert!(veths.is_empty(), "veths left: {veths:?}");
    let wired = pods_map_keys(&node);
    assert!(wired.is_empty(), "pods map entries left: {wired:?}");
    for map in [maps::VETHS, maps::POD_STATS] {
        let left = bpftool::dump(&node.map(map));
        assert!(left.is_empty(), "{map} entries left: {left:?}");
    }
    let orphans = attachments_of_gone_interfaces(&node);
    assert!(orphans.is_empty(), "left of deleted veths: {orphans:?}");
    println!(
        "crash storm: {} kills in {:.0?}; {} ADDs ({} failed and retried), {} DELs; {checks} live-pod checks",
        kills,
        storm,
        counts.adds.load(Ordering::Relaxed),
        counts.adds_failed.load(Ordering::Relaxed),
        counts.dels.load(Ordering::Relaxed),
    );
    let _ = std::fs::remove_file(&log_path);
}
