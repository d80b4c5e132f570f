//! The eBPF data plane as the agent sees it: load the embedded object with its maps pinned,
//! attach one program per hook, re-adopt what an earlier agent attached, and remove it all.

mod attach;
mod forwarding;
mod pins;
mod pods;
pub mod status;
pub mod tc;
mod uninstall;

use std::{collections::BTreeSet, fmt, io, path::Path};

use aya::{
    maps::{HashMap, MapData, PerCpuHashMap},
    programs::{tc::TcAttachType, SchedClassifier},
    Ebpf, EbpfLoader,
};
use eniflow_common::{
    maps, programs, Attachment, IfaceKey, IfaceStats, DIRECTION_EGRESS, DIRECTION_INGRESS,
};

pub use attach::{AttachMode, Outcome};
pub use forwarding::{
    read_hook_drops, read_pod_stats, read_pods, BranchLink, EniPort, Forwarding, Modes, PodPort,
};
pub use pins::Pins;
pub use pods::{KnownPod, Plane};
pub use uninstall::uninstall;

/// The tc programs, built by `cargo xtask build-ebpf` and embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("ENIFLOW_EBPF_EMBED"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Bpffs(#[from] crate::bpffs::BpffsError),
    #[error("cannot create {0}: {1}")]
    Dir(std::path::PathBuf, io::Error),
    #[error("cannot load the tc programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("program {0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    #[error("interface {0}: {1}")]
    Interface(String, io::Error),
    #[error("{hook}: {message}")]
    Attach { hook: String, message: String },
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink socket: {0}")]
    NetlinkSocket(io::Error),
}

/// A tc direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    fn code(self) -> u32 {
        match self {
            Direction::Ingress => DIRECTION_INGRESS,
            Direction::Egress => DIRECTION_EGRESS,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            DIRECTION_INGRESS => Some(Direction::Ingress),
            DIRECTION_EGRESS => Some(Direction::Egress),
            _ => None,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// One tc hook of one interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hook {
    pub ifname: String,
    pub ifindex: u32,
    pub direction: Direction,
    /// The program eniflow runs there.
    pub program: &'static str,
}

impl Hook {
    /// A hook of an ENI, resolved by name in the current network namespace.
    pub fn eni(ifname: &str, direction: Direction) -> Result<Self, DatapathError> {
        let program = match direction {
            Direction::Ingress => programs::ENI_INGRESS,
            Direction::Egress => programs::ENI_EGRESS,
        };
        Self::resolve(ifname, direction, program)
    }

    /// A hook of a pod's host veth (found when it was made): its tc ingress carries what the
    /// pod sends.
    pub fn pod_veth(ifname: &str, ifindex: u32, direction: Direction) -> Self {
        let program = match direction {
            Direction::Ingress => programs::POD_EGRESS,
            Direction::Egress => programs::POD_INGRESS,
        };
        Self {
            ifname: ifname.to_owned(),
            ifindex,
            direction,
            program,
        }
    }

    /// Whether this is a pod's veth (rather than an ENI).
    fn on_pod_veth(&self) -> bool {
        [programs::POD_EGRESS, programs::POD_INGRESS].contains(&self.program)
    }

    fn resolve(
        ifname: &str,
        direction: Direction,
        program: &'static str,
    ) -> Result<Self, DatapathError> {
        Ok(Self {
            ifname: ifname.to_owned(),
            ifindex: ifindex(ifname)?,
            direction,
            program,
        })
    }

    fn key(&self) -> IfaceKey {
        IfaceKey {
            ifindex: self.ifindex,
            direction: self.direction.code(),
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (ifindex {}) {}",
            self.ifname,
            self.ifindex,
            self.direction.name()
        )
    }
}

/// The ifindex of `ifname` in the current network namespace.
pub fn ifindex(ifname: &str) -> Result<u32, DatapathError> {
    crate::netlink::ifindex(ifname).map_err(|e| DatapathError::Interface(ifname.into(), e))
}

/// The loaded object, its pinned maps, and where things are pinned.
pub struct Datapath {
    ebpf: Ebpf,
    pins: Pins,
    mode: AttachMode,
    /// In auto mode, pods' veths on clsact (see `AttachMode::Auto`).
    pod_veths_on_clsact: bool,
    nl: rtnetlink::Handle,
}

impl Datapath {
    /// Loads the embedded object, reusing maps already pinned under `pins` (so counters and
    /// state survive restarts) and pinning the ones that are new.
    pub fn load(pins: Pins, mode: AttachMode) -> Result<Self, DatapathError> {
        crate::bpffs::ensure(pins.root())?;
        let maps_dir = pins.maps_dir();
        std::fs::create_dir_all(&maps_dir).map_err(|e| DatapathError::Dir(maps_dir.clone(), e))?;
        let links_dir = pins.links_dir();
        std::fs::create_dir_all(&links_dir).map_err(|e| DatapathError::Dir(links_dir, e))?;
        let mut loader = EbpfLoader::new();
        let map_paths: Vec<_> = maps::ALL
            .iter()
            .map(|name| (*name, pins.map(name)))
            .collect();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(OBJECT)?;
        let nl = crate::netlink::connect().map_err(DatapathError::NetlinkSocket)?;
        Ok(Self {
            ebpf,
            pins,
            mode,
            pod_veths_on_clsact: false,
            nl,
        })
    }

    /// In auto mode, attaches to pods' veths with clsact rather than tcx: a policy agent's
    /// cls_bpf filter there must run before eniflow's, and tcx programs run before any filter.
    pub fn put_pod_veths_on_clsact(&mut self) {
        self.pod_veths_on_clsact = true;
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// Attaches eniflow's ENI programs to both hooks of `ifname`, re-adopting what is already
    /// there. Idempotent.
    pub async fn attach_eni(
        &mut self,
        ifname: &str,
    ) -> Result<Vec<(Hook, Outcome)>, DatapathError> {
        let mut done = Vec::new();
        for direction in Direction::BOTH {
            let hook = Hook::eni(ifname, direction)?;
            let outcome = attach::ensure(self, &hook).await?;
            tracing::info!("{hook}: {outcome}");
            done.push((hook, outcome));
        }
        Ok(done)
    }

    /// Attaches the pod programs to both hooks of a pod's host veth (re-adopting what is
    /// there). On failure nothing stays attached.
    pub async fn attach_pod_veth(
        &mut self,
        ifname: &str,
        ifindex: u32,
    ) -> Result<(), DatapathError> {
        crate::faults::inject("attach").map_err(|e| DatapathError::Attach {
            hook: ifname.to_owned(),
            message: e.to_string(),
        })?;
        for direction in Direction::BOTH {
            let hook = Hook::pod_veth(ifname, ifindex, direction);
            if let Err(e) = attach::ensure(self, &hook).await {
                self.forget_hooks(ifindex);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Forgets the attachments of an interface that is gone (its programs went with it): the
    /// records and link pins, so a reused ifindex starts clean.
    pub fn forget_hooks(&mut self, ifindex: u32) {
        for direction in Direction::BOTH {
            let _ = std::fs::remove_file(self.pins.link(ifindex, direction));
            if let Ok(mut records) = self.attachments() {
                let _ = records.remove(&IfaceKey {
                    ifindex,
                    direction: direction.code(),
                });
            }
        }
    }

    /// Forgets the attachments of every interface that no longer exists: a pod whose ADD was cut
    /// short by a crash, or that was deleted while the agent was down, leaves records and link
    /// pins nothing else knows of. Returns the ifindexes forgotten.
    pub fn forget_gone_interfaces(&mut self) -> Vec<u32> {
        let mut recorded: BTreeSet<u32> = self
            .attachments()
            .map(|records| records.keys().flatten().map(|k| k.ifindex).collect())
            .unwrap_or_default();
        let pins = std::fs::read_dir(self.pins.links_dir())
            .into_iter()
            .flatten();
        recorded.extend(pins.flatten().filter_map(|pin| {
            let name = pin.file_name();
            let rest = name.to_str()?.strip_prefix("if")?;
            rest.split('_').next()?.parse::<u32>().ok()
        }));
        let gone: Vec<u32> = recorded
            .into_iter()
            .filter(|i| crate::netlink::ifname(*i).is_none())
            .collect();
        for ifindex in &gone {
            self.forget_hooks(*ifindex);
        }
        gone
    }

    fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(DatapathError::Program(
                name,
                aya::programs::ProgramError::NotLoaded,
            ))?
            .try_into()
            .map_err(|e| DatapathError::Program(name, e))?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|e| DatapathError::Program(name, e))?;
        }
        Ok(program)
    }

    fn attachments(
        &mut self,
    ) -> Result<HashMap<&mut MapData, IfaceKey, Attachment>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(maps::ATTACHMENTS)
            .ok_or(DatapathError::Map(
                maps::ATTACHMENTS,
                aya::maps::MapError::InvalidName {
                    name: maps::ATTACHMENTS.into(),
                },
            ))?;
        HashMap::try_from(map).map_err(|e| DatapathError::Map(maps::ATTACHMENTS, e))
    }
}

/// Packets and bytes seen by eniflow's program on each hook, summed over CPUs, read from the
/// pinned map (works while the agent is down).
pub fn read_stats(pins: &Pins) -> Result<Vec<(IfaceKey, IfaceStats)>, DatapathError> {
    let data = MapData::from_pin(pins.map(maps::IFACE_STATS))
        .map_err(|e| DatapathError::Map(maps::IFACE_STATS, e))?;
    let map = aya::maps::Map::PerCpuHashMap(data);
    let stats: PerCpuHashMap<_, IfaceKey, IfaceStats> =
        PerCpuHashMap::try_from(map).map_err(|e| DatapathError::Map(maps::IFACE_STATS, e))?;
    let mut out = Vec::new();
    for entry in stats.iter() {
        let (key, per_cpu) = entry.map_err(|e| DatapathError::Map(maps::IFACE_STATS, e))?;
        let total = per_cpu
            .iter()
            .fold(IfaceStats::default(), |acc, s| IfaceStats {
                packets: acc.packets + s.packets,
                bytes: acc.bytes + s.bytes,
            });
        out.push((key, total));
    }
    Ok(out)
}

/// What eniflow attached, per hook, as recorded in the pinned `attachments` map.
pub fn read_attachments(pins: &Pins) -> Result<Vec<(IfaceKey, Attachment)>, DatapathError> {
    let Some(map) = pinned_attachments(pins)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in map.iter() {
        out.push(entry.map_err(|e| DatapathError::Map(maps::ATTACHMENTS, e))?);
    }
    out.sort_by_key(|(key, _)| (key.ifindex, key.direction));
    Ok(out)
}

fn direction_of(key: &IfaceKey) -> Option<Direction> {
    Direction::from_code(key.direction)
}

fn pinned_attachments(
    pins: &Pins,
) -> Result<Option<HashMap<MapData, IfaceKey, Attachment>>, DatapathError> {
    let path = pins.map(maps::ATTACHMENTS);
    if !Path::new(&path).exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).map_err(|e| DatapathError::Map(maps::ATTACHMENTS, e))?;
    let map = aya::maps::Map::HashMap(data);
    Ok(Some(
        HashMap::try_from(map).map_err(|e| DatapathError::Map(maps::ATTACHMENTS, e))?,
    ))
}
