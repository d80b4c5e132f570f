//! The refill loop: which EC2 calls move the pool towards its warm targets. Growth fills attached
//! ENIs before creating one; give-backs are paced, and an ENI goes back only when it is eniflow's,
//! old enough and idle. The pool's lock is never held across an EC2 call: ADDs go on meanwhile.

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tracing::Instrument;

use super::{subnets, warm::Plan, Allocation, Ipam, IpamError, Shortage};
use crate::{
    ec2::{codes, Ec2Error, Eni, NewEni},
    files::now_ms,
    limits::ADDRESSES_PER_PREFIX,
};

/// The first leak sweep after a start comes within this long: a hundred nodes restarted
/// together sweep at about ten Describes a second, half of EC2's default refill for them.
const FIRST_SWEEP_SPREAD: Duration = Duration::from_secs(10);

/// How long the subnets' free counts are trusted for the reserve.
const RESERVE_REREAD: Duration = Duration::from_secs(60);

/// How long a detach may take before the ENI is left to the leak sweep.
const DETACH_WAIT: Duration = Duration::from_secs(60);

impl Ipam {
    /// One refill step: works out the plan and carries out (part of) it. Returns the plan, so
    /// callers can step until it says Hold.
    pub async fn refill_step(&self) -> Result<Plan, IpamError> {
        if self.config.knobs.pod_eni && self.config.create_trunk && !self.lock().has_trunk() {
            self.add_trunk().await?;
        }
        self.detach_idle_retired().await?;
        let counts = self.counts();
        let plan = super::warm::plan(&self.config.knobs, self.capacity, counts);
        match plan {
            Plan::Hold => {}
            Plan::Grow(addresses) => {
                let ceiling = self.capacity.max_pods.saturating_sub(counts.total);
                let addresses = self.within_reserve(addresses, counts).await?;
                if addresses > 0 {
                    self.grow(addresses, ceiling).await?
                }
            }
            Plan::Release(addresses) if self.release_due() => self.give_back(addresses).await?,
            Plan::ReleaseEnis(n) if self.release_due() => self.detach_enis(n).await?,
            Plan::Release(_) | Plan::ReleaseEnis(_) => {}
        }
        Ok(plan)
    }

    /// Steps until the plan holds or a step changes nothing (node full, subnets paused,
    /// give-backs paced); returns the last plan.
    pub async fn refill(&self) -> Result<Plan, IpamError> {
        loop {
            let before = self.footprint();
            let plan = self.refill_step().await?;
            if plan == Plan::Hold || self.footprint() == before {
                return Ok(plan);
            }
        }
    }

    /// What a refill step can change: the counts and the ENIs.
    fn footprint(&self) -> (super::warm::Pool, usize) {
        (self.counts(), self.lock().enis().len())
    }

    /// Returns once the refill loop has finished its first pass: what a restarted agent asks
    /// EC2 for at start has been asked by then.
    pub async fn first_refill(&self) {
        let mut refilled = self.refilled.subscribe();
        let _ = refilled.wait_for(|done| *done).await;
    }

    /// Refills, then waits for an assign or release (or the period), for ever; sweeps leaked
    /// ENIs when due. Errors are logged and retried after the period; authorization errors say
    /// which permission is missing.
    pub async fn run_refill(self: Arc<Self>) {
        // Every node's agent restarts together after a rollout or a control-plane event: the
        // first sweep (a restarted agent looks for what it leaked before) comes at a random
        // point of FIRST_SWEEP_SPREAD, and each period is jittered, so the nodes' Describe
        // calls spread out instead of arriving in the same second.
        let mut next_sweep = self
            .config
            .leak_sweep
            .map(|every| Instant::now() + every.min(FIRST_SWEEP_SPREAD).mul_f64(fastrand::f64()));
        let mut next_reconcile = Instant::now() + jittered(self.config.reconcile_period);
        loop {
            if Instant::now() >= next_reconcile {
                next_reconcile = Instant::now() + jittered(self.config.reconcile_period);
                crate::metrics::get().reconciled("nodeIPPoolReconcile");
                match self.reconcile().await {
                    Ok(lost) => crate::metrics::get().force_removed(lost.len()),
                    Err(e) => {
                        crate::metrics::get().ipam_error("nodeIPPoolReconcile", &e);
                        tracing::warn!("reconcile: {e}");
                    }
                }
            }
            if let (Some(every), Some(due)) = (self.config.leak_sweep, next_sweep) {
                if Instant::now() >= due {
                    next_sweep = Some(Instant::now() + jittered(every));
                    let cluster = self.config.cluster_name.as_deref();
                    let now = SystemTime::now();
                    match super::leaks::sweep(
                        &self.ec2,
                        cluster,
                        super::leaks::DEFAULT_MIN_AGE,
                        now,
                    )
                    .await
                    {
                        Ok(deleted) => crate::metrics::get().leaked_enis_deleted(deleted.len()),
                        Err(e) => {
                            crate::metrics::get().ipam_error("leakSweep", &e);
                            tracing::warn!("leak sweep: {e}");
                        }
                    }
                }
            }
            let refilled = self
                .refill()
                .instrument(tracing::debug_span!("refill"))
                .await;
            if let Err(e) = &refilled {
                crate::metrics::get().ipam_error("refill", e);
            }
            match refilled {
                Ok(_) => {}
                Err(IpamError::Ec2(e)) if e.is_authorization() => {
                    tracing::error!(
                        "refill: EC2 refused for lack of permission ({e}); check the node role's IAM policy"
                    );
                    let code = e.code.clone().unwrap_or_default();
                    self.note_shortfall(super::Shortfall::Permission {
                        action: e.action,
                        code,
                    });
                }
                Err(e) => tracing::warn!("refill: {e}"),
            }
            self.refilled.send_replace(true);
            let _ = tokio::time::timeout(self.config.refill_period, self.wake.notified()).await;
        }
    }

    fn release_due(&self) -> bool {
        let mut last = self.last_release.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < self.config.release_interval) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn prefix_mode(&self) -> bool {
        self.config.knobs.prefix_delegation
    }

    /// Whether `subnet` is passed over: out of `what` less than the subnet pause ago.
    fn paused(&self, what: Shortage, subnet: &str) -> bool {
        let mut since = self.pauses(what).lock().unwrap_or_else(|e| e.into_inner());
        match since.get(subnet) {
            Some(at) if at.elapsed() < self.config.subnet_pause => true,
            Some(_) => {
                since.remove(subnet);
                false
            }
            None => false,
        }
    }

    fn pause(&self, what: Shortage, subnet: &str, why: &Ec2Error) {
        tracing::warn!(
            "refill: passing over {subnet} for {:?}: {why}",
            self.config.subnet_pause
        );
        crate::metrics::get().subnet_paused(what);
        self.pauses(what)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(subnet.to_owned(), Instant::now());
    }

    /// Prefixes from `subnet`: in prefix mode, unless its free /28s ran out lately (then single
    /// addresses, until the pause is over and prefixes are tried again).
    fn prefixes_in(&self, subnet: &str) -> bool {
        self.prefix_mode() && !self.paused(Shortage::Prefixes, subnet)
    }

    /// Whether growth fills whole ENIs, as VPC CNI does when only WARM_ENI_TARGET is set: one
    /// call fills an ENI instead of one call per pod.
    fn fills_whole_enis(&self) -> bool {
        let knobs = &self.config.knobs;
        !knobs.prefix_delegation
            && knobs.warm_ip_target.is_none()
            && knobs.minimum_ip_target.is_none()
    }

    /// Adds at least `addresses` (whole prefixes in prefix mode), at most `ceiling`: attached
    /// ENIs first, then one new ENI.
    async fn grow(&self, addresses: u32, ceiling: u32) -> Result<(), IpamError> {
        // `left` is what this step asks for: the shortfall, or all that fits when filling ENIs.
        let mut left = if self.fills_whole_enis() {
            ceiling.max(addresses)
        } else {
            addresses
        };
        let mut short = addresses;
        let slots = self.limits.ipv4_per_eni;
        let with_room: Vec<(String, String, u32)> = self
            .lock()
            .growable()
            .iter()
            .map(|e| {
                let room = slots.saturating_sub(used_slots(e));
                (e.id.clone(), e.subnet_id.clone(), room)
            })
            .filter(|(_, _, room)| *room > 0)
            .collect();
        for (eni, subnet, room) in with_room {
            if short == 0 || left == 0 {
                return Ok(());
            }
            if self.paused(Shortage::Addresses, &subnet) {
                continue;
            }
            match self.assign_some(&eni, &subnet, room, left).await {
                Ok(added) => {
                    left = left.saturating_sub(added);
                    short = short.saturating_sub(added);
                }
                // Someone else used slots on it: learn EC2's view; the next step uses it.
                Err(e) if e.is(codes::PRIVATE_IP_ADDRESS_LIMIT_EXCEEDED) => {
                    tracing::warn!(
                        "refill: {eni} is fuller than eniflow knew ({e}); re-reading it"
                    );
                    if let Some(fresh) = self.ec2.eni(&eni).await? {
                        self.lock().add_eni(fresh, true);
                    }
                    return Ok(());
                }
                Err(e) if e.is(codes::INSUFFICIENT_FREE_ADDRESSES_IN_SUBNET) => {
                    self.pause(Shortage::Addresses, &subnet, &e)
                }
                Err(e) => return Err(e.into()),
            }
        }
        if short == 0 || left == 0 {
            return Ok(());
        }
        self.add_eni(left).await
    }

    /// Assigns towards `left` addresses on one ENI with `room` free slots; returns how many
    /// addresses it added.
    async fn assign_some(
        &self,
        eni: &str,
        subnet: &str,
        room: u32,
        left: u32,
    ) -> Result<u32, Ec2Error> {
        if self.prefixes_in(subnet) {
            let want = room.min(left.div_ceil(ADDRESSES_PER_PREFIX));
            match self.ec2.assign(eni, want, true).await {
                Ok(got) => {
                    self.lock().add_blocks(eni, &got, true);
                    if !got.is_empty() {
                        self.note_grown();
                    }
                    return Ok(got.len() as u32 * ADDRESSES_PER_PREFIX);
                }
                Err(e) if e.is(codes::INSUFFICIENT_CIDR_BLOCKS) => {
                    self.pause(Shortage::Prefixes, subnet, &e)
                }
                Err(e) => return Err(e),
            }
        }
        let got = self.ec2.assign(eni, room.min(left), false).await?;
        self.lock().add_blocks(eni, &got, false);
        if !got.is_empty() {
            self.note_grown();
        }
        Ok(got.len() as u32)
    }

    /// How much of `wanted` the refill may take with a subnet reserve (ENIFLOW_SUBNET_RESERVE):
    /// warm refills stop at the reserve (at most what the best subnet the pool draws from has
    /// above it), and a pool with no free address still gets one for the pod waiting on it,
    /// so pods are served until the subnet is truly full.
    async fn within_reserve(
        &self,
        wanted: u32,
        counts: super::warm::Pool,
    ) -> Result<u32, IpamError> {
        let reserve = self.config.subnet_reserve;
        if reserve == 0 {
            return Ok(wanted);
        }
        let mut sources: Vec<String> = self
            .lock()
            .growable()
            .iter()
            .map(|e| e.subnet_id.clone())
            .collect();
        sources.extend(self.candidate_subnets().await?);
        let cached = self
            .reserve_read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let subnets = match cached {
            Some((at, subnets)) if at.elapsed() < RESERVE_REREAD => subnets,
            _ => {
                let subnets = self
                    .ec2
                    .subnets(&self.instance.vpc_id, &self.instance.availability_zone)
                    .await?;
                *self.reserve_read.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), subnets.clone()));
                subnets
            }
        };
        let above = subnets
            .iter()
            .filter(|s| sources.contains(&s.id))
            .map(|s| s.available.saturating_sub(reserve))
            .max()
            .unwrap_or(0);
        let for_pod = u32::from(counts.available() == 0);
        let allowed = wanted.min(above.max(for_pod));
        if allowed < wanted {
            // Every pass while held back: debug, not info.
            tracing::debug!(
                "refill: {allowed} of {wanted} address(es): the subnets {sources:?} keep {reserve} free addresses (ENIFLOW_SUBNET_RESERVE)"
            );
        }
        Ok(allowed)
    }

    /// Security groups for new ENIs: the ENIConfig's, else the primary ENI's.
    fn security_groups(&self) -> Vec<String> {
        match self.eni_config() {
            Some(custom) if !custom.security_groups.is_empty() => custom.security_groups,
            _ => self.instance.security_groups.clone(),
        }
    }

    /// Subnets a new ENI may go to, best first, leaving out those out of addresses lately.
    async fn candidate_subnets(&self) -> Result<Vec<String>, IpamError> {
        let all = if let Some(custom) = self.eni_config() {
            vec![custom.subnet]
        } else if self.config.knobs.subnet_discovery {
            let found = self
                .ec2
                .subnets(&self.instance.vpc_id, &self.instance.availability_zone)
                .await?;
            *self.seen_subnets.lock().unwrap_or_else(|e| e.into_inner()) = found.clone();
            subnets::eligible(
                &found,
                &self.instance.subnet_id,
                self.config.cluster_name.as_deref(),
            )
        } else {
            vec![self.instance.subnet_id.clone()]
        };
        Ok(all
            .into_iter()
            .filter(|s| !self.paused(Shortage::Addresses, s))
            .collect())
    }

    /// Creates an ENI with addresses towards `left` in the best subnet that has them and attaches
    /// it at the lowest free device index of the default card. An ENI that cannot be attached is
    /// deleted again.
    async fn add_eni(&self, left: u32) -> Result<(), IpamError> {
        let Some(device_index) = self.free_device_index(true) else {
            tracing::debug!("refill: the node has its {} ENIs; no more", self.max_enis);
            let max = self.max_enis;
            self.note_shortfall(super::Shortfall::EniLimit { max });
            return Ok(());
        };
        let per_eni = self.limits.ipv4_per_eni.saturating_sub(1);
        let security_groups = self.security_groups();
        for subnet in self.candidate_subnets().await? {
            let mut prefixes = self.prefixes_in(&subnet);
            loop {
                let first = if prefixes {
                    left.div_ceil(ADDRESSES_PER_PREFIX).min(per_eni)
                } else {
                    left.min(per_eni)
                };
                let created = self
                    .ec2
                    .create_eni(&NewEni {
                        subnet_id: &subnet,
                        security_groups: &security_groups,
                        instance_id: &self.instance.id,
                        cluster_name: self.config.cluster_name.as_deref(),
                        secondary_addresses: if prefixes { 0 } else { first },
                        prefixes: if prefixes { first } else { 0 },
                        trunk: false,
                    })
                    .await;
                match created {
                    Ok(eni) => {
                        if self.config.custom_network.is_none()
                            && eni.subnet_id != self.instance.subnet_id
                        {
                            crate::metrics::get().eni_in_other_subnet();
                        }
                        return self.attach_new(eni, device_index, true).await;
                    }
                    Err(e) if prefixes && e.is(codes::INSUFFICIENT_CIDR_BLOCKS) => {
                        self.pause(Shortage::Prefixes, &subnet, &e);
                        prefixes = false;
                    }
                    Err(e) if e.is(codes::INSUFFICIENT_FREE_ADDRESSES_IN_SUBNET) => {
                        self.pause(Shortage::Addresses, &subnet, &e);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        tracing::warn!("refill: no eligible subnet has free addresses for a new ENI");
        self.note_shortfall(super::Shortfall::SubnetsFull);
        Ok(())
    }

    /// The lowest free device index on the default card, if the node may attach another ENI
    /// (with ENABLE_POD_ENI, a pod ENI leaves one slot for the trunk until it is attached).
    fn free_device_index(&self, for_pods: bool) -> Option<u32> {
        let pool = self.lock();
        let on_card: Vec<u32> = pool
            .enis()
            .iter()
            .filter(|e| e.network_card == 0)
            .map(|e| e.device_index)
            .collect();
        let trunk_slot = u32::from(for_pods && self.config.knobs.pod_eni && !pool.has_trunk());
        if on_card.len() as u32 + trunk_slot >= self.max_enis {
            return None;
        }
        (0..).find(|i| !on_card.contains(i))
    }

    /// Creates and attaches the trunk ENI (primary subnet and security groups).
    async fn add_trunk(&self) -> Result<(), IpamError> {
        let device_index = self.free_device_index(false).ok_or_else(|| {
            IpamError::Config(format!(
                "ENABLE_POD_ENI: all {} ENI slots are taken; none is left for the trunk",
                self.max_enis
            ))
        })?;
        let created = self
            .ec2
            .create_eni(&NewEni {
                subnet_id: &self.instance.subnet_id,
                security_groups: &self.instance.security_groups,
                instance_id: &self.instance.id,
                cluster_name: self.config.cluster_name.as_deref(),
                secondary_addresses: 0,
                prefixes: 0,
                trunk: true,
            })
            .await?;
        self.attach_new(created, device_index, false).await
    }

    async fn attach_new(
        &self,
        created: Eni,
        device_index: u32,
        for_pods: bool,
    ) -> Result<(), IpamError> {
        match self
            .ec2
            .attach(&created.id, &self.instance.id, device_index, 0)
            .await
        {
            Ok(attachment) => {
                let eni = Eni {
                    attachment_id: Some(attachment),
                    device_index,
                    network_card: 0,
                    status: "in-use".into(),
                    ..created
                };
                tracing::info!(
                    "refill: attached {} ({}) at device index {device_index} with {} address(es) and {} prefix(es)",
                    eni.id,
                    eni.subnet_id,
                    eni.addresses.len().saturating_sub(1),
                    eni.prefixes.len()
                );
                self.lock().add_eni(eni, for_pods);
                self.note_grown();
                Ok(())
            }
            Err(e) => {
                self.note_shortfall(super::Shortfall::AttachFailed {
                    eni: created.id.clone(),
                    error: e.to_string(),
                });
                // Not attached, so not the node's: give it back now rather than leak it.
                if let Err(d) = self.ec2.delete(&created.id).await {
                    tracing::warn!(
                        "refill: {} could not be deleted after a failed attach ({d}); the leak sweep will",
                        created.id
                    );
                }
                if e.code.is_some() {
                    // EC2 refused the slot: someone else may have taken it (the VPC resource
                    // controller attaches the trunk whenever it likes, at a device index of its
                    // choosing). Re-read what is attached and go again at once.
                    self.reconcile().await?;
                    self.wake.notify_one();
                }
                Err(e.into())
            }
        }
    }

    /// Re-reads the attached ENIs from EC2 and brings the pool in line (see `Pool::reconcile`);
    /// returns the allocations whose address the node lost (missing for `lost_grace`): they are
    /// forgotten, and queued for their pods to be unwired (`lost_allocations`).
    pub async fn reconcile(&self) -> Result<Vec<Allocation>, IpamError> {
        let attached = self.ec2.attached_enis(&self.instance.id).await?;
        let attached = attached
            .into_iter()
            .map(|e| {
                let for_pods = serves_pods(&e, self.config.custom_network.is_some());
                (e, for_pods)
            })
            .collect();
        let mut pool = self.lock();
        let lost = pool.reconcile(attached, now_ms(), self.config.lost_grace);
        for a in &lost {
            tracing::error!(
                "reconcile: {} of pod {}/{} ({}) is no longer on the node (detached or unassigned outside eniflow)",
                a.ipv4,
                a.pod_namespace,
                a.pod_name,
                a.owner.container_id
            );
        }
        self.save(&pool)?;
        if !lost.is_empty() {
            self.lost
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(lost.iter().cloned());
            self.lost_found.notify_one();
        }
        Ok(lost)
    }

    /// Gives free addresses back to their subnets: in prefix mode the single addresses taken
    /// when /28s ran out go first, then whole free prefixes.
    async fn give_back(&self, addresses: u32) -> Result<(), IpamError> {
        let picked: Vec<(String, Vec<Ipv4Addr>, bool)> = {
            let mut pool = self.lock();
            let singles = pool.pick_free_secondaries(addresses);
            let given: u32 = singles.iter().map(|(_, ips)| ips.len() as u32).sum();
            let mut picked: Vec<_> = singles.into_iter().map(|(e, b)| (e, b, false)).collect();
            if self.prefix_mode() {
                let rest = (addresses - given) / ADDRESSES_PER_PREFIX;
                picked.extend(
                    pool.pick_free_prefixes(rest)
                        .into_iter()
                        .map(|(e, b)| (e, b, true)),
                );
            }
            picked
        };
        let mut result = Ok(());
        for (eni, blocks, prefixes) in picked {
            let outcome = self.ec2.unassign(&eni, &blocks, prefixes).await;
            // No answer: EC2 may have unassigned them. They leave the pool either way, and the
            // next reconcile puts back what EC2 still has; handing one out meanwhile could give
            // a pod an address that is not the node's.
            let removed = match &outcome {
                Ok(()) => true,
                Err(e) => e.code.is_none(),
            };
            self.lock().settle_leaving(&eni, &blocks, removed);
            match outcome {
                Ok(()) => crate::metrics::get().given_back(prefixes, blocks.len()),
                Err(e) => result = Err(e.into()),
            }
        }
        result
    }

    /// Detaches and deletes up to `n` idle ENIs of eniflow's.
    async fn detach_enis(&self, n: u32) -> Result<(), IpamError> {
        let picked = self
            .lock()
            .pick_free_enis(n, SystemTime::now(), self.config.eni_min_age);
        self.detach_picked(picked).await
    }

    /// Gives back the ENIs of an ENIConfig the node no longer uses once their pods are gone.
    async fn detach_idle_retired(&self) -> Result<(), IpamError> {
        let picked = {
            let mut pool = self.lock();
            // Cooling is otherwise expired by ADDs, and none may come.
            pool.expire_cooling(now_ms(), self.config.knobs.ip_cooldown);
            pool.pick_idle_retired()
        };
        self.detach_picked(picked).await
    }

    /// Detaches and deletes ENIs picked (and marked draining) by the pool.
    async fn detach_picked(&self, picked: Vec<Eni>) -> Result<(), IpamError> {
        for eni in picked {
            let Some(attachment) = eni.attachment_id.as_deref() else {
                continue;
            };
            if let Err(e) = self.ec2.detach(attachment).await {
                if e.code.is_none() {
                    // No answer: it may be detached. Out of the pool either way; the next
                    // reconcile brings it back if it is still attached, the leak sweep deletes
                    // it if not.
                    self.lock().remove_eni(&eni.id);
                } else {
                    self.lock().undrain(&eni.id);
                }
                return Err(e.into());
            }
            // Detached (or detaching): it no longer serves pods either way.
            self.lock().remove_eni(&eni.id);
            self.delete_when_detached(&eni.id).await?;
            tracing::info!("refill: detached and deleted {}", eni.id);
        }
        Ok(())
    }

    async fn delete_when_detached(&self, id: &str) -> Result<(), IpamError> {
        let deadline = Instant::now() + DETACH_WAIT;
        loop {
            match self.ec2.eni(id).await? {
                None => return Ok(()),
                Some(e) if e.status == "available" => break,
                Some(_) if Instant::now() >= deadline => {
                    tracing::warn!(
                        "refill: {id} is still detaching; the leak sweep will delete it"
                    );
                    return Ok(());
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        Ok(self.ec2.delete(id).await?)
    }
}

/// `period`, give or take a tenth at random.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// Pods get addresses from ENIs on the default card, never from a trunk, and not from the
/// primary ENI under custom networking.
pub(super) fn serves_pods(eni: &Eni, custom_network: bool) -> bool {
    let primary = eni.network_card == 0 && eni.device_index == 0;
    eni.network_card == 0 && !eni.trunk && !(custom_network && primary)
}

/// IPv4 slots an ENI uses: its addresses (the primary included) and one per prefix.
fn used_slots(eni: &Eni) -> u32 {
    (eni.addresses.len() + eni.prefixes.len()) as u32
}
