//! The vhost-user-fs frontend: the guest sees a virtio-fs device whose queues are served by
//! virtiofsd. runv-vmm shares guest memory with it (the memfd of each region), hands it the
//! queue addresses and the ioeventfds as kick fds, and turns its call fds into interrupts.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use crate::metrics::DeviceMetrics;

/// Longest tag the virtio-fs config space holds.
pub const TAG_MAX_LEN: usize = 36;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// One hiprio queue and one request queue.
const QUEUE_SIZES: &[u16] = &[1024, 1024];

/// Errors while connecting to the backend.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or too long.
    #[error("virtio-fs tag must be 1 to {TAG_MAX_LEN} bytes, got {0:?}")]
    Tag(String),
    /// The backend socket cannot be reached.
    #[error("Cannot connect to the vhost-user-fs backend at {0}")]
    Connect(String, #[source] vhost::Error),
    /// A vhost-user request failed.
    #[error("vhost-user request {0} failed")]
    Request(&'static str, #[source] vhost::Error),
    /// eventfd/epoll setup failed.
    #[error("Cannot set up vhost-user-fs events")]
    Events(#[source] std::io::Error),
    /// Guest memory cannot be shared with the backend.
    #[error("Cannot share guest memory with the backend: {0}")]
    Memory(String),
}

/// A virtio-fs device backed by virtiofsd.
pub struct VhostUserFs {
    frontend: Frontend,
    tag: [u8; TAG_MAX_LEN],
    backend_features: u64,
    acked_features: u64,
    call_evts: Vec<EventFd>,
    epoll: Epoll,
    interrupt: Option<Arc<VirtioInterrupt>>,
    _queues: Vec<Queue>,
    metrics: Arc<DeviceMetrics>,
}

impl std::fmt::Debug for VhostUserFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserFs").finish()
    }
}

fn req<T>(what: &'static str, r: vhost::Result<T>) -> Result<T, FsError> {
    r.map_err(|e| FsError::Request(what, e))
}

impl VhostUserFs {
    /// Connects to virtiofsd at `socket` and exports it to the guest as `tag`.
    pub fn new(socket: &Path, tag: &str, metrics: Arc<DeviceMetrics>) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_MAX_LEN {
            return Err(FsError::Tag(tag.to_string()));
        }
        let mut tag_bytes = [0u8; TAG_MAX_LEN];
        tag_bytes[..tag.len()].copy_from_slice(tag.as_bytes());
        let frontend = Frontend::connect(socket, QUEUE_SIZES.len() as u64)
            .map_err(|e| FsError::Connect(socket.display().to_string(), e))?;
        req("SET_OWNER", frontend.set_owner())?;
        let backend_features = req("GET_FEATURES", frontend.get_features())?;
        let epoll = Epoll::new().map_err(FsError::Events)?;
        let mut call_evts = Vec::new();
        for i in 0..QUEUE_SIZES.len() {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::Events)?;
            epoll
                .ctl(
                    ControlOperation::Add,
                    evt.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, i as u64),
                )
                .map_err(FsError::Events)?;
            call_evts.push(evt);
        }
        Ok(VhostUserFs {
            frontend,
            tag: tag_bytes,
            backend_features,
            acked_features: 0,
            call_evts,
            epoll,
            interrupt: None,
            _queues: Vec::new(),
            metrics,
        })
    }

    fn config_space(&self) -> [u8; TAG_MAX_LEN + 4] {
        let mut c = [0u8; TAG_MAX_LEN + 4];
        c[..TAG_MAX_LEN].copy_from_slice(&self.tag);
        // num_request_queues
        c[TAG_MAX_LEN..].copy_from_slice(&1u32.to_le_bytes());
        c
    }

    fn setup_backend(&mut self, ctx: &ActivateContext) -> Result<(), FsError> {
        let mut features = self.acked_features;
        let protocol = self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        if protocol {
            features |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        req("SET_FEATURES", self.frontend.set_features(features))?;
        if protocol {
            let offered = req(
                "GET_PROTOCOL_FEATURES",
                self.frontend.get_protocol_features(),
            )?;
            let wanted =
                offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            req(
                "SET_PROTOCOL_FEATURES",
                self.frontend.set_protocol_features(wanted),
            )?;
        }
        let mem = &ctx.mem;
        let mut regions = Vec::new();
        for region in mem.iter() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| FsError::Memory(e.to_string()))?;
            let Some(fo) = region.file_offset() else {
                return Err(FsError::Memory("guest memory is not file backed".into()));
            };
            regions.push(VhostUserMemoryRegionInfo {
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                mmap_offset: fo.start(),
                mmap_handle: fo.file().as_raw_fd(),
            });
        }
        req("SET_MEM_TABLE", self.frontend.set_mem_table(&regions))?;
        let host_addr = |a: u64| -> Result<u64, FsError> {
            mem.get_host_address(GuestAddress(a))
                .map(|p| p as u64)
                .map_err(|e| FsError::Memory(e.to_string()))
        };
        for (i, q) in ctx.queues.iter().enumerate() {
            req("SET_VRING_NUM", self.frontend.set_vring_num(i, q.size()))?;
            let cfg = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host_addr(q.desc_table())?,
                used_ring_addr: host_addr(q.used_ring())?,
                avail_ring_addr: host_addr(q.avail_ring())?,
                log_addr: None,
            };
            req("SET_VRING_ADDR", self.frontend.set_vring_addr(i, &cfg))?;
            req("SET_VRING_BASE", self.frontend.set_vring_base(i, 0))?;
            req(
                "SET_VRING_CALL",
                self.frontend.set_vring_call(i, &self.call_evts[i]),
            )?;
            req(
                "SET_VRING_KICK",
                self.frontend.set_vring_kick(i, &ctx.queue_evts[i]),
            )?;
            if protocol {
                req("SET_VRING_ENABLE", self.frontend.set_vring_enable(i, true))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for VhostUserFs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        (self.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES) | VIRTIO_F_VERSION_1
    }
    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: ctx.queues.len(),
            });
        }
        self.setup_backend(&ctx)
            .map_err(|e| ActivateError::VhostUser(e.to_string()))?;
        self.interrupt = Some(ctx.interrupt);
        self._queues = ctx.queues;
        Ok(())
    }
    fn process_queue(&mut self, _index: usize) {}
    fn polls_queue_events(&self) -> bool {
        false
    }
    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }
    fn process_backend(&mut self) {
        let mut events = [EpollEvent::default(); 4];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        let mut fired = false;
        for ev in &events[..n] {
            if let Some(evt) = usize::try_from(ev.data())
                .ok()
                .and_then(|i| self.call_evts.get(i))
            {
                fired |= evt.read().is_ok();
            }
        }
        if fired {
            self.metrics.requests.inc();
            if let Some(irq) = &self.interrupt {
                irq.signal_used_queue();
            }
        }
    }
}
