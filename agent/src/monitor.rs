//! `eniflow-agent monitor`: drops as they happen (reason, hook, pod, addresses, protocol and
//! ports), read from the pinned `drop_events` ring buffer the programs write only when they drop
//! (at most one event per CPU per `DROP_EVENT_INTERVAL_NS`; every drop is still counted).
//! Needs only the pins: it works whether the agent runs or not. Events from before it started
//! (left in the ring since the last reader) are skipped. One reader at a time: two monitors
//! share the ring's events between them.

use std::{net::Ipv4Addr, time::SystemTime};

use aya::maps::{Map, MapData, RingBuf};
use eniflow_common::{maps, DropEvent, DropReason, HOOK_NAMES};
use serde_json::json;
use tokio::io::unix::AsyncFd;

use crate::datapath::{DatapathError, Pins};

/// How each event is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Prints every drop event until interrupted (or until `count` were printed).
pub async fn run(pins: &Pins, format: Format, count: Option<u64>) -> Result<(), DatapathError> {
    let path = pins.map(maps::DROP_EVENTS);
    let data = MapData::from_pin(&path).map_err(|e| DatapathError::Map(maps::DROP_EVENTS, e))?;
    let ring = RingBuf::try_from(Map::RingBuf(data))
        .map_err(|e| DatapathError::Map(maps::DROP_EVENTS, e))?;
    // SAFETY: the ring buffer owns its map fd, open and unchanged for as long as the AsyncFd
    // holds it.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| DatapathError::Interface(maps::DROP_EVENTS.to_owned(), e.into()))?;
    let started = monotonic_ns();
    let mut printed = 0;
    loop {
        let mut ready = ring
            .readable_mut()
            .await
            .map_err(|e| DatapathError::Interface(maps::DROP_EVENTS.to_owned(), e))?;
        let events = ready.get_inner_mut();
        while let Some(item) = events.next() {
            if item.len() < std::mem::size_of::<DropEvent>() {
                continue;
            }
            // SAFETY: the programs write whole DropEvents; read_unaligned copes with the ring's
            // 8-byte alignment either way.
            let event: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if event.ktime_ns < started {
                continue;
            }
            println!("{}", describe(&event, format));
            printed += 1;
            if count.is_some_and(|n| printed >= n) {
                return Ok(());
            }
        }
        ready.clear_ready();
    }
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The wall-clock time of a `bpf_ktime_get_ns` reading, in unix ms.
fn wall_ms(ktime_ns: u64) -> u64 {
    let mono_now = monotonic_ns();
    let wall_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    wall_now.saturating_sub(mono_now.saturating_sub(ktime_ns)) / 1_000_000
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        other => format!("proto-{other}"),
    }
}

/// One event as a line of text or one JSON object.
pub fn describe(event: &DropEvent, format: Format) -> String {
    let reason = DropReason::from_code(event.reason).map_or("unknown", DropReason::name);
    let hook = HOOK_NAMES
        .get(event.hook as usize)
        .copied()
        .unwrap_or("unknown");
    let (pod, saddr, daddr) = (
        Ipv4Addr::from(event.pod_addr),
        Ipv4Addr::from(event.saddr),
        Ipv4Addr::from(event.daddr),
    );
    let protocol = protocol_name(event.protocol);
    let at_ms = wall_ms(event.ktime_ns);
    match format {
        Format::Json => json!({
            "at_ms": at_ms,
            "reason": reason,
            "hook": hook,
            "ifindex": event.ifindex,
            "pod": pod,
            "source": saddr,
            "destination": daddr,
            "protocol": protocol,
            "source_port": event.sport,
            "destination_port": event.dport,
        })
        .to_string(),
        Format::Text => format!(
            "{at_ms} drop {reason} at {hook} (ifindex {}) pod {pod}: {protocol} {saddr}:{} -> {daddr}:{}",
            event.ifindex, event.sport, event.dport
        ),
    }
}
