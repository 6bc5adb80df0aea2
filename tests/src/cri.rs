//! A blocking client of the Kubernetes CRI (API v1, the `k8s-cri` crate) over a containerd's
//! Unix socket, and the configs of a pod on the host network and of its containers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

/// Every call fails the test after this long: a hang is a failure, never a wait forever.
pub const CALL_LIMIT: Duration = Duration::from_secs(90);

/// A CRI client; each method blocks until the call returns (or panics after `CALL_LIMIT`).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// Calls `$client.$method($request)` on `$cri`'s runtime, failing after `CALL_LIMIT`; gives
/// the `Result` of the call.
macro_rules! call {
    ($cri:expr, $client:ident, $method:ident, $request:expr) => {{
        let cri = &mut *$cri;
        let client = &mut cri.$client;
        let request = $request;
        cri.rt
            .block_on(async {
                tokio::time::timeout(CALL_LIMIT, client.$method(request))
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "CRI {} took longer than {CALL_LIMIT:?}",
                            stringify!($method)
                        )
                    })
            })
            .map(tonic::Response::into_inner)
    }};
}

impl Cri {
    /// Connects to the CRI service of the containerd listening on `socket`.
    pub fn connect(socket: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let socket: PathBuf = socket.to_path_buf();
        let channel = rt
            .block_on(async {
                // The URI is a placeholder: the connector always dials the socket.
                Endpoint::from_static("http://[::1]:50051")
                    .connect_timeout(Duration::from_secs(10))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .expect("connect to containerd's CRI socket");
        Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// The runtime's name and version, as `Version` gives them.
    pub fn version(&mut self) -> Result<api::VersionResponse, tonic::Status> {
        call!(self, runtime, version, api::VersionRequest::default())
    }

    /// Whether the image service knows `image` (a local image; nothing is pulled).
    pub fn image_present(&mut self, image: &str) -> bool {
        let request = api::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        call!(self, images, image_status, request)
            .expect("ImageStatus")
            .image
            .is_some()
    }

    /// `RunPodSandbox` with runtime handler `handler` (`runv`, `runc`); gives the pod's id.
    pub fn run_pod_sandbox(
        &mut self,
        config: &api::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        let request = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        call!(self, runtime, run_pod_sandbox, request).map(|r| r.pod_sandbox_id)
    }

    /// `CreateContainer` in pod `pod_id` (created with `pod_config`); gives the container's id.
    pub fn create_container(
        &mut self,
        pod_id: &str,
        config: &api::ContainerConfig,
        pod_config: &api::PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let request = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        call!(self, runtime, create_container, request).map(|r| r.container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = api::StartContainerRequest {
            container_id: id.to_string(),
        };
        call!(self, runtime, start_container, request).map(|_| ())
    }

    /// `ExecSync` of `cmd` in container `id`, with a timeout of `timeout` seconds.
    pub fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<api::ExecSyncResponse, tonic::Status> {
        let request = api::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| (*s).to_string()).collect(),
            timeout,
        };
        call!(self, runtime, exec_sync, request)
    }

    /// `PodSandboxStatus` of pod `id`.
    pub fn pod_sandbox_status(&mut self, id: &str) -> Result<api::PodSandboxStatus, tonic::Status> {
        let request = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        };
        call!(self, runtime, pod_sandbox_status, request).map(|r| r.status.unwrap_or_default())
    }

    /// `ContainerStats` of container `id`.
    pub fn container_stats(&mut self, id: &str) -> Result<api::ContainerStats, tonic::Status> {
        let request = api::ContainerStatsRequest {
            container_id: id.to_string(),
        };
        call!(self, runtime, container_stats, request)
            .map(|r| r.stats.expect("ContainerStats without stats"))
    }

    /// `UpdateContainerResources` of container `id`: its Linux resources become `resources`.
    pub fn update_container_resources(
        &mut self,
        id: &str,
        resources: api::LinuxContainerResources,
    ) -> Result<(), tonic::Status> {
        let request = api::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(resources),
            ..Default::default()
        };
        call!(self, runtime, update_container_resources, request).map(|_| ())
    }

    /// `ContainerStatus` of container `id`.
    pub fn container_status(&mut self, id: &str) -> Result<api::ContainerStatus, tonic::Status> {
        let request = api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        call!(self, runtime, container_status, request)
            .map(|r| r.status.expect("ContainerStatus without status"))
    }

    /// `StopContainer`, killing it after `timeout` seconds.
    pub fn stop_container(&mut self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let request = api::StopContainerRequest {
            container_id: id.to_string(),
            timeout,
        };
        call!(self, runtime, stop_container, request).map(|_| ())
    }

    /// `RemoveContainer`.
    pub fn remove_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = api::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        call!(self, runtime, remove_container, request).map(|_| ())
    }

    /// `StopPodSandbox`.
    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = api::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        call!(self, runtime, stop_pod_sandbox, request).map(|_| ())
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        call!(self, runtime, remove_pod_sandbox, request).map(|_| ())
    }

    /// Every pod the runtime knows, in any state.
    pub fn list_pod_sandboxes(&mut self) -> Result<Vec<api::PodSandbox>, tonic::Status> {
        let request = api::ListPodSandboxRequest { filter: None };
        call!(self, runtime, list_pod_sandbox, request).map(|r| r.items)
    }

    /// Every container the runtime knows, in any state.
    pub fn list_containers(&mut self) -> Result<Vec<api::Container>, tonic::Status> {
        let request = api::ListContainersRequest { filter: None };
        call!(self, runtime, list_containers, request).map(|r| r.containers)
    }

    /// Stops and removes every pod (and so every container); errors are ignored. For the
    /// cleanup of a failed test.
    pub fn remove_everything(&mut self) {
        for pod in self.list_pod_sandboxes().unwrap_or_default() {
            let _ = self.stop_pod_sandbox(&pod.id);
            let _ = self.remove_pod_sandbox(&pod.id);
        }
        for container in self.list_containers().unwrap_or_default() {
            let _ = self.stop_container(&container.id, 0);
            let _ = self.remove_container(&container.id);
        }
    }
}

/// An `ImageSpec` of a local image.
pub fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// Namespaces of a pod on the host network: network NODE, IPC shared by the pod, a PID
/// namespace for each container (as the kubelet asks by default).
pub fn host_network_namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Node.into(),
        pid: api::NamespaceMode::Container.into(),
        ipc: api::NamespaceMode::Pod.into(),
        ..Default::default()
    }
}

/// The config of pod `name` on the host network (no CNI plugin is involved), logging its
/// containers' output under `log_dir`, its cgroups under `cgroup_parent`
/// (`Containerd::cgroup_parent`).
pub fn host_network_pod(name: &str, log_dir: &Path, cgroup_parent: &str) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "runv-tests".to_string(),
            attempt: 0,
        }),
        log_directory: log_dir.display().to_string(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_string(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The config of container `name` of a host-network pod, running `command` in `image`; its
/// output goes to `NAME.log` in the pod's log directory.
pub fn container(name: &str, image: &str, command: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|s| (*s).to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
