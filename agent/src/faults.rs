//! Fault injection for the lab's tests (the `fault-injection` feature, which the tests crate
//! turns on; the release build compiles it out): ENIFLOW_FAULTS names steps of the ADD and DEL
//! paths, each of which fails once, so a test can prove that every failure unwinds.

/// A step that was told to fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected fault at {0}")]
pub struct Injected(pub &'static str);

/// Steps that can be made to fail, in the order an ADD (then a DEL) passes them.
pub const STEPS: &[&str] = &[
    "take",
    "checkpoint",
    "veth",
    "pod-address",
    "attach",
    "map-pod-stats",
    "map-veths",
    "map-pods",
    "unwire",
];

/// Fails once if ENIFLOW_FAULTS names `step`.
#[cfg(feature = "fault-injection")]
pub fn inject(step: &'static str) -> Result<(), Injected> {
    use std::{collections::BTreeSet, sync::Mutex};
    static ARMED: Mutex<Option<BTreeSet<String>>> = Mutex::new(None);
    let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
    let armed = armed.get_or_insert_with(|| {
        std::env::var("ENIFLOW_FAULTS")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if armed.remove(step) {
        tracing::warn!("fault injection: failing step {step} once");
        return Err(Injected(step));
    }
    Ok(())
}

/// Without the feature, nothing ever fails here.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn inject(_step: &'static str) -> Result<(), Injected> {
    Ok(())
}
