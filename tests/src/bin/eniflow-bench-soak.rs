//! `cargo xtask bench soak` (not part of the default bench, nor of CI): ADD/DEL cycles through
//! the real shim against one agent (`ENIFLOW_SOAK_CYCLES`, 20,000 by default), sampling the
//! agent's RSS, open fds and threads and what the data plane holds (pods map entries,
//! attachment records, link pins) every 1,000 cycles. Reports each one's slope per 1,000 cycles
//! (least squares, from cycle 1,000 on: the first 1,000 are the agent's warm-up) and ADD p99
//! of the first and the last 1,000 cycles.

use std::time::Instant;

use eniflow_common::maps;
use eniflow_tests::{
    bpftool,
    cni::{pod_args, PodNode},
    env_number,
    lab::LabSpec,
    netns::Netns,
    procfs::status_field,
    report::{self, percentile, Part, Series, Table},
    require_root,
};
use serde_json::json;

const EVERY: usize = 1000;

/// What is sampled, as (name, unit).
const GAUGES: [(&str, &str); 6] = [
    ("agent RSS", "KiB"),
    ("agent open fds", ""),
    ("agent threads", ""),
    ("pods map entries", ""),
    ("attachment records", ""),
    ("link pins", ""),
];

fn sample(node: &PodNode, pid: u32) -> [f64; 6] {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let pins = node.map("").parent().unwrap().join("links");
    let links = std::fs::read_dir(pins).map_or(0, |d| d.count());
    [
        status_field(pid, "VmRSS"),
        fds as f64,
        status_field(pid, "Threads"),
        bpftool::dump(&node.map(maps::PODS)).len() as f64,
        bpftool::dump(&node.map(maps::ATTACHMENTS)).len() as f64,
        links as f64,
    ]
}

/// Least-squares slope of `points`, per 1,000 cycles.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den * EVERY as f64
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    require_root();
    let cycles: usize = env_number("ENIFLOW_SOAK_CYCLES").unwrap_or(20_000);
    assert!(
        cycles >= 2 * EVERY,
        "ENIFLOW_SOAK_CYCLES: at least {}",
        2 * EVERY
    );
    let spec = LabSpec {
        hosts: false,
        ..Default::default()
    };
    let node = PodNode::start_custom(spec, &[], &[("IP_COOLDOWN_PERIOD", "0")]).await;
    let pid = node
        .agent
        .as_ref()
        .and_then(|a| a.pid())
        .expect("the agent's pid");

    let mut series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); GAUGES.len()];
    let mut record = |at: usize, values: [f64; 6]| {
        for (s, v) in series.iter_mut().zip(values) {
            s.push((at as f64, v));
        }
    };
    record(0, sample(&node, pid));
    let mut adds = Vec::with_capacity(cycles);
    let started = Instant::now();
    for n in 0..cycles {
        let pod = Netns::new("soak");
        let (container, args) = (format!("soak-{n}"), pod_args(&format!("soak-{n}")));
        let at = Instant::now();
        let add = node.cni("ADD", &container, Some(&pod), "eth0", &args);
        adds.push(at.elapsed().as_secs_f64() * 1000.0);
        assert!(add.ok, "ADD {n}: {}", add.json);
        let del = node.cni("DEL", &container, Some(&pod), "eth0", &args);
        assert!(del.ok, "DEL {n}: {}", del.json);
        if (n + 1) % EVERY == 0 {
            record(n + 1, sample(&node, pid));
            eprintln!("soak: {} cycles, {:.0?}", n + 1, started.elapsed());
        }
    }

    let first = percentile(&adds[..EVERY], 99.0);
    let last = percentile(&adds[cycles - EVERY..], 99.0);
    let rows: Vec<Vec<String>> = GAUGES
        .iter()
        .zip(&series)
        .map(|((name, unit), points)| {
            let unit = if unit.is_empty() {
                String::new()
            } else {
                format!(" {unit}")
            };
            vec![
                name.to_string(),
                format!("{}{unit}", points[0].1),
                format!("{}{unit}", points[points.len() - 1].1),
                // From the first sample on: the agent's warm-up (its second ENI attaching,
                // the runtime's blocking thread starting) is not a trend.
                format!("{:+.2}{unit}", slope(&points[1..])),
            ]
        })
        .collect();
    for row in &rows {
        println!("| {} |", row.join(" | "));
    }
    println!("ADD p99: first {EVERY} cycles {first:.1} ms, last {EVERY} {last:.1} ms");
    let rss: Vec<(f64, f64)> = series[0].iter().map(|(x, y)| (*x, y / 1024.0)).collect();
    let figure = report::line_chart(
        "soak-rss.svg",
        &format!("Agent RSS over {cycles} ADD/DEL cycles"),
        ("cycles", "RSS, MiB"),
        &[Series {
            name: "agent RSS".into(),
            points: rss,
        }],
        &[],
    );
    Part {
        name: "soak".into(),
        title: "Soak: ADD/DEL cycles on one agent".into(),
        method: format!(
            "{cycles} ADD/DEL cycles through the shim, one after another, on one agent (lab m5.large, IP_COOLDOWN_PERIOD=0); the agent's RSS, fds and threads (/proc) and the data plane's entries and pins (bpftool, bpffs) sampled every {EVERY} cycles; slopes by least squares from cycle {EVERY} on (the first {EVERY} are the agent's warm-up); took {:.0?}.",
            started.elapsed()
        ),
        tables: vec![
            Table {
                caption: "Resources, at the start, at the end, and slope per 1,000 cycles".into(),
                header: ["what", "start", "end", "slope / 1,000 cycles"]
                    .map(String::from)
                    .to_vec(),
                rows,
            },
            Table {
                caption: "ADD latency p99, ms".into(),
                header: [format!("first {EVERY} cycles"), format!("last {EVERY} cycles")].to_vec(),
                rows: vec![vec![format!("{first:.1}"), format!("{last:.1}")]],
            },
        ],
        figures: vec![(figure, "Agent RSS over the soak".into())],
        data: json!({
            "cycles": cycles,
            "every": EVERY,
            "series": GAUGES.iter().zip(&series).map(|((name, _), points)| json!({ "name": name, "points": points })).collect::<Vec<_>>(),
            "add_ms_first": &adds[..EVERY],
            "add_ms_last": &adds[cycles - EVERY..],
        }),
    }
    .write();
}
