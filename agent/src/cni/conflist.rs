//! The CNI network configuration the agent writes once it serves: the file's presence is what
//! turns the node network-ready. eniflow first, then the configured chain.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{json, Value};

use super::branch::POD_ANNOTATIONS;

/// The network's name: runtimes send it with every request, and allocations are keyed by it.
pub const NETWORK: &str = "eniflow";

/// How long the shim waits for the agent unless the conflist says otherwise.
const SHIM_DEFAULT_TIMEOUT_SECONDS: u64 = 10;

/// What the conflist says.
pub struct Conflist {
    /// The agent's socket, which the shim calls.
    pub socket: PathBuf,
    /// The shim's log file (the shim's own default otherwise).
    pub log_file: Option<PathBuf>,
    /// How long an ADD may wait for a pod's branch ENI annotation.
    pub pod_eni_wait: Duration,
    /// The plugins chained after eniflow (a JSON array, checked by `parse_chain`).
    pub chain: Value,
}

impl Conflist {
    pub fn render(&self) -> Value {
        // Pod annotations reach the agent through runtimeConfig (containerd's CRI passes them
        // to a plugin that declares the capability): security-group pods are named there.
        let mut eniflow = json!({
            "type": "eniflow-cni",
            "socket": self.socket,
            "capabilities": { POD_ANNOTATIONS: true },
        });
        if let Some(log) = &self.log_file {
            eniflow["logFile"] = json!(log);
        }
        // The shim waits 10 s for the agent by default; an ADD may wait for an annotation.
        let needed = self.pod_eni_wait.as_secs() + 5;
        if needed > SHIM_DEFAULT_TIMEOUT_SECONDS {
            eniflow["timeoutSeconds"] = json!(needed);
        }
        let mut plugins = vec![eniflow];
        plugins.extend(self.chain.as_array().cloned().unwrap_or_default());
        // 1.0.0: the newest version the reference plugins of today's distributions speak.
        json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": plugins,
        })
    }

    /// Writes it atomically: the runtime reads the old text or the new, never a torn one.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = format!("{:#}\n", self.render());
        crate::files::write_atomically(path, text.as_bytes())
    }
}

/// ENIFLOW_CNI_CHAIN is not a JSON array of plugin objects.
#[derive(Debug, thiserror::Error)]
#[error("ENIFLOW_CNI_CHAIN {0}")]
pub struct ChainError(String);

/// The plugins chained after eniflow: a JSON array of plugin objects, each with a "type".
pub fn parse_chain(text: &str) -> Result<Value, ChainError> {
    let chain: Value =
        serde_json::from_str(text).map_err(|e| ChainError(format!("is not JSON: {e}")))?;
    let plugins = chain
        .as_array()
        .ok_or_else(|| ChainError("must be a JSON array of plugin objects".into()))?;
    if let Some(bad) = plugins
        .iter()
        .position(|p| p.get("type").and_then(Value::as_str).is_none())
    {
        return Err(ChainError(format!("[{bad}] has no \"type\"")));
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_follows_eniflow_and_a_long_wait_raises_the_timeout() {
        let conflist = Conflist {
            socket: "/run/eniflow/agent.sock".into(),
            log_file: None,
            pod_eni_wait: Duration::from_secs(20),
            chain: parse_chain(r#"[{"type":"portmap"}]"#).unwrap(),
        };
        let v = conflist.render();
        assert_eq!(v["plugins"][0]["type"], "eniflow-cni");
        assert_eq!(v["plugins"][0]["timeoutSeconds"], 25);
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert!(parse_chain(r#"[{"name":"x"}]"#)
            .unwrap_err()
            .to_string()
            .contains("[0] has no \"type\""));
        assert!(parse_chain("{}").is_err());
    }
}
