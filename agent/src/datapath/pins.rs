//! The layout of eniflow's pinned objects under its bpffs root:
//! `<root>/<version>/maps/<map>` and `<root>/<version>/links/if<ifindex>_<direction>`.

use std::path::{Path, PathBuf};

use eniflow_common::PIN_VERSION;

use super::Direction;

/// Paths of everything eniflow pins.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    /// `root` is the project directory on bpffs, e.g. `/sys/fs/bpf/eniflow`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The project directory given at construction.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The versioned directory every object lives in.
    pub fn versioned(&self) -> PathBuf {
        self.root.join(PIN_VERSION)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.versioned().join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.versioned().join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// The tcx link of one hook (ifindex rather than name: names can be reused by new links).
    pub fn link(&self, ifindex: u32, direction: Direction) -> PathBuf {
        self.links_dir()
            .join(format!("if{ifindex}_{}", direction.name()))
    }
}
