//! What the data plane records for `vrouterctl trace` (a [`TraceRecord`] per packet) and
//! `vrouterctl capture` (a [`Captured`] frame, hex bytes in JSON), as the control protocol
//! carries them. vrouter-core's `dataplane::observe` re-exports them.

use serde::{Deserialize, Serialize};

/// What one pipeline run decided for one traced packet, stage by stage.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TraceRecord {
    /// Order of recording across all workers.
    pub seq: u64,
    pub worker: u32,
    /// Port indices are the node's (`dataplane::PortId`).
    pub in_port: u16,
    /// The frame as received (decoded headers).
    pub received: String,
    /// One line per stage that looked at it.
    pub steps: Vec<String>,
    /// `tx`, `punt`, `held`, `consumed` or `drop`.
    pub verdict: String,
    /// The drop reason's stable name, for drops.
    pub drop_reason: Option<String>,
    pub out_port: Option<u16>,
    /// The frame as sent (decoded headers), for `tx`/`punt`.
    pub sent: Option<String>,
    /// The destination looked up in the FIB and the next hop id it gave (the control side
    /// adds the matching route when it shows the record).
    pub lookup: Option<(u32, u16)>,
}

/// Where a captured frame was seen.
#[derive(Copy, Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CapturePoint {
    /// As received, before the pipeline.
    Rx,
    /// As sent, after the pipeline (including frames the router made: ARP, ICMP, fragments).
    Tx,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Captured {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The port's index in the node (`dataplane::PortId`).
    pub port: u16,
    pub point: CapturePoint,
    /// Length on the wire (the data may be cut at the snap length).
    pub orig_len: u32,
    /// The bytes (hex in JSON: half the size of a list of numbers).
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
}

mod hex_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        use std::fmt::Write;
        let mut out = String::with_capacity(b.len() * 2);
        for x in b {
            let _ = write!(out, "{x:02x}");
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 || !s.is_ascii() {
            return Err(D::Error::custom("hex bytes: odd length or not ASCII"));
        }
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(D::Error::custom)).collect()
    }
}
