//! What a batch produces: indices of received frames to send per port (sent in place, in
//! bursts), and frames the pipeline made itself (fragments, ARP requests, released held
//! packets) in a preallocated pool.

use super::packet::{PortId, FRAME_BUF_SIZE, HEADROOM};

/// A frame the pipeline generated, living in an [`EmitPool`] slot.
#[derive(Copy, Clone, Debug)]
pub struct Emitted {
    pub port: PortId,
    slot: u16,
    head: u16,
    len: u16,
}

/// Preallocated buffers for generated frames; emptied at the start of each batch.
pub struct EmitPool {
    bufs: Vec<Box<[u8]>>,
    used: Vec<Emitted>,
}

impl EmitPool {
    pub fn new(slots: usize) -> Self {
        let slots = slots.min(u16::MAX as usize);
        EmitPool {
            bufs: (0..slots).map(|_| vec![0u8; FRAME_BUF_SIZE].into_boxed_slice()).collect(),
            used: Vec::with_capacity(slots),
        }
    }

    /// Whether a frame can still be emitted in this batch.
    pub fn has_room(&self) -> bool {
        self.used.len() < self.bufs.len()
    }

    /// The next free buffer (index, whole buffer), or `None` when the pool is exhausted.
    /// The frame written into it is committed with [`EmitPool::commit`].
    pub fn next_free(&mut self) -> Option<(usize, &mut [u8])> {
        let i = self.used.len();
        self.bufs.get_mut(i).map(|b| (i, &mut b[..]))
    }

    /// Commits the frame at `buf[head..head + len]` of slot `slot` (from `next_free`).
    pub fn commit(&mut self, slot: usize, port: PortId, head: usize, len: usize) {
        debug_assert_eq!(slot, self.used.len());
        debug_assert!(head + len <= FRAME_BUF_SIZE);
        self.used.push(Emitted { port, slot: slot as u16, head: head as u16, len: len as u16 });
    }

    /// Copies `frame` into a free slot (behind the usual headroom) and commits it.
    pub fn push_copy(&mut self, port: PortId, frame: &[u8]) -> bool {
        let Some((slot, buf)) = self.next_free() else { return false };
        if HEADROOM + frame.len() > buf.len() {
            return false;
        }
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        self.commit(slot, port, HEADROOM, frame.len());
        true
    }

    pub fn clear(&mut self) {
        self.used.clear();
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// The generated frames in order, with their output ports.
    pub fn frames(&self) -> impl Iterator<Item = (PortId, &[u8])> + '_ {
        self.used.iter().map(|e| {
            let b = &self.bufs[e.slot as usize];
            (e.port, &b[e.head as usize..(e.head + e.len) as usize])
        })
    }
}

/// Per-port lists of received frames to transmit, by index into the caller's slice.
pub struct Output {
    tx: Vec<Vec<u32>>,
    pub emitted: EmitPool,
}

impl Output {
    pub fn new(ports: usize, batch: usize, emit_slots: usize) -> Self {
        Output { tx: (0..ports).map(|_| Vec::with_capacity(batch)).collect(), emitted: EmitPool::new(emit_slots) }
    }

    /// Makes room for `ports` ports (only grows when the port count grows: a control-plane
    /// event, not per packet) and empties every list.
    pub fn reset(&mut self, ports: usize, batch: usize) {
        while self.tx.len() < ports {
            self.tx.push(Vec::with_capacity(batch));
        }
        for l in &mut self.tx {
            l.clear();
        }
        self.emitted.clear();
    }

    #[inline]
    pub(crate) fn push(&mut self, port: PortId, idx: u32) {
        if let Some(l) = self.tx.get_mut(port as usize) {
            l.push(idx);
        }
    }

    /// Indices (into the processed slice) of frames to send on `port`, in arrival order.
    pub fn tx(&self, port: PortId) -> &[u32] {
        self.tx.get(port as usize).map(|v| &v[..]).unwrap_or(&[])
    }

    /// Ports that have something to send.
    pub fn active_ports(&self) -> impl Iterator<Item = PortId> + '_ {
        self.tx.iter().enumerate().filter(|(_, l)| !l.is_empty()).map(|(p, _)| p as PortId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_pool_is_bounded_and_ordered() {
        let mut p = EmitPool::new(2);
        assert!(p.push_copy(1, b"first"));
        assert!(p.push_copy(3, b"second"));
        assert!(!p.push_copy(1, b"third"));
        let got: Vec<_> = p.frames().collect();
        assert_eq!(got, vec![(1, &b"first"[..]), (3, &b"second"[..])]);
        p.clear();
        assert!(p.is_empty() && p.push_copy(0, b"again"));
    }

    #[test]
    fn output_groups_by_port() {
        let mut o = Output::new(2, 8, 0);
        o.push(1, 0);
        o.push(0, 1);
        o.push(1, 2);
        o.push(9, 3); // unknown port: ignored
        assert_eq!(o.tx(1), &[0, 2]);
        assert_eq!(o.tx(0), &[1]);
        assert_eq!(o.active_ports().collect::<Vec<_>>(), vec![0, 1]);
        o.reset(3, 8);
        assert!(o.tx(1).is_empty() && o.tx(2).is_empty());
    }
}
