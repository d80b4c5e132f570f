//! The shim's contract with the runtime before any agent is involved: VERSION answers, and bad
//! input gets a CNI error on stdout naming what was wrong.

use std::process::Command;

use eniflow_tests::agent::binary;
use serde_json::Value;

fn shim(command: Option<&str>) -> (bool, Value) {
    let log = std::env::temp_dir().join(eniflow_tests::unique_name("shim-log"));
    let mut cmd = Command::new(binary("eniflow-cni"));
    cmd.env_clear().env("ENIFLOW_CNI_LOG", &log);
    if let Some(command) = command {
        cmd.env("CNI_COMMAND", command);
    }
    let out = cmd.output().expect("run eniflow-cni");
    let _ = std::fs::remove_file(&log);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"));
    (out.status.success(), json)
}

#[test]
fn version_lists_the_supported_cni_versions() {
    let (ok, answer) = shim(Some("VERSION"));
    assert!(ok);
    let versions = answer["supportedVersions"]
        .as_array()
        .expect("supportedVersions");
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.iter().any(|x| x == v), "{v} missing from {answer}");
    }
}

#[test]
fn missing_or_unknown_command_is_a_cni_error_naming_it() {
    for (command, needle) in [(None, "CNI_COMMAND"), (Some("ADDD"), "ADDD")] {
        let (ok, answer) = shim(command);
        assert!(!ok, "{command:?} succeeded");
        assert_eq!(answer["code"], 4, "{command:?}: {answer}");
        assert!(
            answer["msg"].as_str().unwrap().contains(needle),
            "{command:?}: {answer}"
        );
    }
}
