//! The agent's error type and its mapping to ttrpc status codes.
//!
//! The runtime on the host acts on the code (NOT_FOUND, ALREADY_EXISTS, ...), so every
//! failure carries the one that fits and a short message naming the thing concerned.

use crate::network::NetworkError;
use ttrpc::Code;

use crate::container::block_rootfs::BlockRootError;
use crate::container::cgroup::CgroupError;
use crate::container::spec::SpecError;
use crate::container::stdio::StdioError;
use crate::container::sync::{FailureKind, InitFailure, SyncError};

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("container {0:?} not found")]
    NoSuchContainer(String),
    #[error("container {container_id:?} has no process {exec_id:?}")]
    NoSuchProcess {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    #[error("container {container_id:?} already has a process {exec_id:?}")]
    ProcessExists {
        container_id: String,
        exec_id: String,
    },
    #[error("container {id:?}: {state}")]
    WrongState { id: String, state: &'static str },
    #[error("sandbox is already created")]
    SandboxExists,
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error("invalid argument {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("rootfs {0:?} does not exist")]
    RootfsMissing(String),
    #[error("container {id:?}: {failure}")]
    Init { id: String, failure: InitFailure },
    #[error("container {id:?}: {source}")]
    Cgroup { id: String, source: CgroupError },
    #[error("container {id:?}: {source}")]
    Sync { id: String, source: SyncError },
    #[error("container {id:?}: {source}")]
    Stdio { id: String, source: StdioError },
    #[error(transparent)]
    BlockRoot(#[from] crate::container::block_rootfs::BlockRootError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("{what}: {source}")]
    Os {
        what: String,
        source: nix::errno::Errno,
    },
}

impl AgentError {
    /// The ttrpc status code the runtime sees for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::NoSuchContainer(_) | Self::NoSuchProcess { .. } | Self::RootfsMissing(_) => {
                Code::NOT_FOUND
            }
            Self::ContainerExists(_) | Self::ProcessExists { .. } => Code::ALREADY_EXISTS,
            Self::WrongState { .. } | Self::SandboxExists => Code::FAILED_PRECONDITION,
            Self::Spec(_) | Self::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
            Self::Init { failure, .. } => match failure.kind {
                FailureKind::NotFound => Code::NOT_FOUND,
                FailureKind::PermissionDenied => Code::PERMISSION_DENIED,
                FailureKind::InvalidArgument => Code::INVALID_ARGUMENT,
                FailureKind::Internal => Code::INTERNAL,
            },
            Self::Stdio { source, .. } => source.code(),
            Self::Cgroup {
                source: CgroupError::Invalid(_),
                ..
            } => Code::INVALID_ARGUMENT,
            Self::BlockRoot(err) => match err {
                BlockRootError::FsType(_) | BlockRootError::Serial(_) => Code::INVALID_ARGUMENT,
                BlockRootError::NotFound { .. } => Code::NOT_FOUND,
                BlockRootError::Os { .. } => Code::INTERNAL,
            },
            Self::Network(err) => match err {
                NetworkError::Invalid { .. } => Code::INVALID_ARGUMENT,
                NetworkError::NoLink { .. } => Code::NOT_FOUND,
                NetworkError::HostNamespace => Code::FAILED_PRECONDITION,
                NetworkError::Netlink(_) => Code::INTERNAL,
            },
            Self::Cgroup { .. } | Self::Sync { .. } | Self::Os { .. } => Code::INTERNAL,
        }
    }

    /// An OS call failure, named by what was being done.
    pub fn os(what: impl Into<String>, source: nix::errno::Errno) -> Self {
        Self::Os {
            what: what.into(),
            source,
        }
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(err: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fit_the_failure() {
        assert_eq!(
            AgentError::NoSuchContainer("c".into()).code(),
            Code::NOT_FOUND
        );
        assert_eq!(
            AgentError::ContainerExists("c".into()).code(),
            Code::ALREADY_EXISTS
        );
        assert_eq!(AgentError::SandboxExists.code(), Code::FAILED_PRECONDITION);
        let failure = InitFailure::new(FailureKind::PermissionDenied, "permission denied: /x");
        assert_eq!(
            AgentError::Init {
                id: "c".into(),
                failure
            }
            .code(),
            Code::PERMISSION_DENIED
        );
    }

    #[test]
    fn status_carries_the_message() {
        let err: ttrpc::Error = AgentError::NoSuchContainer("web".into()).into();
        match err {
            ttrpc::Error::RpcStatus(status) => {
                assert_eq!(status.code(), Code::NOT_FOUND);
                assert!(status.message().contains("\"web\""));
            }
            other => panic!("unexpected error {other:?}"),
        }
    }
}
