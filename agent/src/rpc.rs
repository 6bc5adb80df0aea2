//! The ttrpc `Agent` service: request decoding, logging and error mapping only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxResources;
use runv_agent_protocol::agent::{
    CheckRequest, CheckResponse, ContainerRequest, CreateContainerRequest, CreateSandboxRequest,
    Empty, ExecProcessRequest, ExecProcessResponse, ListProcessesResponse, OomEvent, ProcessInfo,
    ProcessRequest, ReadStreamRequest, ReadStreamResponse, RemoveContainerRequest,
    ResizeTerminalRequest, SignalProcessRequest, StartContainerResponse, StatsContainerResponse,
    UpdateContainerRequest, WaitProcessResponse, WriteStdinRequest, WriteStdinResponse,
};
use runv_agent_protocol::agent_ttrpc;
use runv_agent_protocol::MAX_STDIO_CHUNK;
use ttrpc::r#async::TtrpcContext;

use crate::container::stdio::Output;
use crate::error::AgentError;
use crate::sandbox::{BlockRequest, Sandbox};

/// How often GetOomEvent looks at the containers' OOM kill counts.
const OOM_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The service registered with the ttrpc server.
pub struct AgentService {
    sandbox: Arc<Sandbox>,
}

impl AgentService {
    pub fn new(sandbox: Arc<Sandbox>) -> Self {
        Self { sandbox }
    }
}

/// Logs a failed request and turns the error into a ttrpc status.
fn reply<T>(method: &str, id: &str, result: Result<T, AgentError>) -> ttrpc::Result<T> {
    result.map_err(|err| {
        tracing::warn!(method, container = id, code = ?err.code(), "{err}");
        err.into()
    })
}

fn invalid(field: &'static str, reason: impl Into<String>) -> AgentError {
    AgentError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

fn read_len(max_len: u32) -> usize {
    let len = if max_len == 0 {
        MAX_STDIO_CHUNK
    } else {
        max_len.min(MAX_STDIO_CHUNK)
    };
    usize::try_from(len).unwrap_or(64 * 1024)
}

fn first_field(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

impl AgentService {
    async fn read(&self, req: &ReadStreamRequest, which: Output) -> Result<Vec<u8>, AgentError> {
        let process = self.sandbox.process(&req.container_id, &req.exec_id)?;
        process
            .stdio()
            .read(which, read_len(req.max_len))
            .await
            .map_err(|source| AgentError::Stdio {
                id: req.container_id.clone(),
                source,
            })
    }
}

#[async_trait]
impl agent_ttrpc::Agent for AgentService {
    async fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
        Ok(CheckResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: release.trim().to_string(),
            uptime_seconds: first_field(&uptime).unwrap_or(0.0),
            ..Default::default()
        })
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(sandbox = %req.sandbox_id, hostname = %req.hostname, "CreateSandbox");
        let shared_fs = req
            .shared_fs
            .as_ref()
            .filter(|fs| !fs.tag.is_empty() || !fs.mount_point.is_empty())
            .map(|fs| (fs.tag.clone(), PathBuf::from(&fs.mount_point)));
        if req.host_time_unix_nanos != 0 {
            self.sandbox.set_clock(req.host_time_unix_nanos);
        }
        let network = match crate::network::plan(req.network.get_or_default()) {
            Ok(network) => network,
            Err(e) => return reply("CreateSandbox", "", Err(e.into())),
        };
        let result = self
            .sandbox
            .create_sandbox(&req.hostname, shared_fs, network)
            .await;
        reply("CreateSandbox", "", result.map(|()| Empty::new()))
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(container = %req.container_id, "CreateContainer");
        let (path, readonly) = req
            .rootfs
            .as_ref()
            .map(|r| (r.path.as_str(), r.readonly))
            .unwrap_or(("", false));
        let block = req
            .rootfs
            .as_ref()
            .filter(|r| !r.block_serial.is_empty() || !r.block_fs_type.is_empty())
            .map(|r| BlockRequest {
                serial: r.block_serial.clone(),
                fs_type: r.block_fs_type.clone(),
            });
        let result = self
            .sandbox
            .create_container(
                req.container_id.clone(),
                &req.oci_spec_json,
                path,
                readonly,
                block,
            )
            .await;
        reply(
            "CreateContainer",
            &req.container_id,
            result.map(|()| Empty::new()),
        )
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        let result = async {
            let container = self.sandbox.container(&req.container_id)?;
            let pid = container.start().await?;
            tracing::info!(container = %req.container_id, pid, "container started");
            Ok(StartContainerResponse {
                pid: u32::try_from(pid).unwrap_or_default(),
                ..Default::default()
            })
        }
        .await;
        reply("StartContainer", &req.container_id, result)
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let grace = Duration::from_millis(u64::from(req.timeout_ms));
        let result = self
            .sandbox
            .remove_container(&req.container_id, grace)
            .await;
        reply(
            "RemoveContainer",
            &req.container_id,
            result.map(|()| Empty::new()),
        )
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let result = async {
            let process = self.sandbox.process(&req.container_id, &req.exec_id)?;
            let status = process.wait().await;
            Ok(WaitProcessResponse {
                exit_status: status.code,
                signal: status.signal,
                ..Default::default()
            })
        }
        .await;
        reply("WaitProcess", &req.container_id, result)
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let result = async {
            let number =
                i32::try_from(req.signal).map_err(|_| invalid("signal", "out of range"))?;
            let process = self.sandbox.process(&req.container_id, &req.exec_id)?;
            if number == 0 {
                // As with kill(2), signal 0 only checks that the process is there.
                return process.probe();
            }
            let signal = Signal::try_from(number)
                .map_err(|_| invalid("signal", format!("{number} is not a signal")))?;
            process.signal(signal, req.all)
        }
        .await;
        reply(
            "SignalProcess",
            &req.container_id,
            result.map(|()| Empty::new()),
        )
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: WriteStdinRequest,
    ) -> ttrpc::Result<WriteStdinResponse> {
        let result = async {
            let process = self.sandbox.process(&req.container_id, &req.exec_id)?;
            let written = process
                .stdio()
                .write_stdin(&req.data)
                .await
                .map_err(|source| AgentError::Stdio {
                    id: req.container_id.clone(),
                    source,
                })?;
            Ok(WriteStdinResponse {
                written: u32::try_from(written).unwrap_or(u32::MAX),
                ..Default::default()
            })
        }
        .await;
        reply("WriteStdin", &req.container_id, result)
    }

    async fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let process = self.sandbox.process(&req.container_id, &req.exec_id)?;
            process
                .stdio()
                .close_stdin()
                .await
                .map_err(|source| AgentError::Stdio {
                    id: req.container_id.clone(),
                    source,
                })
        }
        .await;
        reply(
            "CloseStdin",
            &req.container_id,
            result.map(|()| Empty::new()),
        )
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let result = self.read(&req, Output::Stdout).await;
        reply(
            "ReadStdout",
            &req.container_id,
            result.map(|data| ReadStreamResponse {
                data,
                ..Default::default()
            }),
        )
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let result = self.read(&req, Output::Stderr).await;
        reply(
            "ReadStderr",
            &req.container_id,
            result.map(|data| ReadStreamResponse {
                data,
                ..Default::default()
            }),
        )
    }

    async fn resize_terminal(
        &self,
        _ctx: &TtrpcContext,
        req: ResizeTerminalRequest,
    ) -> ttrpc::Result<Empty> {
        let result = (|| {
            let rows = u16::try_from(req.rows).map_err(|_| invalid("rows", "out of range"))?;
            let cols = u16::try_from(req.cols).map_err(|_| invalid("cols", "out of range"))?;
            let process = self.sandbox.process(&req.container_id, &req.exec_id)?;
            process
                .stdio()
                .resize(rows, cols)
                .map_err(|source| AgentError::Stdio {
                    id: req.container_id.clone(),
                    source,
                })
        })();
        reply(
            "ResizeTerminal",
            &req.container_id,
            result.map(|()| Empty::new()),
        )
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let result = self
            .sandbox
            .exec(&req.container_id, &req.exec_id, &req.process_json)
            .await
            .map(|pid| {
                tracing::info!(container = %req.container_id, exec = %req.exec_id, pid = pid.as_raw(), "exec process started");
                ExecProcessResponse {
                    pid: u32::try_from(pid.as_raw()).unwrap_or_default(),
                    ..Default::default()
                }
            });
        reply("ExecProcess", &req.container_id, result)
    }

    async fn remove_process(
        &self,
        _ctx: &TtrpcContext,
        req: ProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let result = self
            .sandbox
            .container(&req.container_id)
            .and_then(|c| c.remove_exec(&req.exec_id));
        reply(
            "RemoveProcess",
            &req.container_id,
            result.map(|()| Empty::new()),
        )
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let result = self
            .sandbox
            .container(&req.container_id)
            .and_then(|c| c.processes())
            .map(|list| ListProcessesResponse {
                processes: list
                    .into_iter()
                    .map(|(pid, exec_id)| ProcessInfo {
                        pid: u32::try_from(pid.as_raw()).unwrap_or_default(),
                        exec_id,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        reply("ListProcesses", &req.container_id, result)
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let result = self.sandbox.container(&req.container_id).map(|c| c.stats());
        let result = match result {
            Ok(mut stats) => {
                // The pod's interfaces: every container shares the guest's network namespace.
                match tokio::task::spawn_blocking(crate::network::stats).await {
                    Ok(Ok(network)) => stats.network = network,
                    Ok(Err(err)) => tracing::warn!(%err, "network stats"),
                    Err(err) => tracing::warn!(%err, "network stats task"),
                }
                Ok(stats)
            }
            Err(e) => Err(e),
        };
        reply("StatsContainer", &req.container_id, result)
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let result = async {
            let container = self.sandbox.container(&req.container_id)?;
            container.freeze(true).await
        }
        .await;
        reply(
            "PauseContainer",
            &req.container_id,
            result.map(|()| Empty::new()),
        )
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let result = async {
            let container = self.sandbox.container(&req.container_id)?;
            container.freeze(false).await
        }
        .await;
        reply(
            "ResumeContainer",
            &req.container_id,
            result.map(|()| Empty::new()),
        )
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let result = (|| {
            let resources: LinuxResources = serde_json::from_str(&req.resources_json)
                .map_err(|e| invalid("resources_json", e.to_string()))?;
            let container = self.sandbox.container(&req.container_id)?;
            container.update(&resources)
        })();
        reply(
            "UpdateContainer",
            &req.container_id,
            result.map(|()| Empty::new()),
        )
    }

    async fn get_oom_event(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<OomEvent> {
        let container_id = self.sandbox.next_oom(OOM_CHECK_INTERVAL).await;
        tracing::warn!(container = %container_id, "OOM kill in the container");
        Ok(OomEvent {
            container_id,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Empty> {
        self.sandbox.shutdown().await;
        crate::server::power_off_after_reply(Arc::clone(&self.sandbox));
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_length_is_capped() {
        let max = usize::try_from(MAX_STDIO_CHUNK).unwrap();
        assert_eq!(read_len(0), max);
        assert_eq!(read_len(10), 10);
        assert_eq!(read_len(u32::MAX), max);
    }

    #[test]
    fn uptime_parses() {
        assert_eq!(first_field("12.50 3.00\n"), Some(12.5));
        assert_eq!(first_field(""), None);
    }
}
