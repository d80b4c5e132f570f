//! IP address management: the pool's knobs and the warm-target arithmetic the refill loop acts on.

pub mod knobs;
pub mod warm;

pub use knobs::Knobs;
