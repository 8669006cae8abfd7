//! The forwarding pipeline over a batch of frames, and the state it forwards with.

pub mod affinity;
#[cfg(feature = "testing")]
pub mod bench;
pub mod frag;
pub mod observe;
pub mod output;
pub mod packet;
pub mod pipeline;
pub mod quiesce;
#[cfg(feature = "testing")]
pub mod sim;
pub mod state;

pub use output::Output;
pub use packet::{Frame, PacketBuf, Pkt, PortId, BIG_BUF_SIZE, FRAME_BUF_SIZE, HEADROOM, MAX_BATCH, MAX_PORTS};
pub use pipeline::{Pipeline, PipelineConfig, Verdict};
pub use state::{Endpoint, IpipMode, NextHop, PortInfo, PortKind, Shared, Snapshot, SnapshotError};
