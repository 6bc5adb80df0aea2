//! StartContainer: lets the init process exec the container's process.

use super::sync::{FromInit, InitFailure, ToInit};
use super::{Container, Lifecycle};
use crate::error::AgentError;

impl Container {
    /// Sends the start message and waits until the exec happened; returns the pid.
    pub async fn start(&self) -> Result<i32, AgentError> {
        let mut channel = {
            let mut lifecycle = self.lifecycle();
            match std::mem::replace(&mut *lifecycle, Lifecycle::Starting) {
                Lifecycle::Created(channel) => channel,
                other => {
                    *lifecycle = other;
                    return Err(self.wrong_state("is already started"));
                }
            }
        };
        let result = async {
            if self.exit_status().is_some() {
                return Err(self.wrong_state("has exited"));
            }
            let sync_err = |source| AgentError::Sync {
                id: self.id.clone(),
                source,
            };
            channel.send(&ToInit::Start).await.map_err(sync_err)?;
            match channel.recv().await.map_err(sync_err)? {
                None => Ok(self.pid.as_raw()),
                Some(FromInit::Failed(failure)) => Err(AgentError::Init {
                    id: self.id.clone(),
                    failure,
                }),
                Some(other) => Err(AgentError::Init {
                    id: self.id.clone(),
                    failure: InitFailure::internal(format!("unexpected {other:?} at start")),
                }),
            }
        }
        .await;
        *self.lifecycle() = Lifecycle::Started;
        result
    }

    pub(super) fn wrong_state(&self, state: &'static str) -> AgentError {
        AgentError::WrongState {
            id: self.id.clone(),
            state,
        }
    }
}
