//! The lab's EC2 API + IMDSv2 emulator (tests/lab/emulator/, moto extended where moto is not
//! EC2) as a child process on loopback, and clients for it: aws-sdk-ec2 as the agent would use
//! it, and the lab's control endpoints (`/_lab/...`: faults, call counts, the network view).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// The region every lab resource lives in.
pub const REGION: &str = "us-west-2";

/// The venv `cargo xtask setup` builds for the emulator.
pub fn venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("ENIFLOW_LAB_VENV") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/eniflow/lab-venv")
}

/// A running emulator; stopped (SIGTERM, then SIGKILL) when dropped. It also exits by itself
/// if the test process dies.
pub struct Emulator {
    child: Child,
    port: u16,
    http: ureq::Agent,
}

/// One EC2 call as the emulator logged it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct LoggedCall {
    pub t: f64,
    pub action: String,
    pub class: String,
    pub caller: Option<String>,
    pub outcome: String,
}

/// One armed fault: the next `count` calls of `action` fail with `code` and HTTP `status`,
/// after `latency_ms`. A fault with no code only delays; `cut` answers HTTP 500 with no body (an
/// answer cut off: no EC2 error to read).
#[derive(Clone, Debug, Default)]
pub struct Fault {
    pub action: String,
    pub code: Option<String>,
    pub status: u16,
    pub count: u32,
    pub latency_ms: u64,
    pub cut: bool,
}

impl Emulator {
    /// Starts the emulator; `vpc_netns` names the namespace that plays the VPC fabric (None for
    /// API-only use). Blocks until it answers.
    pub fn start(vpc_netns: Option<&str>) -> Self {
        let python = venv().join("bin/python");
        assert!(
            python.exists(),
            "no lab venv at {}: run `cargo xtask setup`",
            venv().display()
        );
        let script = crate::agent::workspace().join("tests/lab/emulator/emulator.py");
        let port_file = std::env::temp_dir().join(format!("{}.port", crate::unique_name("emu")));
        let _ = std::fs::remove_file(&port_file);
        let mut cmd = Command::new(python);
        cmd.arg(&script)
            .arg("--port-file")
            .arg(&port_file)
            .stdin(Stdio::null());
        if let Some(ns) = vpc_netns {
            // Only the fabric needs the trunk helper (and building it builds the workspace's
            // binaries): API-only emulators start without.
            cmd.env(
                "ENIFLOW_LAB_TRUNK_HELPER",
                crate::agent::binary("eniflow-lab-trunk"),
            );
            cmd.args(["--vpc-netns", ns]);
        }
        let mut child = cmd.spawn().expect("start the EC2 emulator");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break port;
            }
            if let Some(status) = child.try_wait().expect("poll emulator") {
                panic!("the EC2 emulator exited before it was ready: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the EC2 emulator was not ready after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = std::fs::remove_file(&port_file);
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Self { child, port, http }
    }

    /// The emulator's process id (tests check it is gone after the lab is dropped).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`: the EC2 endpoint, and IMDS for the instance chosen with
    /// [`Emulator::select_imds`].
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The emulator's endpoint, region and static dummy credentials, for a client to be built
    /// on (the agent's own `Ec2::configured` adds its retries and timeouts).
    pub fn ec2_config(&self) -> aws_sdk_ec2::config::Builder {
        aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_sdk_ec2::config::Region::new(REGION))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "lab",
                "lab",
                None,
                None,
                "eniflow-lab",
            ))
    }

    /// A fresh aws-sdk-ec2 client for the emulator, with a short retry backoff (standard mode,
    /// 3 attempts).
    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        let config = self
            .ec2_config()
            .retry_config(
                aws_sdk_ec2::config::retry::RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(10))
                    .with_max_backoff(Duration::from_millis(100)),
            )
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// Calls a control endpoint and returns its JSON answer; panics on a non-2xx status.
    pub fn control(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.endpoint());
        let mut response = match (method, body) {
            ("GET", _) => self.http.get(&url).call(),
            ("DELETE", _) => self.http.delete(&url).call(),
            ("POST", Some(body)) => self.http.post(&url).send_json(body),
            ("POST", None) => self.http.post(&url).send_empty(),
            (other, _) => panic!("control: unsupported method {other}"),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        assert!(
            status.is_success(),
            "{method} {path}: HTTP {status}: {text}"
        );
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        }
    }

    /// Arms a fault for the next calls of one EC2 action.
    pub fn fault(&self, fault: &Fault) {
        self.control(
            "POST",
            "/_lab/faults",
            Some(json!({
                "action": fault.action,
                "code": fault.code,
                "status": fault.status,
                "count": fault.count,
                "latency_ms": fault.latency_ms,
                "cut": fault.cut,
            })),
        );
    }

    pub fn clear_faults(&self) {
        self.control("DELETE", "/_lab/faults", None);
    }

    /// EC2 calls received so far, by action (faulted calls included).
    pub fn calls(&self) -> BTreeMap<String, u64> {
        serde_json::from_value(self.control("GET", "/_lab/calls", None))
            .expect("calls: {action: count}")
    }

    /// Turns EC2's account-wide request buckets on with AWS's default sizes (`on`), or off;
    /// `buckets` overrides some classes' (capacity, refill per second).
    pub fn throttle(&self, on: bool, buckets: &[(&str, f64, f64)]) {
        let buckets: serde_json::Map<String, Value> = buckets
            .iter()
            .map(|(class, capacity, rate)| (class.to_string(), json!([capacity, rate])))
            .collect();
        self.control(
            "POST",
            "/_lab/throttle",
            Some(json!({ "enabled": on, "buckets": buckets })),
        );
    }

    /// Every EC2 call so far, in order: seconds since the emulator started, action, bucket
    /// class, caller (node or access key id) and outcome ("ok" or the error code).
    pub fn call_log(&self) -> Vec<LoggedCall> {
        serde_json::from_value(self.control("GET", "/_lab/call-log", None))
            .expect("call-log: [{t, action, class, caller, outcome}]")
    }

    /// The network view the fabric is built from: every ENI with its MAC, subnet, attachment,
    /// addresses, prefixes and trunk/VLAN association.
    pub fn view(&self) -> Value {
        self.control("GET", "/_lab/view", None)
    }

    /// Serves IMDS on the loopback endpoint as seen from `instance_id`.
    pub fn select_imds(&self, instance_id: &str) {
        self.control(
            "POST",
            "/_lab/imds",
            Some(json!({ "instance_id": instance_id })),
        );
    }

    /// Makes `netns` the instance's machine: the fabric plugs its ENIs in there, and EC2 + IMDS
    /// answer inside it at http://169.254.169.254.
    pub fn register_node(&self, instance_id: &str, netns: &str) {
        self.control(
            "POST",
            "/_lab/nodes",
            Some(json!({ "instance_id": instance_id, "netns": netns })),
        );
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // SAFETY: the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
