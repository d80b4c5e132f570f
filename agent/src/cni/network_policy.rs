//! EKS's network policy agent, told of each pod as VPC CNI's plugin tells it: once the pod is
//! wired, `EnforceNpToPod` on its unix socket (the policy agent then attaches its own programs
//! to the pod's host veth), and once the pod is taken apart, `DeletePodNp`. With
//! NETWORK_POLICY_ENFORCING_MODE standard or strict (VPC CNI's knob; unset or none: no calls).
//!
//! A pod the policy agent did not hear of would never get its policies, so an ADD fails, and is
//! undone, when the call fails, in either mode (as VPC CNI's plugin does). A DEL does not: the
//! pod is gone whatever the policy agent says, and a DEL that fails only comes back.

use std::{path::PathBuf, time::Duration};

use eniflow_api::{
    cni_errors,
    network_policy::{np_backend_client::NpBackendClient, DeleteNpRequest, EnforceNpRequest},
};

use super::error::CniError;

/// The policy agent's socket on the node (its /var/run/aws-node/npa.sock: /var/run is /run on
/// the node, and the DaemonSet mounts /run/aws-node).
pub const DEFAULT_SOCKET: &str = "/run/aws-node/npa.sock";

/// How long a call may take, its connection included (VPC CNI allows 2 s to connect): the ADD
/// has to answer within the shim's deadline (10 s by default).
const CALL_LIMIT: Duration = Duration::from_secs(4);

/// NETWORK_POLICY_ENFORCING_MODE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pods are allowed everything until their policies are applied.
    Standard,
    /// Pods are denied everything until their policies are applied.
    Strict,
}

impl Mode {
    /// The knob's value: None for unset, empty or `none` (the policy agent is not called).
    pub fn parse(text: Option<&str>) -> Result<Option<Mode>, String> {
        match text.map(|t| t.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("none") => Ok(None),
            Some("standard") => Ok(Some(Mode::Standard)),
            Some("strict") => Ok(Some(Mode::Strict)),
            Some(other) => Err(format!(
                "NETWORK_POLICY_ENFORCING_MODE={other:?}: must be none, standard or strict"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Standard => "standard",
            Mode::Strict => "strict",
        }
    }
}

/// The policy agent at `socket`, in `mode`.
pub struct NetworkPolicy {
    pub socket: PathBuf,
    pub mode: Mode,
}

impl NetworkPolicy {
    /// Tells the policy agent the pod `namespace/name` is wired; an error (naming the socket)
    /// when it cannot be reached or does not confirm.
    pub async fn enforce(&self, namespace: &str, name: &str) -> Result<(), CniError> {
        let request = EnforceNpRequest {
            k8s_pod_name: name.to_owned(),
            k8s_pod_namespace: namespace.to_owned(),
            network_policy_mode: self.mode.name().to_owned(),
            interface_count: 1,
        };
        let call = async {
            let mut client = self.client().await?;
            let reply = client
                .enforce_np_to_pod(request)
                .await
                .map_err(|s| s.message().to_owned())?;
            if reply.into_inner().success {
                Ok(())
            } else {
                Err("it answered that it could not".to_owned())
            }
        };
        let outcome = tokio::time::timeout(CALL_LIMIT, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {CALL_LIMIT:?}")));
        outcome.map_err(|e| {
            CniError::new(
                cni_errors::NETWORK_POLICY_FAILED,
                format!(
                    "network policy ({} mode): the policy agent at {} did not take pod {namespace}/{name}: {e}",
                    self.mode.name(),
                    self.socket.display()
                ),
            )
        })
    }

    /// Tells the policy agent the pod is gone; failures are logged only.
    pub async fn forget(&self, namespace: &str, name: &str) {
        let request = DeleteNpRequest {
            k8s_pod_name: name.to_owned(),
            k8s_pod_namespace: namespace.to_owned(),
        };
        let call = async {
            let mut client = self.client().await?;
            client
                .delete_pod_np(request)
                .await
                .map_err(|s| s.message().to_owned())
                .map(|reply| reply.into_inner().success)
        };
        match tokio::time::timeout(CALL_LIMIT, call).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!("network policy: the policy agent kept pod {namespace}/{name}")
            }
            Ok(Err(e)) => tracing::warn!("network policy: DeletePodNp {namespace}/{name}: {e}"),
            Err(_) => tracing::warn!(
                "network policy: DeletePodNp {namespace}/{name}: no answer within {CALL_LIMIT:?}"
            ),
        }
    }

    async fn client(&self) -> Result<NpBackendClient<tonic::transport::Channel>, String> {
        let channel =
            eniflow_api::connect(&self.socket).await.map_err(
                |e| match std::error::Error::source(&e) {
                    Some(cause) => format!("cannot connect: {e}: {cause}"),
                    None => format!("cannot connect: {e}"),
                },
            )?;
        Ok(NpBackendClient::new(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_is_vpc_cnis_knob() {
        assert_eq!(Mode::parse(None), Ok(None));
        assert_eq!(Mode::parse(Some("none")), Ok(None));
        assert_eq!(Mode::parse(Some("Strict")), Ok(Some(Mode::Strict)));
        assert_eq!(Mode::parse(Some("standard")), Ok(Some(Mode::Standard)));
        let err = Mode::parse(Some("enforcing")).unwrap_err();
        assert!(
            err.contains("NETWORK_POLICY_ENFORCING_MODE=\"enforcing\""),
            "{err}"
        );
    }
}
