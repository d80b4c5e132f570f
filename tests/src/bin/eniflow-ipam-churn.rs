//! A stream of pod address assigns and releases against the agent's pool, for the crash test
//! (tests/tests/ipam_crash.rs): it restores the pool from its checkpoint, runs the refill loop,
//! and prints one line per acknowledged operation (`assign <owner> <ip>`, `release <owner>`)
//! until it is killed. The pool's knobs come from the environment, as the agent's do.
//!
//!     eniflow-ipam-churn <emulator endpoint> <checkpoint> <seed> <owner prefix>

use std::{io::Write, sync::Arc, time::Duration};

use eniflow_agent::{
    ec2::{self, Ec2},
    instance::{self, Instance},
    ipam::{Config, Ipam, Knobs, Owner},
};

fn owner(id: &str) -> Owner {
    Owner {
        network: "eniflow".into(),
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, checkpoint, seed, prefix] = &args[..] else {
        panic!("usage: eniflow-ipam-churn <endpoint> <checkpoint> <seed> <owner prefix>");
    };
    let mut state: u64 = seed.parse::<u64>().expect("a numeric seed") | 1;
    let mut random = move |n: u64| {
        // xorshift64: reproducible per seed, good enough to pick operations.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let imds = instance::client(Some(endpoint)).expect("IMDS client");
    let node = Instance::read(&imds).await.expect("instance metadata");
    let settings = ec2::Settings {
        endpoint: Some(endpoint.clone()),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        ..Default::default()
    };
    let ec2 = Ec2::connect(&settings, &node.region).await;
    let knobs = Knobs::from_vars(|name| std::env::var(name).ok()).expect("valid knobs");
    let mut config = Config::new(knobs, checkpoint.into());
    config.eni_min_age = Duration::ZERO;
    config.release_interval = Duration::ZERO;
    config.refill_period = Duration::from_millis(20);
    config.leak_sweep = None;
    let ipam = Arc::new(
        Ipam::start(ec2, node, config)
            .await
            .expect("the pool starts"),
    );
    tokio::spawn(ipam.clone().run_refill());

    let mut held: Vec<Owner> = ipam.allocations().into_iter().map(|a| a.owner).collect();
    let mut out = std::io::stdout().lock();
    for n in 0.. {
        // Up to ~20 pods; more assigns while few are held, more releases near the top.
        // Each operation is announced before it starts: at a kill, only the announced owner
        // may differ between what was acknowledged and what the checkpoint holds.
        if random(20) >= held.len() as u64 {
            let id = owner(&format!("{prefix}-{n}"));
            writeln!(out, "begin assign {}", id.container_id).unwrap();
            out.flush().unwrap();
            if let Ok(a) = ipam.assign(&id, ("churn", "pod")) {
                writeln!(out, "assign {} {}", id.container_id, a.ipv4).unwrap();
                held.push(id);
            }
        } else {
            // Half the time the newest pod goes, so whole ENIs empty out and can go back.
            let id = if random(2) == 0 {
                held.pop().expect("one is held")
            } else {
                held.swap_remove(random(held.len() as u64) as usize)
            };
            writeln!(out, "begin release {}", id.container_id).unwrap();
            out.flush().unwrap();
            ipam.release(&id).expect("release");
            writeln!(out, "release {}", id.container_id).unwrap();
        }
        out.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(random(15))).await;
    }
}
