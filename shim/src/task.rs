//! The Task service containerd calls: one pod sandbox VM, its containers, their stdio and
//! exits, and the events that report them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, KillRequest, ResizePtyRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, Status as TaskStatus, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::events::task::{TaskCreate, TaskIO};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext};
use runv_runtime::config::Config;
use runv_runtime::rootfs::{RootMount, RootfsSource};
use runv_runtime::sandbox::{Sandbox, SandboxOptions};
use tokio::sync::Mutex;

use crate::container::{Container, Exit, Status};
use crate::errors::ShimError;
use crate::events::{timestamp, Events};
use crate::io::{self, StdioPaths};
use crate::spec;

/// How long output may keep coming after the process exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

type TtrpcResult<T> = ttrpc::Result<T>;

/// The sandbox and its containers.
#[derive(Default)]
struct Pod {
    sandbox: Option<Sandbox>,
    containers: HashMap<String, Container>,
}

struct Inner {
    sandbox_id: String,
    events: Events,
    exit: Arc<ExitSignal>,
    pod: Mutex<Pod>,
}

/// The Task service of one shim.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

impl TaskService {
    /// The service for the pod `sandbox_id`; `exit` ends the shim.
    pub fn new(sandbox_id: String, events: Events, exit: Arc<ExitSignal>) -> Self {
        Self {
            inner: Arc::new(Inner {
                sandbox_id,
                events,
                exit,
                pod: Mutex::new(Pod::default()),
            }),
        }
    }
}

/// The pid containerd knows every task of this shim by: the shim's own, the host process
/// that holds the VM (the container's processes live in the guest).
fn task_pid() -> u32 {
    std::process::id()
}

fn no_exec(exec_id: &str) -> Result<(), ShimError> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(ShimError::NotFound(format!("exec {exec_id}")))
    }
}

fn rootfs_source(req: &CreateTaskRequest) -> RootfsSource {
    if req.rootfs.is_empty() {
        // The bundle's root is ready-made (containerd mounted it itself).
        return RootfsSource::Bind(std::path::Path::new(&req.bundle).join("rootfs"));
    }
    RootfsSource::Mounts(
        req.rootfs
            .iter()
            .map(|m| RootMount {
                fs_type: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect(),
    )
}

impl Pod {
    fn container(&mut self, id: &str) -> Result<&mut Container, ShimError> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    fn sandbox(&mut self) -> Result<&mut Sandbox, ShimError> {
        self.sandbox
            .as_mut()
            .ok_or_else(|| ShimError::FailedPrecondition("the pod's VM is not running".into()))
    }

    /// Stops the VM once no container is left in it.
    async fn shutdown_if_empty(&mut self) {
        if self.containers.is_empty() {
            if let Some(sandbox) = self.sandbox.take() {
                sandbox.shutdown(true).await;
            }
        }
    }
}

impl TaskService {
    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse, ShimError> {
        let mut pod = self.inner.pod.lock().await;
        if pod.containers.contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!("container {}", req.id)));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("Restore from a checkpoint"));
        }
        let oci = spec::for_guest(spec::load(std::path::Path::new(&req.bundle))?);
        let rootfs = rootfs_source(&req);
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        if pod.sandbox.is_none() {
            let (config, _) =
                Config::load().map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
            let opts = SandboxOptions {
                id: Some(self.inner.sandbox_id.clone()),
                ..Default::default()
            };
            pod.sandbox = Some(Sandbox::create(&config, opts).await?);
        }
        let created = self
            .create_in_sandbox(&mut pod, &req.id, &rootfs, &oci, &stdio)
            .await;
        let outputs = match created {
            Ok(outputs) => outputs,
            Err(e) => {
                pod.shutdown_if_empty().await;
                return Err(e);
            }
        };
        let pid = task_pid();
        pod.containers.insert(
            req.id.clone(),
            Container::new(req.id.clone(), req.bundle.clone(), stdio, pid, outputs),
        );
        drop(pod);
        self.inner
            .events
            .created(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            })
            .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn create_in_sandbox(
        &self,
        pod: &mut Pod,
        id: &str,
        rootfs: &RootfsSource,
        oci: &oci_spec::runtime::Spec,
        stdio: &StdioPaths,
    ) -> Result<io::Outputs, ShimError> {
        let sandbox = pod.sandbox()?;
        sandbox.create_container(id, rootfs, oci).await?;
        let agent = sandbox.agent()?.clone();
        // Output readers are in place before the process starts.
        match io::attach_outputs(&agent, id, stdio) {
            Ok(outputs) => Ok(outputs),
            Err(e) => {
                if let Err(e) = sandbox.remove_container(id).await {
                    tracing::warn!(container = id, error = %e, "remove after failed create");
                }
                Err(e)
            }
        }
    }

    async fn do_start(&self, req: StartRequest) -> Result<StartResponse, ShimError> {
        no_exec(&req.exec_id)?;
        let mut pod = self.inner.pod.lock().await;
        let status = pod.container(&req.id)?.status;
        if status != Status::Created {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not in the created state",
                req.id
            )));
        }
        let sandbox = pod.sandbox()?;
        sandbox.start_container(&req.id).await?;
        let agent = sandbox.agent()?.clone();
        let container = pod.container(&req.id)?;
        container.status = Status::Running;
        container.input = io::attach_input(&agent, &req.id, &container.stdio)?;
        if container.input.is_none() {
            if let Err(e) = agent.close_stdin(&req.id, "").await {
                tracing::debug!(container = %req.id, error = %e, "close stdin");
            }
        }
        let pid = container.pid;
        let outputs = container.outputs.take();
        // TaskStart goes out before the watcher can publish TaskExit.
        self.inner.events.started(&req.id, pid).await;
        let service = self.clone();
        let id = req.id.clone();
        tokio::spawn(async move { service.watch_exit(agent, id, outputs).await });
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Waits for the container's process, lets its output drain, records the exit and
    /// reports it.
    async fn watch_exit(
        &self,
        agent: runv_runtime::agent::AgentClient,
        id: String,
        outputs: Option<io::Outputs>,
    ) {
        let status = match agent.wait_process(&id, "").await {
            Ok(exit) => u32::try_from(exit.status).unwrap_or(255),
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "lost the container's process");
                255
            }
        };
        if let Some(outputs) = outputs {
            if tokio::time::timeout(DRAIN_TIMEOUT, outputs.finished())
                .await
                .is_err()
            {
                tracing::warn!(container = %id, "output still open after exit; dropped the rest");
            }
        }
        let exit = Exit {
            status,
            at: SystemTime::now(),
        };
        let mut pod = self.inner.pod.lock().await;
        if let Some(sandbox) = pod.sandbox.as_mut() {
            let _ = sandbox.record_exit(&id, i32::try_from(status).unwrap_or(255));
        }
        let Some(container) = pod.containers.get_mut(&id) else {
            return;
        };
        let pid = container.pid;
        container.set_exited(exit);
        self.inner.events.exited(&id, pid, status, exit.at).await;
    }

    async fn do_state(&self, req: StateRequest) -> Result<StateResponse, ShimError> {
        no_exec(&req.exec_id)?;
        let mut pod = self.inner.pod.lock().await;
        let c = pod.container(&req.id)?;
        let exit = c.exit();
        Ok(StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.clone(),
            pid: c.pid,
            status: match c.status {
                Status::Created => TaskStatus::CREATED,
                Status::Running => TaskStatus::RUNNING,
                Status::Stopped => TaskStatus::STOPPED,
            }
            .into(),
            stdin: c.stdio.stdin.clone(),
            stdout: c.stdio.stdout.clone(),
            stderr: c.stdio.stderr.clone(),
            terminal: c.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or_default(),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    async fn do_wait(&self, req: WaitRequest) -> Result<WaitResponse, ShimError> {
        no_exec(&req.exec_id)?;
        let mut rx = self.inner.pod.lock().await.container(&req.id)?.exit_watch();
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .ok()
            .and_then(|e| *e)
            .ok_or_else(|| ShimError::NotFound(format!("container {}", req.id)))?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn do_kill(&self, req: KillRequest) -> Result<(), ShimError> {
        no_exec(&req.exec_id)?;
        let mut pod = self.inner.pod.lock().await;
        if pod.container(&req.id)?.status == Status::Stopped {
            return Err(ShimError::NotFound(format!(
                "process of container {} already finished",
                req.id
            )));
        }
        let agent = pod.sandbox()?.agent()?.clone();
        drop(pod);
        let signal = i32::try_from(req.signal)
            .map_err(|_| ShimError::InvalidArgument(format!("signal {}", req.signal)))?;
        agent
            .signal_process(&req.id, "", signal, req.all)
            .await
            .map_err(|e| ShimError::Sandbox(e.into()))
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse, ShimError> {
        no_exec(&req.exec_id)?;
        let mut pod = self.inner.pod.lock().await;
        let c = pod.container(&req.id)?;
        if c.status == Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is running; kill it first",
                req.id
            )));
        }
        let exit = c.exit().unwrap_or(Exit {
            status: 0,
            at: SystemTime::now(),
        });
        let pid = c.pid;
        if let Some(sandbox) = pod.sandbox.as_mut() {
            if let Err(e) = sandbox.remove_container(&req.id).await {
                tracing::warn!(container = %req.id, error = %e, "remove container");
            }
        }
        if let Some(mut c) = pod.containers.remove(&req.id) {
            // A never-started container's waiters learn it is gone.
            c.set_exited(exit);
        }
        pod.shutdown_if_empty().await;
        drop(pod);
        self.inner
            .events
            .deleted(&req.id, pid, exit.status, exit.at)
            .await;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn do_close_io(&self, req: CloseIORequest) -> Result<(), ShimError> {
        no_exec(&req.exec_id)?;
        let mut pod = self.inner.pod.lock().await;
        if req.stdin {
            if let Some(input) = pod.container(&req.id)?.input.as_mut() {
                input.close();
            }
        }
        Ok(())
    }

    async fn do_resize_pty(&self, req: ResizePtyRequest) -> Result<(), ShimError> {
        no_exec(&req.exec_id)?;
        let mut pod = self.inner.pod.lock().await;
        pod.container(&req.id)?;
        let agent = pod.sandbox()?.agent()?.clone();
        drop(pod);
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        agent
            .resize_terminal(&req.id, "", rows, cols)
            .await
            .map_err(|e| ShimError::Sandbox(e.into()))
    }

    async fn do_shutdown(&self) {
        let mut pod = self.inner.pod.lock().await;
        if !pod.containers.is_empty() {
            return;
        }
        pod.shutdown_if_empty().await;
        self.inner.exit.signal();
    }
}

fn unimplemented<T>(what: &'static str) -> TtrpcResult<T> {
    Err(ShimError::Unimplemented(what).into())
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        let result = self.do_create(req).await;
        if let Err(e) = &result {
            tracing::warn!(container = %id, error = %crate::errors::chain(e), "create");
        }
        Ok(result?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        Ok(self.do_start(req).await?)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(self.do_state(req).await?)
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        Ok(self.do_wait(req).await?)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.do_kill(req).await?;
        Ok(Empty::new())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self.do_delete(req).await?)
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.do_close_io(req).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.do_resize_pty(req).await?;
        Ok(Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let mut pod = self.inner.pod.lock().await;
        let pid = pod.container(&req.id)?.pid;
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.do_shutdown().await;
        Ok(Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::protos::api::ExecProcessRequest,
    ) -> TtrpcResult<Empty> {
        unimplemented("Exec")
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::protos::api::PidsRequest,
    ) -> TtrpcResult<containerd_shim::protos::api::PidsResponse> {
        unimplemented("Pids")
    }

    async fn pause(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::protos::api::PauseRequest,
    ) -> TtrpcResult<Empty> {
        unimplemented("Pause")
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::protos::api::ResumeRequest,
    ) -> TtrpcResult<Empty> {
        unimplemented("Resume")
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::protos::api::UpdateTaskRequest,
    ) -> TtrpcResult<Empty> {
        unimplemented("Update")
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::protos::api::StatsRequest,
    ) -> TtrpcResult<containerd_shim::protos::api::StatsResponse> {
        unimplemented("Stats")
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::protos::api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        unimplemented("Checkpoint")
    }
}
