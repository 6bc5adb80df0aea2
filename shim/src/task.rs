//! The Task service containerd calls: one pod sandbox VM, its containers and their exec
//! processes, their stdio and exits, and the events that report them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status as TaskStatus,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{TaskCreate, TaskIO};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim::protos::types::task::ProcessInfo;
use runv_runtime::agent::AgentClient;
use runv_runtime::block_rootfs::BootContainer;
use runv_runtime::config::Config;
use runv_runtime::host_cgroup::HostCgroup;
use runv_runtime::rootfs::{RootMount, RootfsSource};
use runv_runtime::sandbox::{Sandbox, SandboxError, SandboxOptions};
use tokio::sync::Mutex;

use crate::container::{Container, Exit, Process, Status};
use crate::errors::ShimError;
use crate::events::{timestamp, Events};
use crate::io::{self, StdioPaths};
use crate::{metrics, sizing, spec};

/// How long output may keep coming after the process exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The type URL containerd gives ProcessDetails (the exec id of a listed process).
const PROCESS_DETAILS_TYPE_URL: &str = "containerd.runc.v1.ProcessDetails";

type TtrpcResult<T> = ttrpc::Result<T>;

/// The sandbox and its containers.
#[derive(Default)]
struct Pod {
    sandbox: Option<Sandbox>,
    containers: HashMap<String, Container>,
    /// The container that booted the VM: the pod's sandbox (pause) container under CRI,
    /// whose namespaces the pod's other containers join.
    first: Option<String>,
    /// The host cgroup the shim and the VM's processes run in (dropping it leaves and
    /// removes it).
    host_cgroup: Option<HostCgroup>,
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

fn rootfs_source(req: &CreateTaskRequest, spec: &oci_spec::runtime::Spec) -> RootfsSource {
    if req.rootfs.is_empty() {
        // No mounts: the root is ready-made at the spec's root.path (relative to the bundle
        // unless absolute, as `ctr run --config` gives it), by default the bundle's rootfs
        // (which containerd mounted itself).
        let bundle = std::path::Path::new(&req.bundle);
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| "rootfs".into());
        return RootfsSource::Bind(bundle.join(root));
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

/// Joins the sandbox container's `linux.cgroupsPath` on the host, so that the VM's
/// processes are born in it; none when the spec names none.
fn join_host_cgroup(spec: &oci_spec::runtime::Spec) -> Result<Option<HostCgroup>, ShimError> {
    let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.display().to_string())
        .filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    match HostCgroup::join(&path) {
        Ok(cgroup) => Ok(Some(cgroup)),
        Err(e @ runv_runtime::host_cgroup::HostCgroupError::InvalidPath { .. }) => Err(
            ShimError::InvalidArgument(format!("linux.cgroupsPath: {e}")),
        ),
        Err(e) => Err(ShimError::Internal(format!("host cgroup: {e}"))),
    }
}

fn agent_error(e: runv_runtime::agent::AgentError) -> ShimError {
    ShimError::Sandbox(e.into())
}

/// The JSON inside a containerd `Any` that carries an OCI type (a process, resources).
fn any_json(any: Option<&Any>, what: &str) -> Result<String, ShimError> {
    let any = any.ok_or_else(|| ShimError::InvalidArgument(format!("{what} is missing")))?;
    let text = String::from_utf8(any.value.clone())
        .map_err(|_| ShimError::InvalidArgument(format!("{what} is not JSON text")))?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| ShimError::InvalidArgument(format!("{what}: {e}")))?;
    Ok(text)
}

impl Pod {
    fn container(&mut self, id: &str) -> Result<&mut Container, ShimError> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    fn process(&mut self, id: &str, exec_id: &str) -> Result<&mut Process, ShimError> {
        self.container(id)?.process(exec_id)
    }

    fn sandbox(&mut self) -> Result<&mut Sandbox, ShimError> {
        self.sandbox
            .as_mut()
            .ok_or_else(|| ShimError::FailedPrecondition("the pod's VM is not running".into()))
    }

    fn agent(&mut self) -> Result<AgentClient, ShimError> {
        Ok(self.sandbox()?.agent()?.clone())
    }

    /// The pod's first container, as the other containers' specs name it.
    fn pod_init(&self) -> Option<spec::PodInit> {
        let first = self.containers.get(self.first.as_ref()?)?;
        Some(spec::PodInit {
            host_pid: first.pid,
            guest_pid: first.guest_pid,
        })
    }

    /// Stops the VM once no container is left in it, then leaves and removes the host
    /// cgroup.
    async fn shutdown_if_empty(&mut self) {
        if self.containers.is_empty() {
            self.first = None;
            if let Some(sandbox) = self.sandbox.take() {
                sandbox.shutdown(true).await;
            }
            self.host_cgroup = None;
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
        let host_spec = spec::load(std::path::Path::new(&req.bundle))?;
        let oci = spec::for_guest(host_spec.clone(), pod.pod_init())?;
        // A volume that cannot be shared fails here, before a pod's VM boots for it.
        runv_runtime::volumes::validate(&oci).map_err(SandboxError::from)?;
        let rootfs = rootfs_source(&req, &host_spec);
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        if pod.sandbox.is_none() {
            let (config, _) =
                Config::load().map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
            let (vcpus, memory_mib) = sizing::vm_size(&host_spec, &config)?;
            pod.host_cgroup = join_host_cgroup(&host_spec)?;
            let opts = SandboxOptions {
                id: Some(self.inner.sandbox_id.clone()),
                vcpus: Some(vcpus),
                memory_mib: Some(memory_mib),
                first_container: Some(BootContainer {
                    id: Some(req.id.clone()),
                    rootfs: rootfs.clone(),
                }),
                // The pod's network namespace, as the CRI plugin (after its CNI call) or
                // `ctr run --with-ns network:PATH` names it; none: loopback only.
                netns: spec::network_namespace(&host_spec),
                ..Default::default()
            };
            let sandbox = match Sandbox::create(&config, opts).await {
                Ok(sandbox) => sandbox,
                Err(e) => {
                    pod.host_cgroup = None;
                    return Err(e.into());
                }
            };
            tracing::info!(vcpus, memory_mib, "pod VM started");
            pod.sandbox = Some(sandbox);
            pod.first = Some(req.id.clone());
            let agent = pod.agent()?;
            let service = self.clone();
            tokio::spawn(async move { service.forward_oom_events(agent).await });
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
        match io::attach_outputs(&agent, id, "", self.inner.events.namespace(), stdio) {
            Ok(outputs) => Ok(outputs),
            Err(e) => {
                if let Err(e) = sandbox.remove_container(id).await {
                    tracing::warn!(container = id, error = %e, "remove after failed create");
                }
                Err(e)
            }
        }
    }

    /// Publishes a TaskOOM for each OOM kill the guest reports, while the VM runs.
    async fn forward_oom_events(&self, agent: AgentClient) {
        loop {
            match agent.get_oom_event().await {
                Ok(container_id) => {
                    tracing::warn!(container = %container_id, "OOM kill");
                    self.inner.events.oom(&container_id).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "OOM events end");
                    return;
                }
            }
        }
    }

    async fn do_start(&self, req: StartRequest) -> Result<StartResponse, ShimError> {
        if !req.exec_id.is_empty() {
            return self.start_exec(req).await;
        }
        let mut pod = self.inner.pod.lock().await;
        let status = pod.container(&req.id)?.init.status;
        if status != Status::Created {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not in the created state",
                req.id
            )));
        }
        let sandbox = pod.sandbox()?;
        let guest_pid = sandbox.start_container(&req.id).await?;
        let agent = sandbox.agent()?.clone();
        let container = pod.container(&req.id)?;
        container.guest_pid = Some(guest_pid);
        let pid = container.pid;
        let init = &mut container.init;
        init.status = Status::Running;
        init.input = io::attach_input(&agent, &req.id, "", &init.stdio)?;
        if init.input.is_none() {
            if let Err(e) = agent.close_stdin(&req.id, "").await {
                tracing::debug!(container = %req.id, error = %e, "close stdin");
            }
        }
        let outputs = init.outputs.take();
        // TaskStart goes out before the watcher can publish TaskExit.
        self.inner.events.started(&req.id, pid).await;
        let service = self.clone();
        let id = req.id.clone();
        tokio::spawn(async move { service.watch_exit(agent, id, String::new(), outputs).await });
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_exec(&self, req: StartRequest) -> Result<StartResponse, ShimError> {
        let mut pod = self.inner.pod.lock().await;
        let agent = pod.agent()?;
        let container = pod.container(&req.id)?;
        if container.init.status != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let pid = container.pid;
        let process = container.process(&req.exec_id)?;
        let spec_json = match (process.status, process.spec_json.take()) {
            (Status::Created, Some(json)) => json,
            _ => {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {} of container {} is already started",
                    req.exec_id, req.id
                )))
            }
        };
        agent
            .exec_process(&req.id, &req.exec_id, spec_json)
            .await
            .map_err(agent_error)?;
        process.status = Status::Running;
        let outputs = io::attach_outputs(
            &agent,
            &req.id,
            &req.exec_id,
            self.inner.events.namespace(),
            &process.stdio,
        );
        let input = io::attach_input(&agent, &req.id, &req.exec_id, &process.stdio);
        let (outputs, input) = match (outputs, input) {
            (Ok(outputs), Ok(input)) => (outputs, input),
            (Err(e), _) | (_, Err(e)) => {
                let _ = agent.signal_process(&req.id, &req.exec_id, 9, false).await;
                return Err(e);
            }
        };
        process.input = input;
        if process.input.is_none() {
            if let Err(e) = agent.close_stdin(&req.id, &req.exec_id).await {
                tracing::debug!(container = %req.id, exec = %req.exec_id, error = %e, "close stdin");
            }
        }
        self.inner
            .events
            .exec_started(&req.id, &req.exec_id, pid)
            .await;
        let service = self.clone();
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        tokio::spawn(async move { service.watch_exit(agent, id, exec_id, Some(outputs)).await });
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Waits for a process, lets its output drain, records the exit and reports it.
    async fn watch_exit(
        &self,
        agent: AgentClient,
        id: String,
        exec_id: String,
        outputs: Option<io::Outputs>,
    ) {
        let status = match agent.wait_process(&id, &exec_id).await {
            Ok(exit) => u32::try_from(exit.status).unwrap_or(255),
            Err(e) => {
                tracing::warn!(container = %id, exec = %exec_id, error = %e, "lost the process");
                255
            }
        };
        if let Some(outputs) = outputs {
            if tokio::time::timeout(DRAIN_TIMEOUT, outputs.finished())
                .await
                .is_err()
            {
                tracing::warn!(container = %id, exec = %exec_id, "output still open after exit; dropped the rest");
            }
        }
        let exit = Exit {
            status,
            at: SystemTime::now(),
        };
        let mut pod = self.inner.pod.lock().await;
        if exec_id.is_empty() {
            if let Some(sandbox) = pod.sandbox.as_mut() {
                let _ = sandbox.record_exit(&id, i32::try_from(status).unwrap_or(255));
            }
        }
        let Some(container) = pod.containers.get_mut(&id) else {
            return;
        };
        let pid = container.pid;
        if exec_id.is_empty() {
            container.set_exited(exit);
        } else if let Ok(process) = container.process(&exec_id) {
            process.set_exited(exit);
        } else {
            return;
        }
        let process_id = if exec_id.is_empty() { &id } else { &exec_id };
        self.inner
            .events
            .exited(&id, process_id, pid, status, exit.at)
            .await;
    }

    async fn do_exec(&self, req: ExecProcessRequest) -> Result<(), ShimError> {
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("exec id is empty".into()));
        }
        let spec_json = any_json(req.spec.as_ref(), "the exec process's spec")?;
        let mut pod = self.inner.pod.lock().await;
        let container = pod.container(&req.id)?;
        if container.init.status != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        if container.execs.contains_key(&req.exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {} of container {}",
                req.exec_id, req.id
            )));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        container.execs.insert(
            req.exec_id.clone(),
            Process::new(stdio, None, Some(spec_json)),
        );
        drop(pod);
        self.inner.events.exec_added(&req.id, &req.exec_id).await;
        Ok(())
    }

    async fn do_state(&self, req: StateRequest) -> Result<StateResponse, ShimError> {
        let mut pod = self.inner.pod.lock().await;
        let c = pod.container(&req.id)?;
        let (bundle, pid, paused) = (c.bundle.clone(), c.pid, c.paused);
        let p = c.process(&req.exec_id)?;
        let exit = p.exit();
        let status = match p.status {
            Status::Created => TaskStatus::CREATED,
            Status::Running if paused => TaskStatus::PAUSED,
            Status::Running => TaskStatus::RUNNING,
            Status::Stopped => TaskStatus::STOPPED,
        };
        Ok(StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle,
            pid,
            status: status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or_default(),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    async fn do_wait(&self, req: WaitRequest) -> Result<WaitResponse, ShimError> {
        let mut rx = self
            .inner
            .pod
            .lock()
            .await
            .process(&req.id, &req.exec_id)?
            .exit_watch();
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
        let mut pod = self.inner.pod.lock().await;
        let status = pod.process(&req.id, &req.exec_id)?.status;
        if status == Status::Stopped {
            return Err(ShimError::NotFound(format!(
                "process {} of container {} already finished",
                if req.exec_id.is_empty() {
                    "init"
                } else {
                    &req.exec_id
                },
                req.id
            )));
        }
        if status == Status::Created && !req.exec_id.is_empty() {
            return Err(ShimError::FailedPrecondition(format!(
                "exec {} of container {} is not started",
                req.exec_id, req.id
            )));
        }
        let agent = pod.agent()?;
        drop(pod);
        let signal = i32::try_from(req.signal)
            .map_err(|_| ShimError::InvalidArgument(format!("signal {}", req.signal)))?;
        agent
            .signal_process(&req.id, &req.exec_id, signal, req.all)
            .await
            .map_err(agent_error)
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse, ShimError> {
        if !req.exec_id.is_empty() {
            return self.delete_exec(req).await;
        }
        let mut pod = self.inner.pod.lock().await;
        let c = pod.container(&req.id)?;
        if c.init.status == Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is running; kill it first",
                req.id
            )));
        }
        let exit = c.init.exit().unwrap_or(Exit {
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

    async fn delete_exec(&self, req: DeleteRequest) -> Result<DeleteResponse, ShimError> {
        let mut pod = self.inner.pod.lock().await;
        let agent = pod.agent().ok();
        let container = pod.container(&req.id)?;
        let pid = container.pid;
        let process = container.process(&req.exec_id)?;
        if process.status == Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "exec {} of container {} is running; kill it first",
                req.exec_id, req.id
            )));
        }
        let started = process.spec_json.is_none();
        let exit = process.exit().unwrap_or(Exit {
            status: 0,
            at: SystemTime::now(),
        });
        container.execs.remove(&req.exec_id);
        if let (true, Some(agent)) = (started, agent) {
            if let Err(e) = agent.remove_process(&req.id, &req.exec_id).await {
                tracing::debug!(container = %req.id, exec = %req.exec_id, error = %e, "remove exec");
            }
        }
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn do_pids(&self, req: PidsRequest) -> Result<PidsResponse, ShimError> {
        let agent = self.inner.pod.lock().await.agent()?;
        let processes = agent.list_processes(&req.id).await.map_err(agent_error)?;
        let mut out = Vec::with_capacity(processes.len());
        for p in processes {
            let info = if p.exec_id.is_empty() {
                None
            } else {
                let details = ProcessDetails {
                    exec_id: p.exec_id.clone(),
                    ..Default::default()
                };
                let value = details
                    .write_to_bytes()
                    .map_err(|e| ShimError::Internal(format!("encode process details: {e}")))?;
                Some(Any {
                    type_url: PROCESS_DETAILS_TYPE_URL.to_string(),
                    value,
                    ..Default::default()
                })
            };
            out.push(ProcessInfo {
                pid: p.pid,
                info: info.into(),
                ..Default::default()
            });
        }
        Ok(PidsResponse {
            processes: out,
            ..Default::default()
        })
    }

    async fn do_pause(&self, id: &str, pause: bool) -> Result<(), ShimError> {
        let mut pod = self.inner.pod.lock().await;
        let agent = pod.agent()?;
        let container = pod.container(id)?;
        if container.init.status != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if container.paused == pause {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is already {}",
                if pause { "paused" } else { "running" }
            )));
        }
        if pause {
            agent.pause_container(id).await.map_err(agent_error)?;
        } else {
            agent.resume_container(id).await.map_err(agent_error)?;
        }
        container.paused = pause;
        drop(pod);
        if pause {
            self.inner.events.paused(id).await;
        } else {
            self.inner.events.resumed(id).await;
        }
        Ok(())
    }

    async fn do_update(&self, req: UpdateTaskRequest) -> Result<(), ShimError> {
        let resources = any_json(req.resources.as_ref(), "resources")?;
        let mut pod = self.inner.pod.lock().await;
        pod.container(&req.id)?;
        let agent = pod.agent()?;
        drop(pod);
        agent
            .update_container(&req.id, resources)
            .await
            .map_err(agent_error)
    }

    async fn do_stats(&self, req: StatsRequest) -> Result<StatsResponse, ShimError> {
        let mut pod = self.inner.pod.lock().await;
        pod.container(&req.id)?;
        let agent = pod.agent()?;
        drop(pod);
        let stats = agent.stats_container(&req.id).await.map_err(agent_error)?;
        Ok(StatsResponse {
            stats: Some(metrics::to_any(&stats)?).into(),
            ..Default::default()
        })
    }

    async fn do_close_io(&self, req: CloseIORequest) -> Result<(), ShimError> {
        let mut pod = self.inner.pod.lock().await;
        let process = pod.process(&req.id, &req.exec_id)?;
        if req.stdin {
            if let Some(input) = process.input.as_mut() {
                input.close();
            }
        }
        Ok(())
    }

    async fn do_resize_pty(&self, req: ResizePtyRequest) -> Result<(), ShimError> {
        let mut pod = self.inner.pod.lock().await;
        pod.process(&req.id, &req.exec_id)?;
        let agent = pod.agent()?;
        drop(pod);
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        agent
            .resize_terminal(&req.id, &req.exec_id, rows, cols)
            .await
            .map_err(agent_error)
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

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        let result = self.do_exec(req).await;
        if let Err(e) = &result {
            tracing::warn!(container = %id, exec = %exec_id, error = %crate::errors::chain(e), "exec");
        }
        result?;
        Ok(Empty::new())
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        Ok(self.do_pids(req).await?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.do_pause(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.do_pause(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.do_update(req).await?;
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Ok(self.do_stats(req).await?)
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::protos::api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(ShimError::Unimplemented("Checkpoint").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_json_names_what_is_wrong() {
        let any = |text: &str| Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: text.as_bytes().to_vec(),
            ..Default::default()
        };
        assert_eq!(
            any_json(Some(&any(r#"{"args": ["sh"]}"#)), "spec").unwrap(),
            r#"{"args": ["sh"]}"#
        );
        let err = any_json(Some(&any("{")), "the exec process's spec").unwrap_err();
        assert!(
            err.to_string().starts_with("the exec process's spec:"),
            "{err}"
        );
        let err = any_json(None, "resources").unwrap_err();
        assert_eq!(err.to_string(), "resources is missing");
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
    }
}
