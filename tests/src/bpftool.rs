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
        .map(|v| v["value"][field].as_u64().expect("counter field"))
        .sum()
}
