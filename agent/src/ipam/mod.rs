//! IP address management: the node's pool of VPC addresses. Pods take from the pool and give back
//! to it without waiting on EC2 (`assign`, `release`, each persisted before it is acknowledged);
//! the refill loop (`refill`) moves the pool towards its warm targets with EC2 calls.

pub mod checkpoint;
pub mod eniconfig;
pub mod knobs;
pub mod leaks;
pub mod pool;
mod refill;
pub mod subnets;
pub mod warm;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

pub use knobs::Knobs;
pub use pool::{Allocation, Owner, PoolError};

use crate::{
    ec2::{Ec2, Ec2Error, Eni, Subnet},
    files::now_ms,
    instance::Instance,
    limits::{self, InstanceLimits, ADDRESSES_PER_PREFIX},
    max_pods,
    metrics::AddStep,
};
use checkpoint::{CheckpointError, Cooling};
use pool::Pool;

/// How the pool is run, beyond VPC CNI's knobs.
#[derive(Clone, Debug)]
pub struct Config {
    pub knobs: Knobs,
    /// eniflow's checkpoint.
    pub checkpoint: PathBuf,
    /// VPC CNI's checkpoint, imported when eniflow has none yet.
    pub vpc_cni_checkpoint: Option<PathBuf>,
    /// Custom networking: the node's ENIConfig (its subnet and security groups for pod ENIs).
    pub custom_network: Option<eniconfig::EniConfig>,
    /// With ENABLE_POD_ENI, create and attach the trunk ENI when none is attached (self-managed
    /// clusters; on EKS the VPC resource controller attaches it).
    pub create_trunk: bool,
    /// CLUSTER_NAME: tagged on new ENIs.
    pub cluster_name: Option<String>,
    /// An ENI younger than this is never detached (VPC CNI: one minute).
    pub eni_min_age: Duration,
    /// At most one give-back (addresses, prefixes or ENIs) per interval (VPC CNI: 30 s).
    pub release_interval: Duration,
    /// The refill loop's period when nothing wakes it (VPC CNI: 5 s).
    pub refill_period: Duration,
    /// After a subnet runs out of addresses (or of free /28s), how long it is passed over
    /// (VPC CNI: 120 s).
    pub subnet_pause: Duration,
    /// How often the refill loop compares the pool with EC2's attached ENIs (VPC CNI: 1 min).
    pub reconcile_period: Duration,
    /// How often the refill loop sweeps leaked ENIs (VPC CNI: hourly); None: never.
    pub leak_sweep: Option<Duration>,
    /// How long a held address may be missing from EC2's answers before its pod is told it
    /// lost it: EC2's view lags an assign by seconds, and one answer is not proof.
    pub lost_grace: Duration,
    /// Free addresses a subnet keeps for other nodes: below it the pool stops warm refills
    /// from that subnet, and grows only for a pod that finds it empty. 0: off.
    pub subnet_reserve: u32,
}

impl Config {
    pub fn new(knobs: Knobs, checkpoint: PathBuf) -> Config {
        Config {
            knobs,
            checkpoint,
            vpc_cni_checkpoint: None,
            custom_network: None,
            create_trunk: false,
            cluster_name: None,
            eni_min_age: Duration::from_secs(60),
            release_interval: Duration::from_secs(30),
            refill_period: Duration::from_secs(5),
            subnet_pause: Duration::from_secs(120),
            reconcile_period: Duration::from_secs(60),
            leak_sweep: Some(Duration::from_secs(3600)),
            lost_grace: Duration::from_secs(120),
            subnet_reserve: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error("{0}")]
    Config(String),
}

/// A subnet as the pool last saw it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SubnetNote {
    pub id: String,
    /// From subnet discovery's last DescribeSubnets (None: not looked at since the start).
    pub cidr: Option<String>,
    pub free_addresses: Option<u32>,
    /// Passed over for new ENIs: out of addresses, or of free /28s, this many seconds ago.
    pub full_for_s: Option<u64>,
    pub fragmented_for_s: Option<u64>,
}

/// What a subnet ran out of, so that refill passes over it for the subnet pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortage {
    /// No free address: no new ENI or secondary address there.
    Addresses,
    /// No free /28: single addresses there instead of prefixes.
    Prefixes,
}

impl Shortage {
    pub const ALL: [Shortage; 2] = [Shortage::Addresses, Shortage::Prefixes];

    pub fn name(self) -> &'static str {
        match self {
            Shortage::Addresses => "addresses",
            Shortage::Prefixes => "prefixes",
        }
    }
}

/// Refuses an ENIConfig whose subnet is not in the node's VPC and zone.
async fn check_in_zone(
    ec2: &Ec2,
    instance: &Instance,
    config: &eniconfig::EniConfig,
) -> Result<(), IpamError> {
    let zone = ec2
        .subnets(&instance.vpc_id, &instance.availability_zone)
        .await?;
    if !zone.iter().any(|s| s.id == config.subnet) {
        return Err(IpamError::Config(format!(
            "ENIConfig {:?}: subnet {} is not in the node's VPC {} and zone {}",
            config.name, config.subnet, instance.vpc_id, instance.availability_zone
        )));
    }
    Ok(())
}

/// The node's address pool.
pub struct Ipam {
    ec2: Ec2,
    instance: Instance,
    config: Config,
    limits: InstanceLimits,
    capacity: warm::Capacity,
    /// ENIs the node may have on its default card (MAX_ENI and the instance's limit).
    max_enis: u32,
    pool: Mutex<Pool>,
    last_release: Mutex<Option<Instant>>,
    /// Subnets out of addresses, and subnets out of free /28s, since when.
    full_subnets: Mutex<BTreeMap<String, Instant>>,
    fragmented_subnets: Mutex<BTreeMap<String, Instant>>,
    /// The zone's subnets as subnet discovery last read them (for introspection).
    seen_subnets: Mutex<Vec<Subnet>>,
    wake: tokio::sync::Notify,
    /// Allocations reconcile found lost, until the CNI side unwires their pods.
    lost: Mutex<Vec<Allocation>>,
    lost_found: tokio::sync::Notify,
    /// Set once the refill loop has finished its first pass (whatever its outcome).
    refilled: tokio::sync::watch::Sender<bool>,
    /// The zone's subnets as last read for the reserve, and when (read at most every minute).
    reserve_read: Mutex<Option<(Instant, Vec<Subnet>)>>,
    /// Custom networking's ENIConfig new ENIs follow; a relabelled node or an edited ENIConfig
    /// changes it while the agent runs (`follow_eni_config`).
    eni_config: Mutex<Option<eniconfig::EniConfig>>,
    /// Why the pool could not grow when it last tried (cleared when it grows).
    shortfall: Mutex<Option<Shortfall>>,
    /// Where the node's events go, in a cluster.
    events: std::sync::OnceLock<crate::events::Recorder>,
}

/// Why the pool could not grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// EC2 refused an action for lack of a permission of the node's role.
    Permission { action: &'static str, code: String },
    /// No subnet a new ENI may go to has free addresses.
    SubnetsFull,
    /// The node has all the ENIs it may have.
    EniLimit { max: u32 },
    /// A new ENI could not be attached.
    AttachFailed { eni: String, error: String },
}

impl Shortfall {
    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Shortfall::Permission { .. } => "EC2PermissionDenied",
            Shortfall::SubnetsFull => "SubnetFull",
            Shortfall::EniLimit { .. } => "ENILimitReached",
            Shortfall::AttachFailed { .. } => "ENIAttachFailed",
        }
    }
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shortfall::Permission { action, code } => write!(
                f,
                "EC2 refused {action} ({code}): the node's IAM role needs ec2:{action}"
            ),
            Shortfall::SubnetsFull => {
                write!(f, "the subnets new ENIs may use have no free addresses")
            }
            Shortfall::EniLimit { max } => {
                write!(
                    f,
                    "the node has all {max} ENIs it may attach, and they are full"
                )
            }
            Shortfall::AttachFailed { eni, error } => {
                write!(f, "{eni} could not be attached: {error}")
            }
        }
    }
}

impl Ipam {
    /// Reads the instance's limits and attached ENIs, restores the checkpoint (or imports VPC
    /// CNI's) onto them, and writes it back: allocations whose address is gone are dropped.
    pub async fn start(ec2: Ec2, instance: Instance, config: Config) -> Result<Ipam, IpamError> {
        let limits = match ec2.instance_limits(&instance.instance_type).await {
            Ok(limits) => limits,
            Err(e) if e.is_authorization() => return Err(e.into()),
            Err(e) => {
                let bundled = limits::bundled(&instance.instance_type).ok_or_else(|| {
                    IpamError::Config(format!(
                        "instance type {:?}: DescribeInstanceTypes failed ({e}) and the bundled table does not know it",
                        instance.instance_type
                    ))
                })?;
                tracing::warn!("DescribeInstanceTypes failed ({e}); using the bundled limits");
                bundled
            }
        };
        let knobs = &config.knobs;
        if let Some(custom) = &config.custom_network {
            check_in_zone(&ec2, &instance, custom).await?;
        }
        let opts = max_pods::Options {
            prefix_delegation: knobs.prefix_delegation,
            max_eni: knobs.max_eni,
            custom_networking: config.custom_network.is_some(),
            pod_eni: knobs.pod_eni,
            ..Default::default()
        };
        let computed = max_pods::max_pods(&instance.instance_type, &limits, &opts)
            .map_err(|e| IpamError::Config(format!("ENABLE_PREFIX_DELEGATION/MAX_ENI: {e}")))?;
        let max_pods = knobs.max_pods.unwrap_or(computed);
        let unit = if knobs.prefix_delegation {
            ADDRESSES_PER_PREFIX
        } else {
            1
        };
        let capacity = warm::Capacity {
            per_eni: limits.ipv4_per_eni.saturating_sub(1) * unit,
            max_pods,
        };
        let max_enis = knobs.max_eni.map_or(limits.default_card_enis, |m| {
            m.min(limits.default_card_enis)
        });

        let mut pool = Pool::default();
        let custom = config.custom_network.is_some();
        for eni in ec2.attached_enis(&instance.id).await? {
            let for_pods = refill::serves_pods(&eni, custom);
            pool.add_eni(eni, for_pods);
        }
        let (allocations, cooling) = match checkpoint::load(&config.checkpoint)? {
            Some(c) => (
                c.allocations,
                c.cooling
                    .into_iter()
                    .map(|c| (c.ipv4, c.released_at_ms))
                    .collect(),
            ),
            None => match &config.vpc_cni_checkpoint {
                Some(path) => match checkpoint::import_vpc_cni(path)? {
                    Some(imported) => {
                        tracing::info!(
                            "imported {} allocation(s) from VPC CNI's {}",
                            imported.len(),
                            path.display()
                        );
                        (imported, Vec::new())
                    }
                    None => Default::default(),
                },
                None => Default::default(),
            },
        };
        let gone = pool.restore(allocations, cooling);
        for a in &gone {
            tracing::warn!(
                "dropping the allocation of {} for {:?}: the address is on none of the node's ENIs",
                a.ipv4,
                a.owner
            );
        }
        let custom_network = config.custom_network.clone();
        let ipam = Ipam {
            ec2,
            instance,
            config,
            limits,
            capacity,
            max_enis,
            pool: Mutex::new(pool),
            last_release: Mutex::new(None),
            full_subnets: Mutex::default(),
            fragmented_subnets: Mutex::default(),
            seen_subnets: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            lost: Mutex::new(gone),
            lost_found: tokio::sync::Notify::new(),
            refilled: tokio::sync::watch::Sender::new(false),
            eni_config: Mutex::new(custom_network),
            shortfall: Mutex::new(None),
            reserve_read: Mutex::new(None),
            events: std::sync::OnceLock::new(),
        };
        // ENIs of an ENIConfig the node used before this start are retired as well.
        ipam.retire_other_configs();
        ipam.save(&ipam.lock())?;
        Ok(ipam)
    }

    /// Sends the node's events (ENI limits, attach failures, EC2 refusals) to `recorder`.
    pub fn record_events(&self, recorder: crate::events::Recorder) {
        let _ = self.events.set(recorder);
    }

    /// Notes why the pool could not grow; on the Node too.
    fn note_shortfall(&self, shortfall: Shortfall) {
        if let Some(events) = self.events.get() {
            let kind = crate::events::Kind::Warning;
            events.node(kind, shortfall.reason(), shortfall.to_string());
        }
        *self.shortfall.lock().unwrap_or_else(|e| e.into_inner()) = Some(shortfall);
    }

    fn note_grown(&self) {
        *self.shortfall.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // The subnet has fewer free addresses now: read it again before the next growth.
        *self.reserve_read.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Why a pod found the pool empty, as an Event's (reason, message); None while the refill
    /// is merely catching up.
    pub fn why_empty(&self) -> Option<(&'static str, String)> {
        let assigned = self.counts().assigned;
        if assigned >= self.capacity.max_pods {
            let max = self.capacity.max_pods;
            return Some((
                "NoAddressAvailable",
                format!("no address for the pod: the node's max pods ({max}) are all assigned"),
            ));
        }
        let shortfall = self
            .shortfall
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let reason = match shortfall {
            Shortfall::Permission { .. } => shortfall.reason(),
            _ => "NoAddressAvailable",
        };
        Some((reason, format!("no address for the pod: {shortfall}")))
    }

    /// The ENIConfig new ENIs follow (custom networking), as it is now.
    pub fn eni_config(&self) -> Option<eniconfig::EniConfig> {
        self.eni_config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes new ENIs follow `config` (checked to be in the node's zone first): pod ENIs of
    /// another subnet or other security groups are retired (their pods keep their addresses,
    /// new pods go elsewhere) and given back once idle; the refill makes what is missing.
    pub async fn follow_eni_config(&self, config: eniconfig::EniConfig) -> Result<(), IpamError> {
        if self.eni_config().as_ref() == Some(&config) {
            return Ok(());
        }
        check_in_zone(&self.ec2, &self.instance, &config).await?;
        tracing::info!(
            "custom networking: new ENIs follow ENIConfig {} (subnet {}, security groups {:?})",
            config.name,
            config.subnet,
            config.security_groups
        );
        *self.eni_config.lock().unwrap_or_else(|e| e.into_inner()) = Some(config);
        self.retire_other_configs();
        self.wake.notify_one();
        Ok(())
    }

    fn retire_other_configs(&self) {
        let Some(config) = self.eni_config() else {
            return;
        };
        let groups = if config.security_groups.is_empty() {
            &self.instance.security_groups
        } else {
            &config.security_groups
        };
        let same = |a: &[String], b: &[String]| {
            let set = |l: &[String]| l.iter().cloned().collect::<BTreeSet<String>>();
            set(a) == set(b)
        };
        let retired = self.lock().retire_unless(|eni| {
            eni.subnet_id == config.subnet && same(&eni.security_groups, groups)
        });
        for id in retired {
            tracing::info!(
                "custom networking: {id} is not of ENIConfig {}: its pods stay, new pods go elsewhere, and it goes once idle",
                config.name
            );
        }
    }

    /// Waits for allocations that reconcile found lost (the pool has forgotten them already):
    /// their pods must be unwired before EC2 can hand the address to another pod.
    pub async fn lost_allocations(&self) -> Vec<Allocation> {
        loop {
            let lost = std::mem::take(&mut *self.lost.lock().unwrap_or_else(|e| e.into_inner()));
            if !lost.is_empty() {
                return lost;
            }
            self.lost_found.notified().await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, pool: &Pool) -> Result<(), CheckpointError> {
        checkpoint::save(
            &self.config.checkpoint,
            &checkpoint::Checkpoint {
                version: checkpoint::VERSION.into(),
                allocations: pool.allocations().cloned().collect(),
                cooling: pool
                    .cooling()
                    .map(|(ipv4, released_at_ms)| Cooling {
                        ipv4,
                        released_at_ms,
                    })
                    .collect(),
            },
        )
    }

    /// Gives `owner` an address from the pool (the same one for a repeated request), persisted
    /// before it returns. Never calls EC2.
    pub fn assign(&self, owner: &Owner, pod: (&str, &str)) -> Result<Allocation, IpamError> {
        let mut pool = self.lock();
        if let Some(existing) = pool.allocation(owner) {
            return Ok(existing.clone());
        }
        let metrics = crate::metrics::get();
        let started = Instant::now();
        let now = now_ms();
        pool.expire_cooling(now, self.config.knobs.ip_cooldown);
        let allocation = pool.take(owner, pod, now);
        self.wake.notify_one();
        if let Err(PoolError::Empty { .. }) = &allocation {
            metrics.no_available_address();
        }
        let allocation = allocation?;
        metrics.add_step(AddStep::Address, started.elapsed());
        let started = Instant::now();
        let saved = crate::faults::inject("checkpoint")
            .map_err(|e| CheckpointError::Io {
                path: self.config.checkpoint.clone(),
                source: std::io::Error::other(e),
            })
            .and_then(|()| self.save(&pool));
        metrics.add_step(AddStep::Checkpoint, started.elapsed());
        if let Err(e) = saved {
            pool.untake(owner);
            return Err(e.into());
        }
        Ok(allocation)
    }

    /// Returns `owner`'s address to the pool (to cool first); Ok(None) when it held none.
    pub fn release(&self, owner: &Owner) -> Result<Option<Allocation>, IpamError> {
        let mut pool = self.lock();
        let Some(allocation) = pool.release(owner, now_ms()) else {
            return Ok(None);
        };
        if let Err(e) = self.save(&pool) {
            pool.unrelease(allocation);
            return Err(e.into());
        }
        self.wake.notify_one();
        Ok(Some(allocation))
    }

    /// The pool's counts, after expiring finished cooldowns.
    pub fn counts(&self) -> warm::Pool {
        let mut pool = self.lock();
        pool.expire_cooling(now_ms(), self.config.knobs.ip_cooldown);
        pool.counts()
    }

    pub fn allocation(&self, owner: &Owner) -> Option<Allocation> {
        self.lock().allocation(owner).cloned()
    }

    pub fn allocations(&self) -> Vec<Allocation> {
        self.lock().allocations().cloned().collect()
    }

    /// Every pod address the pool holds, assigned or not.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.lock().pod_addresses()
    }

    /// The ENIs the pool holds (the trunk among them).
    pub fn enis(&self) -> Vec<Eni> {
        self.lock().enis().into_iter().cloned().collect()
    }

    /// Each ENI's share of the pool.
    pub fn shares(&self) -> Vec<pool::EniShare> {
        let mut pool = self.lock();
        pool.expire_cooling(now_ms(), self.config.knobs.ip_cooldown);
        pool.shares()
    }

    /// Subnets out of `what` since when.
    fn pauses(&self, what: Shortage) -> &Mutex<BTreeMap<String, Instant>> {
        match what {
            Shortage::Addresses => &self.full_subnets,
            Shortage::Prefixes => &self.fragmented_subnets,
        }
    }

    /// How long ago each subnet passed over for `what` ran out of it (pauses over are left out).
    fn paused_subnets(&self, what: Shortage) -> BTreeMap<String, Duration> {
        self.pauses(what)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, at)| (id.clone(), at.elapsed()))
            .filter(|(_, ago)| *ago < self.config.subnet_pause)
            .collect()
    }

    /// How many subnets are passed over for `what` now.
    pub fn paused_count(&self, what: Shortage) -> usize {
        self.paused_subnets(what).len()
    }

    /// What the pool knows of each subnet it uses or has looked at.
    pub fn subnets(&self) -> Vec<SubnetNote> {
        let full = self.paused_subnets(Shortage::Addresses);
        let fragmented = self.paused_subnets(Shortage::Prefixes);
        let since =
            |which: &BTreeMap<String, Duration>, id: &str| which.get(id).map(Duration::as_secs);
        let seen = self
            .seen_subnets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut ids: BTreeSet<String> = seen.iter().map(|s| s.id.clone()).collect();
        ids.extend(self.enis().into_iter().map(|e| e.subnet_id));
        ids.into_iter()
            .map(|id| {
                let last = seen.iter().find(|s| s.id == id);
                SubnetNote {
                    cidr: last.map(|s| s.cidr.clone()),
                    free_addresses: last.map(|s| s.available),
                    full_for_s: since(&full, &id),
                    fragmented_for_s: since(&fragmented, &id),
                    id,
                }
            })
            .collect()
    }

    /// The pool's settings in effect.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// ENIs the node may have on its default card (MAX_ENI and the instance's limit).
    pub fn max_enis(&self) -> u32 {
        self.max_enis
    }

    /// Whether the node has its trunk, or a free ENI slot for one.
    pub fn trunk_fits(&self) -> bool {
        let pool = self.lock();
        pool.has_trunk() || (pool.enis().len() as u32) < self.max_enis
    }

    pub fn capacity(&self) -> warm::Capacity {
        self.capacity
    }

    pub fn ec2(&self) -> &Ec2 {
        &self.ec2
    }
}
