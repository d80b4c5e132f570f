//! A real Prometheus (Debian's, unpacked by setup) scraping the agent inside a lab namespace,
//! queried through its HTTP API; promtool for checking an exposition.

use std::{
    io::Write,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::Netns;

/// Where the agent serves metrics inside a lab node (its default).
pub const AGENT_METRICS: &str = "127.0.0.1:61678";
/// Where the test's Prometheus listens, inside the same namespace.
const LISTEN: &str = "127.0.0.1:9090";

/// Setup's copy of a Prometheus tool (`ENIFLOW_PROMETHEUS_BIN` overrides the directory).
pub fn tool(name: &str) -> PathBuf {
    let dir = std::env::var("ENIFLOW_PROMETHEUS_BIN").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.cache/eniflow/bin")
    });
    PathBuf::from(dir).join(name)
}

/// `GET http://<address><path>` from inside `ns`: status and body, or why nothing answered.
pub fn get(ns: &Netns, address: &str, path: &str) -> Result<(u16, String), String> {
    let url = format!("http://{address}{path}");
    ns.within(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut response = agent
            .get(&url)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        Ok((
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ))
    })
}

/// The agent's exposition, as Prometheus would scrape it.
pub fn scrape_agent(ns: &Netns) -> String {
    let (status, body) = get(ns, AGENT_METRICS, "/metrics").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// `promtool check metrics` on `exposition`: its exit code (0 clean, 3 lint problems only, 1
/// unparsable) and what it printed.
pub fn promtool_check(exposition: &str) -> (i32, String) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (cargo xtask setup unpacks it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

/// Prometheus scraping the agent every second from inside `ns`; stopped (by PID) and its
/// data removed on drop.
pub struct Prometheus<'a> {
    child: Child,
    dir: PathBuf,
    ns: &'a Netns,
}

impl<'a> Prometheus<'a> {
    pub fn scraping_agent_in(ns: &'a Netns) -> Prometheus<'a> {
        let dir = std::env::temp_dir().join(crate::unique_name("eflprom"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: eniflow\n    static_configs:\n      - targets: ['{AGENT_METRICS}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus (cargo xtask setup unpacks it)");
        let prometheus = Prometheus { child, dir, ns };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(ns, LISTEN, "/-/ready").map(|(status, _)| status) != Ok(200) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 30 s: {}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector of `promql`: each series' labels and value.
    pub fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let mut encoded = String::new();
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let (status, body) = get(self.ns, LISTEN, &format!("/api/v1/query?query={encoded}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "query {promql}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {promql}: {answer}"))
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The single value of `promql` (a sum, say); None while no series matches.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let series = self.query(promql);
        assert!(
            series.len() <= 1,
            "{promql}: more than one series: {series:?}"
        );
        series.first().map(|(_, v)| *v)
    }

    /// Waits (up to 20 s) until `promql` is `want`, as Prometheus scrapes it; panics with the
    /// last value otherwise.
    pub fn wait_for(&self, promql: &str, want: impl Fn() -> f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (got, wanted) = (self.value(promql), want());
            if got == Some(wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: Prometheus has {got:?}, expected {wanted}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
