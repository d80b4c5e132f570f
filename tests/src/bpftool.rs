//! Reading eniflow's pinned maps the way an on-call engineer would: Debian's bpftool.

use std::path::Path;

use serde_json::Value;

/// `bpftool -j map dump pinned <path>`: one JSON object per entry.
pub fn dump(path: &Path) -> Vec<Value> {
    let out = crate::sh::run(
        "bpftool",
        &["-j", "map", "dump", "pinned", &path.to_string_lossy()],
    );
    match serde_json::from_str(&out).expect("bpftool -j prints JSON") {
        Value::Array(entries) => entries,
        other => panic!("bpftool map dump: expected a list, got {other}"),
    }
}

/// `bpftool -j map show pinned <path>`: the map's type, sizes and BTF id.
pub fn show(path: &Path) -> Value {
    let out = crate::sh::run(
        "bpftool",
        &["-j", "map", "show", "pinned", &path.to_string_lossy()],
    );
    serde_json::from_str(&out).expect("bpftool -j prints JSON")
}

/// `bpftool map delete pinned <path> key hex …`: removes one entry, as an operator would.
pub fn delete(path: &Path, key: &[u8]) {
    change(path, "delete", &[("key", key)]);
}

/// `bpftool map update pinned <path> key hex … value hex …`.
pub fn update(path: &Path, key: &[u8], value: &[u8]) {
    change(path, "update", &[("key", key), ("value", value)]);
}

fn change(path: &Path, verb: &str, parts: &[(&str, &[u8])]) {
    let mut args = vec![
        "map".to_owned(),
        verb.into(),
        "pinned".into(),
        path.to_string_lossy().into_owned(),
    ];
    for (what, bytes) in parts {
        args.extend([what.to_string(), "hex".into()]);
        args.extend(bytes.iter().map(|b| format!("{b:02x}")));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::sh::run("bpftool", &args);
}

/// The BTF-formatted form of an entry (`formatted` in bpftool's JSON), which exists only when
/// the map carries BTF. Panics naming the map otherwise.
pub fn formatted<'a>(entry: &'a Value, map: &str) -> &'a Value {
    entry
        .get("formatted")
        .unwrap_or_else(|| panic!("{map}: bpftool printed no field names (no BTF?): {entry}"))
}

/// Sums a counter field over the CPUs of a per-CPU map entry's formatted value.
pub fn per_cpu_sum(formatted: &Value, field: &str) -> u64 {
    formatted["values"]
        .as_array()
        .expect("per-CPU values")
        .iter()
        .map(|v| {
            field
                .split('.')
                .fold(&v["value"], |value, name| &value[name])
                .as_u64()
                .unwrap_or_else(|| panic!("no counter {field} in {v}"))
        })
        .sum()
}

/// One loaded program's run-time accounting as `bpftool -j prog show` prints it (the counters
/// move only while statistics are on: `kernel.bpf_stats_enabled`, or a BPF_ENABLE_STATS
/// descriptor held open).
#[derive(Clone, Debug, Default)]
pub struct ProgRuns {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// `bpftool -j prog show`: every program loaded on the machine.
pub fn prog_runs() -> Vec<ProgRuns> {
    let out = crate::sh::run("bpftool", &["-j", "prog", "show"]);
    let progs: Value = serde_json::from_str(&out).expect("bpftool -j prints JSON");
    let number = |p: &Value, field: &str| p[field].as_u64().unwrap_or(0);
    progs
        .as_array()
        .expect("bpftool prog show: a list")
        .iter()
        .map(|p| ProgRuns {
            id: number(p, "id") as u32,
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            run_time_ns: number(p, "run_time_ns"),
            run_cnt: number(p, "run_cnt"),
        })
        .collect()
}
