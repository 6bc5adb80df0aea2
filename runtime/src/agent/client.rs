//! A typed client for runv-agent, with a timeout on every request that is not meant to block.

use std::path::Path;
use std::time::{Duration, Instant};

use runv_agent_protocol::agent as pb;
use runv_agent_protocol::agent_ttrpc;
use runv_agent_protocol::{AGENT_VSOCK_PORT, MAX_STDIO_CHUNK};

use super::hvsock::{connect_hybrid_vsock, HvsockError};
use super::ready::ReadyListener;

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error status.
    #[error("{method}: {message}")]
    Status {
        /// The RPC.
        method: &'static str,
        /// The ttrpc status code.
        code: ttrpc::Code,
        /// The agent's message.
        message: String,
    },
    /// The request did not complete in time.
    #[error("{method}: no answer from the guest agent within {timeout:?}")]
    Timeout {
        /// The RPC.
        method: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// The connection to the agent failed or broke.
    #[error("{method}: connection to the guest agent failed: {reason}")]
    Transport {
        /// The RPC.
        method: &'static str,
        /// What happened.
        reason: String,
    },
    /// The agent never came up.
    #[error("The guest agent did not answer within {timeout:?} (last attempt: {last})")]
    NotReady {
        /// How long runv waited.
        timeout: Duration,
        /// The last connection error.
        last: String,
    },
}

impl AgentError {
    /// The ttrpc status code, if the agent answered.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            AgentError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn from_ttrpc(method: &'static str, timeout: Option<Duration>, e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(status) => {
                let code = status.code.enum_value_or_default();
                match (code, timeout) {
                    (ttrpc::Code::DEADLINE_EXCEEDED, Some(timeout)) => {
                        AgentError::Timeout { method, timeout }
                    }
                    _ => AgentError::Status {
                        method,
                        code,
                        message: status.message,
                    },
                }
            }
            other => AgentError::Transport {
                method,
                reason: other.to_string(),
            },
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Exit code, or 128 + N when killed by signal N.
    pub status: i32,
    /// The signal that killed it, 0 when it exited.
    pub signal: i32,
}

/// A connected agent.
#[derive(Clone)]
pub struct AgentClient {
    inner: agent_ttrpc::AgentClient,
    timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AgentClient {
    /// Connects through the hybrid-vsock socket `uds` once, and checks the agent answers.
    pub async fn connect(uds: &Path, request_timeout: Duration) -> Result<Self, AgentError> {
        let stream = connect_hybrid_vsock(uds, AGENT_VSOCK_PORT, request_timeout)
            .await
            .map_err(|e| AgentError::Transport {
                method: "connect",
                reason: error_chain(&e),
            })?;
        Ok(Self::over(stream, request_timeout))
    }

    /// A client on a stream that already reaches the agent.
    fn over(stream: tokio::net::UnixStream, request_timeout: Duration) -> Self {
        let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::from(stream));
        Self {
            inner: agent_ttrpc::AgentClient::new(client),
            timeout: request_timeout,
        }
    }

    /// Waits for the agent's readiness notification on `ready`, then connects through the
    /// hybrid-vsock socket `uds` and checks the agent answers. `alive` is asked while
    /// waiting and ends the wait early with its error (the VM died).
    pub async fn wait_ready<E>(
        uds: &Path,
        ready: &ReadyListener,
        boot_timeout: Duration,
        request_timeout: Duration,
        mut alive: impl FnMut() -> Result<(), E>,
    ) -> Result<Result<(Self, pb::CheckResponse), AgentError>, E> {
        let deadline = Instant::now() + boot_timeout;
        let not_ready = |last: String| AgentError::NotReady {
            timeout: boot_timeout,
            last,
        };
        // One accept future lives across the liveness ticks: cancelling it could drop a
        // connection whose line is still to be read.
        let accept = ready.accept_ready();
        tokio::pin!(accept);
        loop {
            alive()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(Err(not_ready(
                    "no readiness notification from the guest".to_string(),
                )));
            }
            let tick = (deadline - now).min(Duration::from_millis(20));
            tokio::select! {
                result = &mut accept => match result {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "readiness connection");
                        accept.set(ready.accept_ready());
                    }
                },
                () = tokio::time::sleep(tick) => {}
            }
        }
        let mut last = String::new();
        while Instant::now() < deadline {
            alive()?;
            match connect_hybrid_vsock(uds, AGENT_VSOCK_PORT, request_timeout).await {
                Ok(stream) => {
                    let agent = Self::over(stream, request_timeout);
                    match agent.check().await {
                        Ok(check) => return Ok(Ok((agent, check))),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e @ HvsockError::Connect { .. }) | Err(e @ HvsockError::Handshake { .. }) => {
                    last = error_chain(&e);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Err(not_ready(last)))
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX))
    }

    fn no_timeout() -> ttrpc::context::Context {
        ttrpc::context::with_timeout(0)
    }

    /// Health and versions.
    pub async fn check(&self) -> Result<pb::CheckResponse, AgentError> {
        self.inner
            .check(self.ctx(), &pb::CheckRequest::new())
            .await
            .map_err(|e| AgentError::from_ttrpc("Check", Some(self.timeout), e))
    }

    /// Guest-wide setup.
    pub async fn create_sandbox(&self, req: pb::CreateSandboxRequest) -> Result<(), AgentError> {
        self.inner
            .create_sandbox(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("CreateSandbox", Some(self.timeout), e))
    }

    /// Creates a container; its process waits for [`Self::start_container`].
    pub async fn create_container(
        &self,
        req: pb::CreateContainerRequest,
    ) -> Result<(), AgentError> {
        self.inner
            .create_container(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("CreateContainer", Some(self.timeout), e))
    }

    /// Starts a created container; returns its init's pid in the guest.
    pub async fn start_container(&self, container_id: &str) -> Result<u32, AgentError> {
        self.inner
            .start_container(self.ctx(), &container_request(container_id))
            .await
            .map(|r| r.pid)
            .map_err(|e| AgentError::from_ttrpc("StartContainer", Some(self.timeout), e))
    }

    /// Kills what is left of a container and removes it.
    pub async fn remove_container(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> Result<(), AgentError> {
        let req = pb::RemoveContainerRequest {
            container_id: container_id.to_string(),
            timeout_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        self.inner
            .remove_container(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("RemoveContainer", Some(self.timeout), e))
    }

    /// Waits, without a time limit, until the process exits.
    pub async fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<ProcessExit, AgentError> {
        self.inner
            .wait_process(Self::no_timeout(), &process_request(container_id, exec_id))
            .await
            .map(|r| ProcessExit {
                status: r.exit_status,
                signal: r.signal,
            })
            .map_err(|e| AgentError::from_ttrpc("WaitProcess", None, e))
    }

    /// Sends `signal` to the process, or with `all` to every process of the container.
    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), AgentError> {
        let req = pb::SignalProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            signal: u32::try_from(signal).unwrap_or_default(),
            all,
            ..Default::default()
        };
        self.inner
            .signal_process(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("SignalProcess", Some(self.timeout), e))
    }

    /// Writes all of `data` to the process's stdin (blocks while the pipe is full).
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: Vec<u8>,
    ) -> Result<(), AgentError> {
        let len = data.len();
        let req = pb::WriteStdinRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            data,
            ..Default::default()
        };
        let written = self
            .inner
            .write_stdin(Self::no_timeout(), &req)
            .await
            .map_err(|e| AgentError::from_ttrpc("WriteStdin", None, e))?
            .written;
        if usize::try_from(written).unwrap_or_default() != len {
            return Err(AgentError::Transport {
                method: "WriteStdin",
                reason: format!("the agent wrote {written} of {len} bytes"),
            });
        }
        Ok(())
    }

    /// Ends the process's stdin.
    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), AgentError> {
        self.inner
            .close_stdin(self.ctx(), &process_request(container_id, exec_id))
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("CloseStdin", Some(self.timeout), e))
    }

    /// Next chunk of stdout (`stderr == false`) or stderr; empty at end of stream.
    pub async fn read_output(
        &self,
        container_id: &str,
        exec_id: &str,
        stderr: bool,
    ) -> Result<Vec<u8>, AgentError> {
        let req = pb::ReadStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            max_len: MAX_STDIO_CHUNK,
            ..Default::default()
        };
        let result = if stderr {
            self.inner.read_stderr(Self::no_timeout(), &req).await
        } else {
            self.inner.read_stdout(Self::no_timeout(), &req).await
        };
        let method = if stderr { "ReadStderr" } else { "ReadStdout" };
        result
            .map(|r| r.data)
            .map_err(|e| AgentError::from_ttrpc(method, None, e))
    }

    /// Sets the terminal size of a process that has a tty.
    pub async fn resize_terminal(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u16,
        cols: u16,
    ) -> Result<(), AgentError> {
        let req = pb::ResizeTerminalRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            rows: rows.into(),
            cols: cols.into(),
            ..Default::default()
        };
        self.inner
            .resize_terminal(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("ResizeTerminal", Some(self.timeout), e))
    }

    /// Starts a process described by `process_json` (an OCI process object) in a running
    /// container; returns its pid in the guest.
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: String,
    ) -> Result<u32, AgentError> {
        let req = pb::ExecProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            process_json,
            ..Default::default()
        };
        self.inner
            .exec_process(self.ctx(), &req)
            .await
            .map(|r| r.pid)
            .map_err(|e| AgentError::from_ttrpc("ExecProcess", Some(self.timeout), e))
    }

    /// Forgets an exited exec process.
    pub async fn remove_process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<(), AgentError> {
        self.inner
            .remove_process(self.ctx(), &process_request(container_id, exec_id))
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("RemoveProcess", Some(self.timeout), e))
    }

    /// Every process of the container.
    pub async fn list_processes(
        &self,
        container_id: &str,
    ) -> Result<Vec<pb::ProcessInfo>, AgentError> {
        self.inner
            .list_processes(self.ctx(), &container_request(container_id))
            .await
            .map(|r| r.processes)
            .map_err(|e| AgentError::from_ttrpc("ListProcesses", Some(self.timeout), e))
    }

    /// Resource use of the container.
    pub async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<pb::StatsContainerResponse, AgentError> {
        self.inner
            .stats_container(self.ctx(), &container_request(container_id))
            .await
            .map_err(|e| AgentError::from_ttrpc("StatsContainer", Some(self.timeout), e))
    }

    /// Freezes every process of the container.
    pub async fn pause_container(&self, container_id: &str) -> Result<(), AgentError> {
        self.inner
            .pause_container(self.ctx(), &container_request(container_id))
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("PauseContainer", Some(self.timeout), e))
    }

    /// Thaws a paused container.
    pub async fn resume_container(&self, container_id: &str) -> Result<(), AgentError> {
        self.inner
            .resume_container(self.ctx(), &container_request(container_id))
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("ResumeContainer", Some(self.timeout), e))
    }

    /// Applies `resources_json` (OCI linux.resources) to the container's cgroup.
    pub async fn update_container(
        &self,
        container_id: &str,
        resources_json: String,
    ) -> Result<(), AgentError> {
        let req = pb::UpdateContainerRequest {
            container_id: container_id.to_string(),
            resources_json,
            ..Default::default()
        };
        self.inner
            .update_container(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("UpdateContainer", Some(self.timeout), e))
    }

    /// Waits, without a time limit, for the next OOM kill; returns the container's id.
    pub async fn get_oom_event(&self) -> Result<String, AgentError> {
        self.inner
            .get_oom_event(Self::no_timeout(), &pb::Empty::new())
            .await
            .map(|r| r.container_id)
            .map_err(|e| AgentError::from_ttrpc("GetOomEvent", None, e))
    }

    /// Asks the guest to stop its containers and power off.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        self.inner
            .shutdown(self.ctx(), &pb::Empty::new())
            .await
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("Shutdown", Some(self.timeout), e))
    }
}

fn container_request(container_id: &str) -> pb::ContainerRequest {
    pb::ContainerRequest {
        container_id: container_id.to_string(),
        ..Default::default()
    }
}

fn process_request(container_id: &str, exec_id: &str) -> pb::ProcessRequest {
    pb::ProcessRequest {
        container_id: container_id.to_string(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
