//! What the daemon knows about its ports and threads beyond the forwarding snapshot: the
//! uplink's link state and XDP attachment, pod TAPs found gone, whether the workers run. The
//! daemon's timer writes it; `vrouterctl ports`, the metrics and `/healthz` read it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::worker::{PortSet, TxTarget};

// Defined with the ports (the workers read it too).
pub use crate::port::LinkState;

/// How the uplink's AF_XDP sockets are attached.
#[derive(Clone, Debug)]
pub struct UplinkInfo {
    pub device: String,
    /// `native` or `generic`.
    pub xdp_mode: &'static str,
    pub zero_copy: bool,
}

/// Shared between the daemon's timer (writer), the workers (read the uplink's link state) and
/// the control socket (reader).
pub struct NodeStatus {
    /// The uplink's link state ([`LinkState`] as u8). The workers read it per TX burst.
    link: Arc<AtomicU8>,
    /// Link state changes seen since start.
    pub link_changes: AtomicU64,
    /// Times the uplink's XDP program was found detached (and put back when possible).
    pub xdp_lost: AtomicU64,
    /// False once a worker has exited or before they start.
    pub workers_running: AtomicBool,
    pub uplink: OnceLock<UplinkInfo>,
    /// The ports as the workers see them (for pod TAPs found gone).
    pub ports: Arc<ArcSwap<PortSet>>,
}

impl NodeStatus {
    pub fn new(ports: Arc<ArcSwap<PortSet>>) -> NodeStatus {
        NodeStatus {
            link: Arc::new(AtomicU8::new(LinkState::Unknown as u8)),
            link_changes: AtomicU64::new(0),
            xdp_lost: AtomicU64::new(0),
            workers_running: AtomicBool::new(false),
            uplink: OnceLock::new(),
            ports,
        }
    }

    /// The cell the workers read the uplink's state from.
    pub fn link_cell(&self) -> Arc<AtomicU8> {
        self.link.clone()
    }

    pub fn link(&self) -> LinkState {
        LinkState::from_u8(self.link.load(Relaxed))
    }

    /// Records `now`; returns the previous state if it changed from a known one (the first
    /// reading is not a change).
    pub fn set_link(&self, now: LinkState) -> Option<LinkState> {
        let before = LinkState::from_u8(self.link.swap(now as u8, Relaxed));
        (before != now && before != LinkState::Unknown).then(|| {
            self.link_changes.fetch_add(1, Relaxed);
            before
        })
    }

    /// Whether port `slot` has a TAP the kernel removed under us (deleted inside the pod, or
    /// the pod's namespace destroyed).
    pub fn port_gone(&self, slot: usize) -> bool {
        matches!(self.ports.load().targets.get(slot), Some(TxTarget::Tap(t)) if t.is_gone())
    }

    /// A port's link state for `ports`: the uplink's as followed, a TAP's `down` once gone.
    pub fn port_link(&self, slot: usize, is_uplink: bool) -> LinkState {
        if is_uplink {
            self.link()
        } else if self.port_gone(slot) {
            LinkState::Down
        } else {
            LinkState::Up
        }
    }
}
