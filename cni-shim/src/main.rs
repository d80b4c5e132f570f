//! `eniflow-cni`: the CNI plugin the container runtime executes. It answers by itself what needs
//! no agent (VERSION; a bad configuration or environment; DEL when the agent is down), hands
//! everything else to the agent over its unix socket, and prints the agent's answer. Stdout
//! carries only CNI JSON (a result, the versions, or a CNI error); logs go to a file.
//!
//! Network configuration keys of its own (all optional): `socket` (the agent's socket),
//! `timeoutSeconds` (how long to wait for the agent, default 10), `logFile` (else
//! ENIFLOW_CNI_LOG, else /var/log/eniflow-cni.log).

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use eniflow_api::{
    cni_errors,
    v1::{cni_client::CniClient, CniRequest},
    DEFAULT_SOCKET, PROTOCOL, SUPPORTED_CNI_VERSIONS,
};
use serde_json::{json, Value};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LOG: &str = "/var/log/eniflow-cni.log";

struct Failure {
    code: u32,
    msg: String,
}

fn failure(code: u32, msg: impl Into<String>) -> Failure {
    Failure {
        code,
        msg: msg.into(),
    }
}

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let preferred = SUPPORTED_CNI_VERSIONS.last().copied().unwrap_or("1.0.0");
    if command == "VERSION" {
        println!(
            "{}",
            json!({ "cniVersion": preferred, "supportedVersions": SUPPORTED_CNI_VERSIONS })
        );
        return ExitCode::SUCCESS;
    }
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let config: Option<Value> = serde_json::from_slice(&stdin).ok();
    let version = config
        .as_ref()
        .and_then(|c| c.get("cniVersion")?.as_str())
        .unwrap_or(preferred)
        .to_owned();
    let log_file = config
        .as_ref()
        .and_then(|c| c.get("logFile")?.as_str().map(str::to_owned))
        .or_else(|| std::env::var("ENIFLOW_CNI_LOG").ok())
        .unwrap_or_else(|| DEFAULT_LOG.to_owned());
    let outcome = run(&command, stdin, config.as_ref());
    let (code, line) = match &outcome {
        Ok(Some(output)) => (ExitCode::SUCCESS, Some(output.clone())),
        Ok(None) => (ExitCode::SUCCESS, None),
        Err(f) => (
            ExitCode::FAILURE,
            Some(json!({ "cniVersion": version, "code": f.code, "msg": f.msg }).to_string()),
        ),
    };
    log(&log_file, &command, &outcome);
    if let Some(line) = line {
        println!("{line}");
    }
    code
}

/// Appends one line about this invocation to the log file (best effort: never stdout).
fn log(path: &str, command: &str, outcome: &Result<Option<String>, Failure>) {
    let container = std::env::var("CNI_CONTAINERID").unwrap_or_default();
    let what = match outcome {
        Ok(_) => "ok".to_owned(),
        Err(f) => format!("error {}: {}", f.code, f.msg),
    };
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{command} {container}: {what}");
    }
}

/// The printed output on success (None: print nothing), or the failure to print.
fn run(command: &str, stdin: Vec<u8>, config: Option<&Value>) -> Result<Option<String>, Failure> {
    let needs_container = match command {
        "ADD" | "DEL" | "CHECK" => true,
        "STATUS" | "GC" => false,
        "" => return Err(failure(cni_errors::INVALID_ENV, "CNI_COMMAND is not set")),
        other => {
            return Err(failure(
                cni_errors::INVALID_ENV,
                format!(
                "CNI_COMMAND {other:?} is not a CNI command (ADD, DEL, CHECK, STATUS, GC, VERSION)"
            ),
            ))
        }
    };
    let Some(config) = config else {
        return Err(failure(
            cni_errors::DECODE_FAILURE,
            "the network configuration on stdin is not JSON",
        ));
    };
    check_config(config)?;
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    if needs_container {
        let mut required = vec!["CNI_CONTAINERID", "CNI_IFNAME"];
        if command != "DEL" {
            required.push("CNI_NETNS");
        }
        if let Some(missing) = required.into_iter().find(|name| env(name).is_empty()) {
            return Err(failure(
                cni_errors::INVALID_ENV,
                format!("{missing} is not set"),
            ));
        }
    }
    let socket = config
        .get("socket")
        .and_then(Value::as_str)
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    let timeout = config
        .get("timeoutSeconds")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let request = CniRequest {
        protocol: PROTOCOL,
        container_id: env("CNI_CONTAINERID"),
        netns: env("CNI_NETNS"),
        ifname: env("CNI_IFNAME"),
        args: env("CNI_ARGS"),
        config: stdin,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failure(cni_errors::IO_FAILURE, format!("start a runtime: {e}")))?;
    let answer = runtime.block_on(async {
        tokio::time::timeout(timeout, call(&socket, command, request))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the eniflow agent at {} did not answer within {} s",
                    socket.display(),
                    timeout.as_secs()
                ))
            })
    });
    match answer {
        Ok(reply) if reply.failed => {
            // The agent's error object, printed as it is.
            let error: Value = serde_json::from_slice(&reply.output).unwrap_or_default();
            Err(failure(
                error["code"]
                    .as_u64()
                    .unwrap_or(u64::from(cni_errors::IO_FAILURE)) as u32,
                error["msg"]
                    .as_str()
                    .unwrap_or("the agent failed")
                    .to_owned(),
            ))
        }
        Ok(reply) if reply.output.is_empty() => Ok(None),
        Ok(reply) => Ok(Some(String::from_utf8_lossy(&reply.output).into_owned())),
        // DEL never fails because the agent is down: it releases what is gone when it is back.
        Err(_) if command == "DEL" => Ok(None),
        Err(msg) => Err(failure(cni_errors::AGENT_UNREACHABLE, msg)),
    }
}

/// What the spec lets the plugin refuse by itself, without the agent: no or an unsupported
/// cniVersion, no network name.
fn check_config(config: &Value) -> Result<(), Failure> {
    let Some(version) = config.get("cniVersion").and_then(Value::as_str) else {
        return Err(failure(
            cni_errors::INVALID_CONFIG,
            "the configuration has no cniVersion",
        ));
    };
    if !SUPPORTED_CNI_VERSIONS.contains(&version) {
        return Err(failure(
            cni_errors::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version:?} is not supported (eniflow speaks {})",
                SUPPORTED_CNI_VERSIONS.join(", ")
            ),
        ));
    }
    if config
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(failure(
            cni_errors::INVALID_CONFIG,
            "the configuration has no name",
        ));
    }
    Ok(())
}

async fn call(
    socket: &std::path::Path,
    command: &str,
    request: CniRequest,
) -> Result<eniflow_api::v1::CniReply, String> {
    let channel = eniflow_api::connect(socket).await.map_err(|e| {
        format!(
            "the eniflow agent at {} is not reachable: {e}",
            socket.display()
        )
    })?;
    let mut client = CniClient::new(channel);
    let reply = match command {
        "ADD" => client.add(request).await,
        "DEL" => client.del(request).await,
        "CHECK" => client.check(request).await,
        "STATUS" => client.status(request).await,
        _ => client.gc(request).await,
    };
    reply
        .map(|r| r.into_inner())
        .map_err(|status| format!("the eniflow agent failed the call: {}", status.message()))
}
