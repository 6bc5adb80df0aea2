//! The shim's errors and the ttrpc status code each one reaches containerd with: containerd
//! acts on the code (a NotFound on kill of an exited task is fine, AlreadyExists on create is
//! not), so every failure carries the right one, never a blanket string.

use containerd_shim::protos::ttrpc::{self, Code};
use runv_runtime::rootfs::RootfsError;
use runv_runtime::sandbox::SandboxError;
use runv_runtime::state::StateError;

/// Errors of a Task service request.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No such container or process.
    #[error("{0} not found")]
    NotFound(String),
    /// The id is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request does not fit the task's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something the shim itself failed at.
    #[error("{0}")]
    Internal(String),
    /// Not in this version of the shim.
    #[error("{0} is not implemented by runv")]
    Unimplemented(&'static str),
    /// The bundle's spec could not be read or used.
    #[error("Read the bundle's config.json {path}")]
    Bundle {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox or its agent failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl ShimError {
    /// The ttrpc status code containerd gets.
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Internal(_) => Code::INTERNAL,
            ShimError::Bundle { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Code::NOT_FOUND
            }
            ShimError::Bundle { .. } => Code::INVALID_ARGUMENT,
            ShimError::Sandbox(e) => sandbox_code(e),
        }
    }
}

fn sandbox_code(e: &SandboxError) -> Code {
    match e {
        SandboxError::ContainerExists(_) => Code::ALREADY_EXISTS,
        SandboxError::ContainerNotFound(_) => Code::NOT_FOUND,
        SandboxError::Down => Code::FAILED_PRECONDITION,
        SandboxError::Config(_) => Code::INVALID_ARGUMENT,
        SandboxError::State(StateError::InvalidId(_)) => Code::INVALID_ARGUMENT,
        SandboxError::State(StateError::Exists(_)) => Code::ALREADY_EXISTS,
        SandboxError::Volume(e) if e.is_invalid_argument() => Code::INVALID_ARGUMENT,
        SandboxError::Rootfs(
            RootfsError::Missing(_)
            | RootfsError::NotADirectory(_)
            | RootfsError::Empty(_)
            | RootfsError::NoMounts,
        ) => Code::INVALID_ARGUMENT,
        // The agent's own verdict (NotFound for a missing executable, InvalidArgument for
        // a bad spec, ...) passes through unchanged.
        SandboxError::Agent(agent) => agent.code().unwrap_or(Code::UNAVAILABLE),
        SandboxError::VmDied { .. } | SandboxError::BootTimeout { .. } => Code::UNAVAILABLE,
        _ => Code::INTERNAL,
    }
}

/// The whole chain of causes, one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_code(e: ShimError) -> Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code.enum_value_or_default(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn each_error_has_its_code() {
        assert_eq!(
            status_code(ShimError::NotFound("c".into())),
            Code::NOT_FOUND
        );
        assert_eq!(
            status_code(ShimError::AlreadyExists("c".into())),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            status_code(ShimError::FailedPrecondition("running".into())),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            status_code(ShimError::InvalidArgument("exec".into())),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            status_code(ShimError::Unimplemented("Pause")),
            Code::UNIMPLEMENTED
        );
        assert_eq!(
            status_code(SandboxError::ContainerExists("c".into()).into()),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            status_code(SandboxError::ContainerNotFound("c".into()).into()),
            Code::NOT_FOUND
        );
        assert_eq!(
            status_code(SandboxError::Down.into()),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            status_code(SandboxError::Rootfs(RootfsError::NoMounts).into()),
            Code::INVALID_ARGUMENT
        );
        use runv_runtime::volumes::VolumeError;
        let refused = VolumeError::Refused {
            index: 3,
            destination: "/data".into(),
            reason: "source /srv does not exist".into(),
        };
        assert_eq!(
            status_code(SandboxError::Volume(refused).into()),
            Code::INVALID_ARGUMENT
        );
        let host = VolumeError::Io {
            index: 3,
            destination: "/data".into(),
            op: "Mount the volume at",
            path: "/run/runv/p/shared/c/volumes/3".into(),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(
            status_code(SandboxError::Volume(host).into()),
            Code::INTERNAL
        );
    }

    #[test]
    fn agent_codes_pass_through() {
        let e = SandboxError::Agent(runv_runtime::agent::AgentError::Status {
            method: "StartContainer",
            code: Code::NOT_FOUND,
            message: "executable file not found".into(),
        });
        let status = match ttrpc::Error::from(ShimError::from(e)) {
            ttrpc::Error::RpcStatus(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(status.code.enum_value_or_default(), Code::NOT_FOUND);
        assert!(status.message.contains("executable file not found"));
    }
}
