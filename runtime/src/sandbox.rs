//! A sandbox: one VM with its guest agent, its state directory, and the containers in it.
//!
//! Whatever a sandbox has set up is torn down on every exit path: [`Sandbox::shutdown`] on
//! the normal one, the same teardown when creation fails half-way, and `Drop` (kill, reap,
//! unmount, remove) when an owner lets go of a sandbox without shutting it down.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use runv_agent_protocol::agent as pb;
use serde::Serialize;

use crate::agent::{AgentClient, AgentError, ReadyListener};
use crate::block_rootfs::{BlockRootfsError, BlockRoots, BootContainer};
use crate::config::{validate_vm_size, Config, ConfigError, HypervisorKind};
use crate::host::{self, Choice, ChoiceError};
use crate::hypervisor::{Builtin, Hypervisor, HypervisorError, Qemu, VmNic, VmSpec};
use crate::network::{NetworkError, PodNetwork};
use crate::rootfs::{MountedRootfs, RootfsError, RootfsSource, SharedDir};
use crate::state::{
    validate_id, ContainerState, NetworkState, OwnerLock, SandboxDir, SandboxState, SandboxStatus,
    StateError,
};
use crate::volumes::{VolumeError, Volumes};

/// virtio-fs tag of a sandbox's shared directory.
pub const SHARED_FS_TAG: &str = "runvshared";
/// Where the agent mounts the shared directory in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/runv/shared";

/// Errors of a sandbox operation.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Bad configuration or options.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No backend can run here as asked.
    #[error(transparent)]
    Choice(#[from] ChoiceError),
    /// State directory trouble.
    #[error(transparent)]
    State(#[from] StateError),
    /// The hypervisor failed.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// The agent failed or refused.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The container root could not be prepared.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// A volume cannot be shared or could not be mounted.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The pod's network cannot be read or plumbed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The container root image could not be built.
    #[error(transparent)]
    BlockRootfs(#[from] BlockRootfsError),
    /// The VM ended while runv was waiting for its agent.
    #[error("The sandbox VM stopped before its agent answered: {reason}\nGuest console ({console}):\n{console_tail}")]
    VmDied {
        /// What ended.
        reason: String,
        /// The console log.
        console: PathBuf,
        /// Its last lines.
        console_tail: String,
    },
    /// The agent did not come up in time.
    #[error("{source}\nGuest console ({console}):\n{console_tail}")]
    BootTimeout {
        /// The agent error.
        #[source]
        source: AgentError,
        /// The console log.
        console: PathBuf,
        /// Its last lines.
        console_tail: String,
    },
    /// A container id is in use.
    #[error("Container {0} already exists in this sandbox")]
    ContainerExists(String),
    /// No such container.
    #[error("Container {0} does not exist in this sandbox")]
    ContainerNotFound(String),
    /// The sandbox was shut down already.
    #[error("The sandbox is shut down")]
    Down,
}

/// How to make a sandbox; `None` takes the config's value.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Sandbox id; a random one if not given.
    pub id: Option<String>,
    /// Backend.
    pub hypervisor: Option<HypervisorKind>,
    /// vCPUs.
    pub vcpus: Option<u32>,
    /// Guest memory, MiB.
    pub memory_mib: Option<u32>,
    /// The container that will be created first, so that with `[runtime] rootfs = "block"`
    /// its root can be a disk the VM boots with.
    pub first_container: Option<BootContainer>,
    /// The pod's network namespace (a CNI plugin's); `None`: the guest has loopback only.
    pub netns: Option<PathBuf>,
}

/// When each phase of a sandbox's life ended, as offsets from its creation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Sandbox directory and checks done, hypervisor about to start.
    pub prepared: Option<Duration>,
    /// The hypervisor process runs.
    pub hypervisor_started: Option<Duration>,
    /// The guest kernel started (agent ready minus the guest's uptime).
    pub kernel_started: Option<Duration>,
    /// The agent answered.
    pub agent_ready: Option<Duration>,
    /// The guest-wide setup is done.
    pub sandbox_ready: Option<Duration>,
}

/// A running sandbox.
pub struct Sandbox {
    config: Config,
    dir: SandboxDir,
    lock: Option<OwnerLock>,
    state: SandboxState,
    hypervisor: Box<dyn Hypervisor>,
    agent: Option<AgentClient>,
    rootfs: BTreeMap<String, MountedRootfs>,
    volumes: BTreeMap<String, Volumes>,
    block: BlockRoots,
    shared: Option<SharedDir>,
    network: Option<PodNetwork>,
    created: Instant,
    timings: Timings,
    down: bool,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.state.id)
            .field("status", &self.state.status)
            .finish()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The guest kernel command line runv boots with. `no_timer_check`: the kernel's check that
/// the timer interrupt reaches it through the IO-APIC counts on the guest getting CPU time
/// within a few ticks; a guest starved by a loaded host (dozens of sandboxes booting at once
/// under emulation) fails it and stops booting.
pub fn kernel_cmdline(config: &Config) -> String {
    let mut cmdline = format!(
        "console=ttyS0 rdinit=/init quiet 8250.nr_uarts=1 no_timer_check runv.log={}",
        config.runtime.guest_log_level
    );
    if !config.hypervisor.kernel_params.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(config.hypervisor.kernel_params.trim());
    }
    cmdline
}

impl Sandbox {
    /// Creates a sandbox and boots its VM; returns once the guest agent is ready. On failure
    /// nothing of it is left behind.
    pub async fn create(config: &Config, opts: SandboxOptions) -> Result<Self, SandboxError> {
        let created = Instant::now();
        let vcpus = opts.vcpus.unwrap_or(config.hypervisor.vcpus);
        let memory_mib = opts.memory_mib.unwrap_or(config.hypervisor.memory_mib);
        validate_vm_size(vcpus, memory_mib)?;
        let choice = host::choose_for(config, opts.hypervisor)?;
        let id = opts.id.unwrap_or_else(crate::state::random_id);
        validate_id(&id)?;
        let hypervisor = backend(config, &choice)?;

        let dir = SandboxDir::new(&config.runtime.state_dir, &id)?;
        let lock = dir.create(&id)?;
        let state = SandboxState {
            id: id.clone(),
            status: SandboxStatus::Creating,
            created_unix: now_unix(),
            owner_pid: std::process::id(),
            hypervisor: choice.hypervisor.to_string(),
            accel: choice.accel.to_string(),
            vcpus,
            memory_mib,
            processes: Vec::new(),
            containers: Vec::new(),
            agent_version: None,
            guest_kernel: None,
            network: None,
        };
        let mut sandbox = Self {
            config: config.clone(),
            dir,
            lock: Some(lock),
            state,
            hypervisor,
            agent: None,
            rootfs: BTreeMap::new(),
            volumes: BTreeMap::new(),
            block: BlockRoots::default(),
            shared: None,
            network: None,
            created,
            timings: Timings::default(),
            down: false,
        };
        match sandbox.boot(opts.first_container, opts.netns).await {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                sandbox.teardown(true).await;
                Err(e)
            }
        }
    }

    async fn boot(
        &mut self,
        first: Option<BootContainer>,
        netns: Option<PathBuf>,
    ) -> Result<(), SandboxError> {
        self.dir.save(&self.state)?;
        if let Some(netns) = netns {
            let network = tokio::task::spawn_blocking(move || crate::network::setup(&netns))
                .await
                .map_err(|e| {
                    SandboxError::Network(NetworkError::Namespace {
                        path: PathBuf::new(),
                        reason: format!("network setup task: {e}"),
                    })
                })??;
            self.state.network = Some(NetworkState {
                netns: network.netns.clone(),
                plumbed: network.plumbed.clone(),
            });
            self.dir.save(&self.state)?;
            self.network = Some(network);
        }
        let image_scratch = self.dir.path().join("scratch").join(".image");
        self.block =
            BlockRoots::prepare(&self.config, &self.state.id, first, image_scratch).await?;
        let shared = self.dir.shared();
        self.shared = Some(SharedDir::prepare(&shared)?);
        let vm = VmSpec {
            id: self.state.id.clone(),
            dir: self.dir.path().to_path_buf(),
            vcpus: self.state.vcpus,
            memory_mib: self.state.memory_mib,
            kernel: self.config.guest.kernel.clone(),
            initrd: self.config.guest.initrd.clone(),
            cmdline: kernel_cmdline(&self.config),
            shared_dir: shared,
            fs_tag: SHARED_FS_TAG.to_string(),
            disks: self.block.disks().to_vec(),
            nics: self
                .network
                .iter()
                .flat_map(|n| &n.nics)
                .map(|nic| VmNic {
                    tap_fd: nic.tap.as_raw_fd(),
                    mac: nic.mac.clone(),
                    mtu: nic.mtu,
                })
                .collect(),
        };
        // Listening for the agent's readiness notification before the VM exists: it can
        // not come too early.
        let ready_listener =
            ReadyListener::bind(&vm.vsock_uds()).map_err(|source| StateError::Io {
                op: "Listen for the agent at",
                path: vm.vsock_uds(),
                source,
            })?;
        self.timings.prepared = Some(self.created.elapsed());
        let started = self.hypervisor.start(&vm).await;
        self.state.processes = self.hypervisor.processes();
        self.dir.save(&self.state)?;
        started?;
        self.timings.hypervisor_started = Some(self.created.elapsed());

        let hypervisor = &mut self.hypervisor;
        let waited = AgentClient::wait_ready(
            &vm.vsock_uds(),
            &ready_listener,
            self.config.runtime.boot_timeout(),
            self.config.runtime.request_timeout(),
            || match hypervisor.check_exited() {
                Some(e) => Err(e),
                None => Ok(()),
            },
        )
        .await;
        let console = vm.console_log();
        let (agent, check) = match waited {
            Err(died) => {
                let reason = match self.hypervisor.exit_error(Duration::from_secs(1)).await {
                    Some(cause) => cause.to_string(),
                    None => died.to_string(),
                };
                return Err(SandboxError::VmDied {
                    reason,
                    console_tail: crate::process::tail(&console, 25),
                    console,
                });
            }
            Ok(Err(source)) => {
                return Err(SandboxError::BootTimeout {
                    source,
                    console_tail: crate::process::tail(&console, 25),
                    console,
                })
            }
            Ok(Ok(ready)) => ready,
        };
        let ready = self.created.elapsed();
        self.timings.agent_ready = Some(ready);
        self.timings.kernel_started =
            Some(ready.saturating_sub(Duration::from_secs_f64(check.uptime_seconds.max(0.0))));
        self.state.agent_version = Some(check.agent_version.clone());
        self.state.guest_kernel = Some(check.kernel_release.clone());
        drop(ready_listener);

        let req = pb::CreateSandboxRequest {
            sandbox_id: self.state.id.clone(),
            hostname: self.state.id.clone(),
            host_time_unix_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or_default())
                .unwrap_or_default(),
            shared_fs: protobuf::MessageField::some(pb::SharedFs {
                tag: SHARED_FS_TAG.to_string(),
                mount_point: GUEST_SHARED_DIR.to_string(),
                ..Default::default()
            }),
            network: self.network.as_ref().map(|n| n.guest.clone()).into(),
            ..Default::default()
        };
        agent.create_sandbox(req).await?;
        self.agent = Some(agent);
        self.timings.sandbox_ready = Some(self.created.elapsed());
        self.state.status = SandboxStatus::Running;
        self.dir.save(&self.state)?;
        tracing::info!(sandbox = %self.state.id, hypervisor = self.hypervisor.name(),
            accel = %self.hypervisor.accel(), kernel = %check.kernel_release, "sandbox ready");
        Ok(())
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Its state as saved on disk.
    pub fn state(&self) -> &SandboxState {
        &self.state
    }

    /// Its directory.
    pub fn dir(&self) -> &SandboxDir {
        &self.dir
    }

    /// Phase timings so far.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Time since creation began.
    pub fn elapsed(&self) -> Duration {
        self.created.elapsed()
    }

    /// The agent of a running sandbox.
    pub fn agent(&self) -> Result<&AgentClient, SandboxError> {
        self.agent.as_ref().ok_or(SandboxError::Down)
    }

    /// The hypervisor's error if it has exited.
    pub fn check_vm(&mut self) -> Option<HypervisorError> {
        self.hypervisor.check_exited()
    }

    /// Creates a container from `spec` with its root from `rootfs`; its process waits for
    /// [`Self::start_container`]. The spec's bind mounts of host paths are shared with the
    /// guest (see [`crate::volumes`]); one that cannot be fails before anything is mounted.
    pub async fn create_container(
        &mut self,
        id: &str,
        rootfs: &RootfsSource,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), SandboxError> {
        validate_id(id)?;
        if self.rootfs.contains_key(id) || self.block.in_use(id) {
            return Err(SandboxError::ContainerExists(id.to_string()));
        }
        let agent = self.agent()?.clone();
        crate::volumes::validate(spec)?;
        let mut root = pb::Rootfs {
            readonly: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            ..Default::default()
        };
        if let Some(block) = self.block.take(&self.state.id, id, rootfs) {
            root.block_serial = block.serial;
            root.block_fs_type = block.fs_type.to_string();
        } else {
            let target = self.dir.shared().join(id).join("rootfs");
            let scratch = self.dir.path().join("scratch").join(id);
            let mounted = MountedRootfs::mount(rootfs, &target, &scratch)?;
            self.rootfs.insert(id.to_string(), mounted);
            root.path = format!("{GUEST_SHARED_DIR}/{id}/rootfs");
        }
        let guest_spec = match Volumes::share(spec, &self.dir.shared(), id, GUEST_SHARED_DIR) {
            Ok((volumes, guest_spec)) => {
                self.volumes.insert(id.to_string(), volumes);
                guest_spec
            }
            Err(e) => {
                self.release_mounts(id);
                return Err(e.into());
            }
        };
        let spec_json = match crate::spec::to_json(&guest_spec) {
            Ok(json) => json,
            Err(e) => {
                self.release_mounts(id);
                return Err(AgentError::Transport {
                    method: "CreateContainer",
                    reason: e.to_string(),
                }
                .into());
            }
        };
        let req = pb::CreateContainerRequest {
            container_id: id.to_string(),
            oci_spec_json: spec_json,
            rootfs: protobuf::MessageField::some(root),
            ..Default::default()
        };
        if let Err(e) = agent.create_container(req).await {
            self.release_mounts(id);
            return Err(e.into());
        }
        self.state.containers.push(ContainerState {
            id: id.to_string(),
            args: spec
                .process()
                .as_ref()
                .and_then(|p| p.args().clone())
                .unwrap_or_default(),
            guest_pid: None,
            exit_status: None,
        });
        self.dir.save(&self.state)?;
        Ok(())
    }

    /// Starts a created container; returns its pid in the guest.
    pub async fn start_container(&mut self, id: &str) -> Result<u32, SandboxError> {
        let pid = self.agent()?.start_container(id).await?;
        if let Some(c) = self.state.containers.iter_mut().find(|c| c.id == id) {
            c.guest_pid = Some(pid);
        }
        self.dir.save(&self.state)?;
        Ok(pid)
    }

    /// Records a container's exit status.
    pub fn record_exit(&mut self, id: &str, status: i32) -> Result<(), SandboxError> {
        if let Some(c) = self.state.containers.iter_mut().find(|c| c.id == id) {
            c.exit_status = Some(status);
        }
        Ok(self.dir.save(&self.state)?)
    }

    /// Kills what is left of a container, removes it in the guest and unmounts its volumes
    /// and its root.
    pub async fn remove_container(&mut self, id: &str) -> Result<(), SandboxError> {
        if !self.rootfs.contains_key(id) && !self.block.in_use(id) {
            return Err(SandboxError::ContainerNotFound(id.to_string()));
        }
        let removed = self
            .agent()?
            .remove_container(id, Duration::from_millis(500))
            .await;
        self.release_mounts(id);
        self.state.containers.retain(|c| c.id != id);
        self.dir.save(&self.state)?;
        Ok(removed?)
    }

    /// Unmounts a container's volumes, then its root. A volume that stays mounted keeps its
    /// mount point, and the sandbox directory's removal refuses to go through it.
    fn release_mounts(&mut self, id: &str) {
        if let Some(mut volumes) = self.volumes.remove(id) {
            if let Err(e) = volumes.release() {
                tracing::warn!(sandbox = %self.state.id, container = id, error = %e, "unmount volumes");
            }
        }
        self.block.release(id);
        if let Some(mut mounted) = self.rootfs.remove(id) {
            if let Err(e) = mounted.unmount() {
                tracing::warn!(sandbox = %self.state.id, container = id, error = %e, "unmount rootfs");
            }
        }
    }

    /// Closes runv's tap descriptors (the hypervisor is gone, so the taps go with them) and
    /// removes the tc plumbing from the pod's namespace.
    fn release_network(&mut self) {
        drop(self.network.take());
        if let Some(network) = self.state.network.take() {
            if let Err(e) = crate::network::teardown(&network.netns, &network.plumbed) {
                tracing::warn!(sandbox = %self.state.id, error = %e, "remove the pod network's plumbing");
            }
        }
    }

    fn release_shared(&mut self) {
        if let Some(mut shared) = self.shared.take() {
            if let Err(e) = shared.release() {
                tracing::warn!(sandbox = %self.state.id, error = %e, "unmount shared directory");
            }
        }
    }

    /// Powers the VM off (through the agent, then by force), stops every helper and unmounts
    /// every container's volumes and root. `remove` also deletes the state directory; otherwise it stays,
    /// marked stopped, for inspection.
    pub async fn shutdown(mut self, remove: bool) {
        self.teardown(remove).await;
    }

    async fn teardown(&mut self, remove: bool) {
        if self.down {
            return;
        }
        self.down = true;
        self.state.status = SandboxStatus::Stopping;
        let _ = self.dir.save(&self.state);
        // The agent answers Shutdown once every container is gone, the guest's filesystems
        // are synced and the shared one is unmounted: nothing in the VM is left to lose, so
        // the hypervisor is stopped at once instead of waiting for the guest to power off.
        if let Some(agent) = self.agent.take() {
            let limit = self.config.runtime.shutdown_timeout();
            match tokio::time::timeout(limit, agent.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(sandbox = %self.state.id, error = %e, "agent shutdown")
                }
                Err(_) => tracing::warn!(
                    sandbox = %self.state.id,
                    limit_ms = limit.as_millis(),
                    "agent shutdown did not finish in time"
                ),
            }
        }
        self.hypervisor.stop(Duration::ZERO).await;
        self.release_network();
        let ids: Vec<String> = self.rootfs.keys().cloned().collect();
        for id in ids {
            self.release_mounts(&id);
        }
        self.release_shared();
        self.state.status = SandboxStatus::Stopped;
        self.state.processes.clear();
        if remove {
            if let Err(e) = self.dir.remove() {
                tracing::warn!(sandbox = %self.state.id, error = %e, "remove state directory");
            }
        } else {
            let _ = self.dir.save(&self.state);
        }
        self.lock = None;
    }
}

impl Drop for Sandbox {
    /// The last line of defence, for owners that drop a sandbox without [`Sandbox::shutdown`]
    /// (a cancelled task, a panic): the helpers die and are reaped as they drop, the roots
    /// are unmounted, and the directory goes.
    fn drop(&mut self) {
        if self.down {
            return;
        }
        tracing::warn!(sandbox = %self.state.id, "sandbox dropped while running; killing it");
        self.agent = None;
        self.hypervisor.kill_now();
        self.release_network();
        let ids: Vec<String> = self.rootfs.keys().cloned().collect();
        for id in ids {
            self.release_mounts(&id);
        }
        self.release_shared();
        let _ = self.dir.remove();
    }
}

/// The backend object for a choice.
fn backend(config: &Config, choice: &Choice) -> Result<Box<dyn Hypervisor>, SandboxError> {
    match choice.hypervisor {
        HypervisorKind::Qemu => Ok(Box::new(Qemu::new(config.binaries.clone(), choice.accel))),
        HypervisorKind::Builtin => Ok(Box::new(Builtin::new(config.binaries.clone()))),
        HypervisorKind::Auto => {
            Err(HypervisorError::Unsupported("unresolved hypervisor choice".to_string()).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_has_console_and_extra_params() {
        let mut config = Config::default();
        config.hypervisor.kernel_params = " foo=1 ".into();
        let cmdline = kernel_cmdline(&config);
        assert!(
            cmdline.starts_with("console=ttyS0 rdinit=/init"),
            "{cmdline}"
        );
        // How the guest reboots is the backend's business (qemu.rs adds its own entries).
        assert!(!cmdline.contains("reboot="), "{cmdline}");
        assert!(cmdline.ends_with(" foo=1"), "{cmdline}");
        assert!(cmdline.contains("runv.log=warn"));
    }

    #[tokio::test]
    async fn failed_create_leaves_no_state_directory() {
        let root = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.runtime.state_dir = root.path().to_path_buf();
        config.guest.kernel = root.path().join("no-such-vmlinux");
        config.hypervisor.kind = HypervisorKind::Qemu;
        config.hypervisor.accel = crate::config::AccelChoice::Tcg;
        let err = Sandbox::create(
            &config,
            SandboxOptions {
                id: Some("t".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("no-such-vmlinux"), "{err}");
        assert!(!root.path().join("t").exists());
    }
}
