//! Task events to containerd, in the order they happen: each goes into the publisher's queue
//! when its step is done, and the queue keeps that order.

use std::time::SystemTime;

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;

/// Publishes to containerd's event service.
pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    /// Events for `namespace` through `publisher`.
    pub fn new(publisher: RemotePublisher, namespace: String) -> Self {
        Self {
            publisher,
            namespace,
        }
    }

    /// The containerd namespace the events go to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, error = %e, "publish event");
        }
    }

    /// `/tasks/create`.
    pub async fn created(&self, event: TaskCreate) {
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// `/tasks/start`.
    pub async fn started(&self, container_id: &str, pid: u32) {
        let event = TaskStart {
            container_id: container_id.to_string(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// `/tasks/exec-added`.
    pub async fn exec_added(&self, container_id: &str, exec_id: &str) {
        let event = TaskExecAdded {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// `/tasks/exec-started`.
    pub async fn exec_started(&self, container_id: &str, exec_id: &str, pid: u32) {
        let event = TaskExecStarted {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// `/tasks/paused`.
    pub async fn paused(&self, container_id: &str) {
        let event = TaskPaused {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// `/tasks/resumed`.
    pub async fn resumed(&self, container_id: &str) {
        let event = TaskResumed {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// `/tasks/oom`.
    pub async fn oom(&self, container_id: &str) {
        let event = TaskOOM {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// `/tasks/exit` of the process `id` (the container id for its init process, else the
    /// exec id).
    pub async fn exited(
        &self,
        container_id: &str,
        id: &str,
        pid: u32,
        status: u32,
        at: SystemTime,
    ) {
        let event = TaskExit {
            container_id: container_id.to_string(),
            id: id.to_string(),
            pid,
            exit_status: status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// `/tasks/delete`.
    pub async fn deleted(&self, container_id: &str, pid: u32, status: u32, at: SystemTime) {
        let event = TaskDelete {
            container_id: container_id.to_string(),
            id: container_id.to_string(),
            pid,
            exit_status: status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
            .await;
    }
}

/// A protobuf timestamp.
pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or_default(),
        ..Default::default()
    }
}
