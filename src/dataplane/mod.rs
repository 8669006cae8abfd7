//! The forwarding pipeline over a batch of frames.
