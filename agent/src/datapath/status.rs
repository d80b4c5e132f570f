//! `eniflow-agent status`: what eniflow attached and its counters, read from the pinned maps
//! (what an on-call engineer reads without bpftool).

use eniflow_common::{
    DropReason, Drops, ATTACH_FLAG_CREATED_CLSACT, ATTACH_MODE_CLSACT, ATTACH_MODE_TCX,
    DIRECTION_INGRESS, HOOK_NAMES,
};

use super::{read_attachments, read_hook_drops, read_pod_stats, read_stats, DatapathError, Pins};

/// Prints the attachments, the per-hook counters and the per-pod counters.
pub fn print(pins: &Pins) -> Result<(), DatapathError> {
    println!("pinned under {}", pins.versioned().display());
    println!("attachments:");
    for (key, a) in read_attachments(pins)? {
        let how = match a.mode {
            ATTACH_MODE_TCX => "tcx link".to_owned(),
            ATTACH_MODE_CLSACT => format!(
                "clsact cls_bpf pref {:#x} handle {}{}",
                a.priority,
                a.handle,
                if a.flags & ATTACH_FLAG_CREATED_CLSACT != 0 {
                    " (eniflow added the qdisc)"
                } else {
                    ""
                }
            ),
            other => format!("unknown mode {other}"),
        };
        println!(
            "  ifindex {:>4} {:<7} {how}",
            key.ifindex,
            direction(key.direction)
        );
    }
    println!("counters:");
    for (key, stats) in read_stats(pins)? {
        println!(
            "  ifindex {:>4} {:<7} packets {:>10} bytes {:>12}",
            key.ifindex,
            direction(key.direction),
            stats.packets,
            stats.bytes
        );
    }
    println!("drops by hook:");
    for (hook, drops) in read_hook_drops(pins)? {
        println!("  {:<12} {}", HOOK_NAMES[hook as usize], by_reason(&drops));
    }
    println!("pods:");
    for (addr, s) in read_pod_stats(pins)? {
        println!(
            "  {addr:<15} sent {:>8} ({} to the stack) received {:>8} dropped: {}",
            s.sent_packets,
            s.sent_to_stack,
            s.received_packets,
            by_reason(&s.drops)
        );
    }
    Ok(())
}

/// "none", or each reason that counted, with its count.
fn by_reason(drops: &Drops) -> String {
    let counted: Vec<_> = DropReason::ALL
        .iter()
        .filter(|r| drops.get(**r) != 0)
        .map(|r| format!("{} {}", r.name(), drops.get(*r)))
        .collect();
    if counted.is_empty() {
        "none".to_owned()
    } else {
        counted.join(", ")
    }
}

fn direction(code: u32) -> &'static str {
    if code == DIRECTION_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}
