//! The refill loop: which EC2 calls move the pool towards its warm targets. Growth fills attached
//! ENIs before creating one; give-backs are paced, and an ENI goes back only when it is eniflow's,
//! old enough and idle. The pool's lock is never held across an EC2 call: ADDs go on meanwhile.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{warm::Plan, Ipam, IpamError};
use crate::{
    ec2::{codes, Eni, NewEni},
    limits::ADDRESSES_PER_PREFIX,
};

/// How long a detach may take before the ENI is left to the leak sweep.
const DETACH_WAIT: Duration = Duration::from_secs(60);

impl Ipam {
    /// One refill step: works out the plan and carries out (part of) it. Returns the plan, so
    /// callers can step until it says Hold.
    pub async fn refill_step(&self) -> Result<Plan, IpamError> {
        let plan = {
            let counts = self.counts();
            super::warm::plan(&self.config.knobs, self.capacity, counts)
        };
        match plan {
            Plan::Hold => {}
            Plan::Grow(addresses) => self.grow(addresses).await?,
            Plan::Release(addresses) if self.release_due() => self.give_back(addresses).await?,
            Plan::ReleaseEnis(n) if self.release_due() => self.detach_enis(n).await?,
            Plan::Release(_) | Plan::ReleaseEnis(_) => {}
        }
        Ok(plan)
    }

    /// Runs refill steps until the plan holds, then waits for an assign or release (or the
    /// period). Errors are logged and retried after the period; authorization errors too, but
    /// they say what permission is missing.
    pub async fn run_refill(self: Arc<Self>) {
        let mut last: Option<Plan> = None;
        let mut swept: Option<Instant> = None;
        loop {
            if let Some(every) = self.config.leak_sweep {
                if swept.is_none_or(|at| at.elapsed() >= every) {
                    swept = Some(Instant::now());
                    let cluster = self.config.cluster_name.as_deref();
                    let now = SystemTime::now();
                    if let Err(e) =
                        super::leaks::sweep(&self.ec2, cluster, super::leaks::DEFAULT_MIN_AGE, now)
                            .await
                    {
                        log::warn!("leak sweep: {e}");
                    }
                }
            }
            let progressed = match self.refill_step().await {
                Ok(Plan::Hold) => false,
                // A plan that did not change after acting made no progress (node full, paced).
                Ok(plan) => last.replace(plan) != Some(plan),
                Err(e) => {
                    match &e {
                        IpamError::Ec2(e) if e.is_authorization() => log::error!(
                            "refill: EC2 refused for lack of permission ({e}); check the node role's IAM policy"
                        ),
                        e => log::warn!("refill: {e}"),
                    }
                    last = None;
                    false
                }
            };
            if !progressed {
                last = None;
                let _ = tokio::time::timeout(self.config.refill_period, self.wake.notified()).await;
            }
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

    /// Adds `addresses` (whole prefixes in prefix mode): attached ENIs first, then one new ENI.
    async fn grow(&self, addresses: u32) -> Result<(), IpamError> {
        let prefixes = self.prefix_mode();
        let unit = if prefixes { ADDRESSES_PER_PREFIX } else { 1 };
        let mut blocks = addresses.div_ceil(unit);
        let slots = self.limits.ipv4_per_eni;
        let with_room: Vec<(String, u32)> = self
            .lock()
            .growable()
            .iter()
            .map(|e| (e.id.clone(), slots.saturating_sub(used_slots(e))))
            .filter(|(_, room)| *room > 0)
            .collect();
        for (eni, room) in with_room {
            let want = room.min(blocks);
            match self.ec2.assign(&eni, want, prefixes).await {
                Ok(got) => {
                    blocks = blocks.saturating_sub(got.len() as u32);
                    self.lock().add_blocks(&eni, &got, prefixes);
                }
                // Someone else used slots on it: learn EC2's view; the next step uses it.
                Err(e) if e.is(codes::PRIVATE_IP_ADDRESS_LIMIT_EXCEEDED) => {
                    log::warn!("refill: {eni} is fuller than eniflow knew ({e}); re-reading it");
                    if let Some(fresh) = self.ec2.eni(&eni).await? {
                        self.lock().add_eni(fresh, true);
                    }
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
            if blocks == 0 {
                return Ok(());
            }
        }
        self.add_eni(blocks).await
    }

    /// Creates an ENI with up to `blocks` addresses or prefixes and attaches it at the lowest free
    /// device index of the default card. An ENI that cannot be attached is deleted again.
    async fn add_eni(&self, blocks: u32) -> Result<(), IpamError> {
        let (attached, device_index) = {
            let pool = self.lock();
            let on_card: Vec<u32> = pool
                .enis()
                .iter()
                .filter(|e| e.network_card == 0)
                .map(|e| e.device_index)
                .collect();
            let free = (0..).find(|i| !on_card.contains(i)).unwrap_or(0);
            (on_card.len() as u32, free)
        };
        if attached >= self.max_enis {
            log::debug!("refill: the node has its {} ENIs; no more", self.max_enis);
            return Ok(());
        }
        let prefixes = self.prefix_mode();
        let per_eni = self.limits.ipv4_per_eni.saturating_sub(1);
        let first = blocks.min(per_eni);
        let created = self
            .ec2
            .create_eni(&NewEni {
                subnet_id: &self.instance.subnet_id,
                security_groups: &self.instance.security_groups,
                instance_id: &self.instance.id,
                cluster_name: self.config.cluster_name.as_deref(),
                secondary_addresses: if prefixes { 0 } else { first },
                prefixes: if prefixes { first } else { 0 },
            })
            .await?;
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
                log::info!(
                    "refill: attached {} at device index {device_index} with {first} {}",
                    eni.id,
                    if prefixes {
                        "prefix(es)"
                    } else {
                        "address(es)"
                    }
                );
                self.lock().add_eni(eni, true);
                Ok(())
            }
            Err(e) => {
                // Not attached, so not the node's: give it back now rather than leak it.
                if let Err(d) = self.ec2.delete(&created.id).await {
                    log::warn!(
                        "refill: {} could not be deleted after a failed attach ({d}); the leak sweep will",
                        created.id
                    );
                }
                if e.is(codes::ATTACHMENT_LIMIT_EXCEEDED) {
                    // Someone else took an ENI slot: re-read what is attached.
                    self.refresh_enis().await?;
                }
                Err(e.into())
            }
        }
    }

    /// Re-reads the attached ENIs from EC2 (new ones join the pool; gone ones leave it when they
    /// hold no allocation).
    async fn refresh_enis(&self) -> Result<(), IpamError> {
        let attached = self.ec2.attached_enis(&self.instance.id).await?;
        let mut pool = self.lock();
        for eni in attached {
            let for_pods = eni.network_card == 0 && !eni.trunk;
            pool.add_eni(eni, for_pods);
        }
        Ok(())
    }

    /// Gives free secondary addresses (or whole free prefixes) back to the subnet.
    async fn give_back(&self, addresses: u32) -> Result<(), IpamError> {
        let prefixes = self.prefix_mode();
        let picked = if prefixes {
            self.lock()
                .pick_free_prefixes(addresses / ADDRESSES_PER_PREFIX)
        } else {
            self.lock().pick_free_secondaries(addresses)
        };
        let mut result = Ok(());
        for (eni, blocks) in picked {
            let outcome = self.ec2.unassign(&eni, &blocks, prefixes).await;
            self.lock().settle_leaving(&eni, &blocks, outcome.is_ok());
            if let Err(e) = outcome {
                result = Err(e.into());
            }
        }
        result
    }

    /// Detaches and deletes up to `n` idle ENIs of eniflow's.
    async fn detach_enis(&self, n: u32) -> Result<(), IpamError> {
        let picked = self
            .lock()
            .pick_free_enis(n, SystemTime::now(), self.config.eni_min_age);
        for eni in picked {
            let Some(attachment) = eni.attachment_id.as_deref() else {
                continue;
            };
            if let Err(e) = self.ec2.detach(attachment).await {
                self.lock().undrain(&eni.id);
                return Err(e.into());
            }
            // Detached (or detaching): it no longer serves pods either way.
            self.lock().remove_eni(&eni.id);
            self.delete_when_detached(&eni.id).await?;
            log::info!("refill: detached and deleted {}", eni.id);
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
                    log::warn!("refill: {id} is still detaching; the leak sweep will delete it");
                    return Ok(());
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        Ok(self.ec2.delete(id).await?)
    }
}

/// IPv4 slots an ENI uses: its addresses (the primary included) and one per prefix.
fn used_slots(eni: &Eni) -> u32 {
    (eni.addresses.len() + eni.prefixes.len()) as u32
}
