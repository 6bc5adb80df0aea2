//! The agent's state: the sandbox setup and its containers. The RPC layer is a thin
//! translation onto the methods here.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tokio::sync::Notify;

use crate::container::block_rootfs::{self, BlockRoot};
use crate::container::cgroup::CgroupManager;
use crate::container::create::{self, CreateRequest};
use crate::container::{spec, Container, Process};
use crate::error::AgentError;
use crate::reaper::Reaper;

/// How the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of the guest VM.
    Pid1,
    /// A process on a host, for tests.
    Dev,
}

/// Guest-wide settings from CreateSandbox.
struct SandboxSetup {
    shared_fs: Option<PathBuf>,
}

/// A root on a read-only virtio-blk disk, as CreateContainer names it.
#[derive(Debug, Clone)]
pub struct BlockRequest {
    pub serial: String,
    pub fs_type: String,
}

#[derive(Default)]
struct Containers {
    running: HashMap<String, Arc<Container>>,
    /// Ids whose CreateContainer is under way.
    creating: HashSet<String>,
    /// The block roots of containers that have one.
    block_roots: HashMap<String, BlockRoot>,
}

/// Everything the RPCs act on.
pub struct Sandbox {
    mode: Mode,
    reaper: Arc<Reaper>,
    cgroup_root: PathBuf,
    cgroups: Mutex<Option<Arc<CgroupManager>>>,
    containers: Mutex<Containers>,
    setup: tokio::sync::Mutex<Option<SandboxSetup>>,
    /// True once the PID 1 system setup (cgroup2, /run, ...) is done.
    system_ready: tokio::sync::watch::Receiver<bool>,
    /// Notified when the agent should stop serving (dev mode).
    pub stopped: Notify,
}

impl Sandbox {
    pub fn new(
        mode: Mode,
        reaper: Arc<Reaper>,
        cgroup_root: PathBuf,
        system_ready: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            system_ready,
            mode,
            reaper,
            cgroup_root,
            cgroups: Mutex::new(None),
            containers: Mutex::new(Containers::default()),
            setup: tokio::sync::Mutex::new(None),
            stopped: Notify::new(),
        }
    }

    /// CreateSandbox: hostname and the shared filesystem.
    /// Sets the guest's wall clock (PID 1 mode only: in dev mode the host's clock is ours).
    pub fn set_clock(&self, unix_nanos: u64) {
        if self.mode != Mode::Pid1 {
            return;
        }
        let secs = i64::try_from(unix_nanos / 1_000_000_000).unwrap_or(i64::MAX);
        let nanos = i64::try_from(unix_nanos % 1_000_000_000).unwrap_or_default();
        let ts = nix::sys::time::TimeSpec::new(secs, nanos);
        match nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
            Ok(()) => tracing::debug!(secs, "clock set from the host"),
            Err(err) => tracing::warn!(%err, "cannot set the clock"),
        }
    }

    pub async fn create_sandbox(
        &self,
        hostname: &str,
        shared_fs: Option<(String, PathBuf)>,
        network: crate::network::Plan,
    ) -> Result<(), AgentError> {
        self.wait_system_ready().await;
        let mut setup = self.setup.lock().await;
        if setup.is_some() {
            return Err(AgentError::SandboxExists);
        }
        if !network.is_empty() {
            // In development mode the agent must have been given a network namespace of its
            // own: the one of the host's PID 1 is never reconfigured.
            if self.mode == Mode::Dev && crate::network::in_host_namespace() {
                return Err(crate::network::NetworkError::HostNamespace.into());
            }
            tokio::task::spawn_blocking(move || crate::network::apply(&network))
                .await
                .map_err(|e| {
                    AgentError::os(format!("network setup task: {e}"), nix::errno::Errno::EIO)
                })??;
        }
        if !hostname.is_empty() && self.mode == Mode::Pid1 {
            nix::unistd::sethostname(hostname)
                .map_err(|e| AgentError::os(format!("sethostname {hostname:?}"), e))?;
        }
        let mut mounted = None;
        if let Some((tag, mount_point)) = shared_fs {
            if tag.is_empty() || !mount_point.is_absolute() {
                return Err(AgentError::InvalidArgument {
                    field: "shared_fs",
                    reason: format!("tag {tag:?} and absolute mount_point {mount_point:?} needed"),
                });
            }
            let what = format!("mount virtiofs {tag:?} on {}", mount_point.display());
            std::fs::create_dir_all(&mount_point).map_err(|e| {
                AgentError::os(
                    what.clone(),
                    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                )
            })?;
            mount(
                Some(tag.as_str()),
                &mount_point,
                Some("virtiofs"),
                MsFlags::MS_NODEV,
                None::<&str>,
            )
            .map_err(|e| AgentError::os(what, e))?;
            tracing::info!(tag, mount_point = %mount_point.display(), "shared filesystem mounted");
            mounted = Some(mount_point);
        }
        *setup = Some(SandboxSetup { shared_fs: mounted });
        Ok(())
    }

    fn cgroup_manager(&self) -> Result<Arc<CgroupManager>, AgentError> {
        let mut slot = self.cgroups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(manager) = slot.as_ref() {
            return Ok(Arc::clone(manager));
        }
        let strict = self.mode == Mode::Pid1;
        let manager =
            CgroupManager::new(&self.cgroup_root, strict).map_err(|source| AgentError::Cgroup {
                id: String::new(),
                source,
            })?;
        let manager = Arc::new(manager);
        *slot = Some(Arc::clone(&manager));
        Ok(manager)
    }

    /// CreateContainer. Runs in its own task so a dropped request cannot leave half a
    /// container behind.
    pub async fn create_container(
        self: &Arc<Self>,
        container_id: String,
        spec_json: &str,
        rootfs_path: &str,
        rootfs_readonly: bool,
        block: Option<BlockRequest>,
    ) -> Result<(), AgentError> {
        self.wait_system_ready().await;
        spec::check_container_id(&container_id)?;
        let spec = spec::parse(spec_json)?;
        let block_base = PathBuf::from(block_rootfs::BLOCK_ROOT_BASE);
        let rootfs_path = match &block {
            Some(b) => {
                block_rootfs::validate(&b.serial, &b.fs_type)?;
                block_rootfs::root_path(&block_base, &container_id)
            }
            None => PathBuf::from(rootfs_path),
        };
        let (rootfs, readonly_root) =
            spec::rootfs(&rootfs_path.to_string_lossy(), rootfs_readonly, &spec)?;
        if block.is_none() && !rootfs.is_dir() {
            return Err(AgentError::RootfsMissing(rootfs.display().to_string()));
        }
        {
            let mut containers = self.lock_containers();
            if containers.running.contains_key(&container_id)
                || !containers.creating.insert(container_id.clone())
            {
                return Err(AgentError::ContainerExists(container_id));
            }
        }
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let id = container_id.clone();
            // Mounted inside the task, so it comes off again whatever happens to the request:
            // on a failed create it drops here, which unmounts it.
            let result = async {
                let block_root = match block {
                    Some(b) => Some(BlockRoot::mount(
                        Path::new(block_rootfs::SYS_BLOCK),
                        &block_base,
                        &container_id,
                        &b.serial,
                        &b.fs_type,
                    )?),
                    None => None,
                };
                let cgroups = this.cgroup_manager()?;
                let req = CreateRequest {
                    container_id,
                    spec,
                    rootfs,
                    readonly_root,
                };
                let container = create::create(&this.reaper, &cgroups, req).await?;
                Ok::<_, AgentError>((container, block_root))
            }
            .await;
            let mut containers = this.lock_containers();
            containers.creating.remove(&id);
            let (container, block_root) = result?;
            tracing::info!(container = %id, pid = container.pid.as_raw(), "container created");
            if let Some(block_root) = block_root {
                containers.block_roots.insert(id.clone(), block_root);
            }
            containers.running.insert(id, Arc::new(container));
            Ok(())
        });
        task.await.unwrap_or_else(|join| {
            Err(AgentError::os(
                format!("create task: {join}"),
                nix::errno::Errno::EIO,
            ))
        })
    }

    /// The container named `id`.
    pub fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        self.lock_containers()
            .running
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NoSuchContainer(id.to_string()))
    }

    /// A process: the container's init process for an empty exec id, else an exec process.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Process, AgentError> {
        let container = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(Process::Init(container));
        }
        let exec = container.exec_process(exec_id)?;
        Ok(Process::Exec(container, exec))
    }

    /// ExecProcess: starts `process_json` in the container `id`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &str,
    ) -> Result<nix::unistd::Pid, AgentError> {
        let process = crate::container::exec::parse_process(process_json)?;
        let container = self.container(id)?;
        container
            .exec(&self.reaper, exec_id.to_string(), process)
            .await
    }

    /// Waits until a container's OOM kill count grows and returns its id; checks every
    /// `interval` (cgroup v2 has no OOM notification a blocked reader can wait on that
    /// works across all containers at once).
    pub async fn next_oom(&self, interval: Duration) -> String {
        loop {
            let containers: Vec<Arc<Container>> =
                self.lock_containers().running.values().cloned().collect();
            for container in containers {
                let kills = container.oom_kills();
                let seen = container
                    .oom_kills_seen
                    .fetch_max(kills, std::sync::atomic::Ordering::SeqCst);
                if kills > seen {
                    return container.id.clone();
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// RemoveContainer.
    pub async fn remove_container(&self, id: &str, grace: Duration) -> Result<(), AgentError> {
        let container = self.container(id)?;
        container.destroy(grace).await?;
        let block_root = {
            let mut containers = self.lock_containers();
            match containers.running.get(id) {
                Some(current) if Arc::ptr_eq(current, &container) => {
                    containers.running.remove(id);
                    containers.block_roots.remove(id)
                }
                _ => None,
            }
        };
        if let Some(mut block_root) = block_root {
            block_root.unmount()?;
        }
        tracing::info!(container = %id, "container removed");
        Ok(())
    }

    /// Kills and removes every container.
    pub async fn remove_all(&self) {
        let (all, block_roots): (Vec<Arc<Container>>, Vec<BlockRoot>) = {
            let mut containers = self.lock_containers();
            (
                containers.running.drain().map(|(_, c)| c).collect(),
                containers.block_roots.drain().map(|(_, b)| b).collect(),
            )
        };
        for container in all {
            if let Err(err) = container.destroy(Duration::ZERO).await {
                tracing::warn!(container = %container.id, %err, "removal at shutdown");
            }
        }
        for mut block_root in block_roots {
            if let Err(err) = block_root.unmount() {
                tracing::warn!(%err, "block rootfs at shutdown");
            }
        }
    }

    /// Shutdown: every container is killed, filesystems synced and the shared one
    /// unmounted. The power-off (or, in dev mode, the exit) follows after the reply.
    pub async fn shutdown(&self) {
        self.wait_system_ready().await;
        self.remove_all().await;
        nix::unistd::sync();
        if let Some(setup) = self.setup.lock().await.as_ref() {
            if let Some(mount_point) = &setup.shared_fs {
                if let Err(err) = umount2(mount_point, MntFlags::empty()) {
                    tracing::warn!(%err, "unmount shared filesystem; detaching it");
                    let _ = umount2(mount_point, MntFlags::MNT_DETACH);
                }
            }
        }
        tracing::info!("shutting down");
    }

    /// Waits until the system setup that containers and the shared filesystem need is done.
    async fn wait_system_ready(&self) {
        let mut ready = self.system_ready.clone();
        // The sender lives as long as the server; if it is gone, go ahead anyway.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn lock_containers(&self) -> std::sync::MutexGuard<'_, Containers> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }
}
