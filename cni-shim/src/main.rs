//! `eniflow-cni`: the CNI plugin the container runtime executes. It prints only CNI JSON on
//! stdout: a result, the supported versions, or a CNI error.

use std::process::ExitCode;

use eniflow_api::{cni_errors, SUPPORTED_CNI_VERSIONS};
use serde_json::json;

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    match command.as_str() {
        "VERSION" => {
            println!(
                "{}",
                json!({
                    "cniVersion": SUPPORTED_CNI_VERSIONS.last(),
                    "supportedVersions": SUPPORTED_CNI_VERSIONS,
                })
            );
            ExitCode::SUCCESS
        }
        "ADD" | "DEL" | "CHECK" | "GC" | "STATUS" => fail(
            cni_errors::TRY_AGAIN_LATER,
            &format!("CNI_COMMAND {command} is not served by this build of eniflow-cni yet"),
        ),
        "" => fail(cni_errors::INVALID_ENV, "CNI_COMMAND is not set"),
        other => fail(
            cni_errors::INVALID_ENV,
            &format!(
                "CNI_COMMAND {other:?} is not a CNI command (ADD, DEL, CHECK, GC, STATUS, VERSION)"
            ),
        ),
    }
}

/// Prints a CNI error on stdout (where the runtime reads it) and fails.
fn fail(code: u32, msg: &str) -> ExitCode {
    let version = SUPPORTED_CNI_VERSIONS.last();
    println!(
        "{}",
        json!({ "cniVersion": version, "code": code, "msg": msg })
    );
    ExitCode::FAILURE
}
