//! The CNI layer's one error type, and the one place where the errors of the layers below it
//! (pool, branch pods, plumbing, data plane) get their CNI code.

use eniflow_api::cni_errors;

use super::{branch::BranchError, plumbing::PlumbingError};
use crate::{
    datapath::DatapathError,
    ipam::{IpamError, PoolError},
};

/// A CNI error: the spec's code (or eniflow's, from 100) and a one-line message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (CNI code {code})")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
        }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        let code = match e {
            // The refill loop is adding addresses: the runtime's retry will find one.
            IpamError::Pool(PoolError::Empty { .. }) => cni_errors::TRY_AGAIN_LATER,
            _ => cni_errors::IO_FAILURE,
        };
        CniError::new(code, e.to_string())
    }
}

impl From<BranchError> for CniError {
    fn from(e: BranchError) -> CniError {
        let code = match e {
            BranchError::Annotation(_) => cni_errors::INVALID_CONFIG,
            // A VLAN held or cooling, an annotation not there yet: the runtime's retry may pass.
            BranchError::VlanBusy(_) | BranchError::Pending(_) => cni_errors::TRY_AGAIN_LATER,
            BranchError::Checkpoint(..) => cni_errors::IO_FAILURE,
        };
        CniError::new(code, e.to_string())
    }
}

impl From<PlumbingError> for CniError {
    fn from(e: PlumbingError) -> CniError {
        // A name already taken is the caller's input, not a failure of the node.
        let code = if e.taken {
            cni_errors::INVALID_ENV
        } else {
            cni_errors::PLUMBING_FAILED
        };
        CniError::new(code, e.to_string())
    }
}

impl From<DatapathError> for CniError {
    fn from(e: DatapathError) -> CniError {
        CniError::new(cni_errors::PLUMBING_FAILED, e.to_string())
    }
}

/// The errors of a teardown that went on past each of them (netavark's error list): reported
/// together, as one I/O failure.
#[derive(Debug, Default)]
pub struct ErrorList(Vec<CniError>);

impl ErrorList {
    pub fn push(&mut self, e: impl Into<CniError>) {
        self.0.push(e.into());
    }

    /// Records the error of `result`, if any.
    pub fn check<E: Into<CniError>>(&mut self, result: Result<(), E>) {
        if let Err(e) = result {
            self.push(e);
        }
    }

    pub fn into_result(self) -> Result<(), CniError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let msgs: Vec<String> = self.0.into_iter().map(|e| e.msg).collect();
        Err(CniError::new(cni_errors::IO_FAILURE, msgs.join("; ")))
    }
}
