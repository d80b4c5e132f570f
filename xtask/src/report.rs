//! The bench report: the parts this run's benches wrote under `target/bench/` (method, tables,
//! raw numbers, SVG figures) put together into `report.md` and `report.json`, with the machine
//! and the date.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result};
use serde_json::{json, Value};

pub fn dir() -> PathBuf {
    crate::root().join("target/bench")
}

/// Removes the earlier files of the parts about to run (every part's when `only` is None), so
/// the report never mixes their old figures with new ones; other parts' stay.
pub fn clear(only: Option<&str>) -> Result<()> {
    let dir = dir();
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if only.is_none_or(|part| name.is_some_and(|n| n.starts_with(part))) {
            fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split(':').nth(1))
        .map(|v| v.trim().to_owned())
}

fn machine() -> Value {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "date": date,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": first_line_with("/proc/cpuinfo", "model name"),
        "memory": first_line_with("/proc/meminfo", "MemTotal"),
        "profile": "release builds of the agent, the shim, the bench drivers and the kernel programs",
    })
}

fn markdown_table(table: &Value) -> String {
    let cells = |row: &Value| -> String {
        let cells: Vec<String> = row
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c.as_str().unwrap_or_default().replace('|', "\\|"))
            .collect();
        format!("| {} |", cells.join(" | "))
    };
    let header = &table["header"];
    let width = header.as_array().map_or(0, Vec::len);
    let mut out = format!(
        "{}\n\n{}\n|{}\n",
        table["caption"].as_str().unwrap_or_default(),
        cells(header),
        "---|".repeat(width)
    );
    for row in table["rows"].as_array().into_iter().flatten() {
        out.push_str(&cells(row));
        out.push('\n');
    }
    out
}

/// Writes report.md and report.json from the parts present; returns report.md's path.
pub fn assemble() -> Result<PathBuf> {
    let dir = dir();
    let mut parts: Vec<Value> = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let is_part = path.extension().is_some_and(|e| e == "json")
            && path.file_stem().is_some_and(|s| s != "report");
        if is_part {
            let text = fs::read_to_string(&path)?;
            parts.push(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a report part", path.display()))?,
            );
        }
    }
    // The order a reader wants: packets, then pods starting, then the pool.
    let rank = |p: &Value| match p["name"].as_str() {
        Some("datapath") => 0,
        Some("cni") => 1,
        Some("ipam") => 2,
        Some("scale") => 3,
        _ => 4,
    };
    parts.sort_by_key(rank);
    let machine = machine();
    let mut md = format!(
        "# eniflow benchmark report\n\n{}; Linux {}; {} CPU(s) ({}); {} memory; {}.\n",
        machine["date"].as_str().unwrap_or_default(),
        machine["kernel"].as_str().unwrap_or_default(),
        machine["cpus"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["memory"].as_str().unwrap_or("?"),
        machine["profile"].as_str().unwrap_or_default(),
    );
    for part in &parts {
        md.push_str(&format!(
            "\n## {}\n\n{}\n",
            part["title"].as_str().unwrap_or_default(),
            part["method"].as_str().unwrap_or_default()
        ));
        for table in part["tables"].as_array().into_iter().flatten() {
            md.push('\n');
            md.push_str(&markdown_table(table));
        }
        for figure in part["figures"].as_array().into_iter().flatten() {
            md.push_str(&format!(
                "\n![{}]({})\n",
                figure[1].as_str().unwrap_or_default(),
                figure[0].as_str().unwrap_or_default()
            ));
        }
    }
    let report = dir.join("report.md");
    fs::write(&report, md)?;
    fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json!({ "machine": machine, "parts": parts }))?,
    )?;
    Ok(report)
}
