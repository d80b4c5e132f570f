//! The node's share of EC2's request budget. EC2 throttles per account and Region with a token
//! bucket per action class, and every node's agent draws from the same buckets: a cluster
//! scaling out throttles itself if each node calls as fast as it likes. So the agent keeps a
//! bucket of its own per class (ENIFLOW_EC2_BUDGET), and when EC2 still answers
//! RequestLimitExceeded (HTTP 503) every call of that class waits out one jittered exponential
//! backoff, not only the call the SDK retries.
//!
//! The default sustained rates are a hundredth of AWS's default refill rates, so 100 nodes
//! calling at once stay inside the account's refill; the bursts are half the account's bucket, so
//! one node scaling out is not slowed by the share it does not use.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

/// EC2's action classes, as AWS sizes their buckets. The agent's Describe calls are all
/// filtered or paginated (the larger bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Mutating,
    EniAndIp,
    CreateTags,
    Describe,
}

const CLASSES: [(Class, &str); 4] = [
    (Class::Mutating, "mutating"),
    (Class::EniAndIp, "eni-and-ip"),
    (Class::CreateTags, "create-tags"),
    (Class::Describe, "describe"),
];

impl Class {
    pub fn of(action: &str) -> Class {
        match action {
            "AssignPrivateIpAddresses"
            | "UnassignPrivateIpAddresses"
            | "CreateNetworkInterface"
            | "DeleteNetworkInterface"
            | "ModifyNetworkInterfaceAttribute" => Class::EniAndIp,
            "CreateTags" => Class::CreateTags,
            a if a.starts_with("Describe") || a.starts_with("Get") => Class::Describe,
            _ => Class::Mutating,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        CLASSES[self.index()].1
    }
}

/// A class's sustained calls per second and burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// A rate per class, in `Class` order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates(pub [Rate; 4]);

impl Default for Rates {
    fn default() -> Rates {
        // AWS's default account buckets (capacity, refill per second), by class.
        let account = [(50.0, 5.0), (100.0, 5.0), (100.0, 10.0), (100.0, 20.0)];
        Rates(account.map(|(capacity, refill): (f64, f64)| Rate {
            per_second: refill / 100.0,
            burst: capacity / 2.0,
        }))
    }
}

impl std::str::FromStr for Rates {
    type Err = String;

    /// `class=<per second>/<burst>,...` (classes mutating, eni-and-ip, create-tags, describe;
    /// those not named keep their default), or `unlimited`.
    fn from_str(text: &str) -> Result<Rates, String> {
        if text.trim() == "unlimited" {
            let unlimited = Rate {
                per_second: f64::INFINITY,
                burst: f64::INFINITY,
            };
            return Ok(Rates([unlimited; 4]));
        }
        let mut rates = Rates::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |why: &str| format!("{part:?}: {why} (class=<per second>/<burst>)");
            let (name, value) = part.split_once('=').ok_or_else(|| bad("no ="))?;
            let (class, _) = CLASSES
                .iter()
                .find(|(_, n)| *n == name.trim())
                .ok_or_else(|| bad("not a class: mutating, eni-and-ip, create-tags, describe"))?;
            let (rate, burst) = value.split_once('/').ok_or_else(|| bad("no /"))?;
            let number = |t: &str| t.trim().parse::<f64>().ok().filter(|n| *n > 0.0);
            let (Some(per_second), Some(burst)) = (number(rate), number(burst)) else {
                return Err(bad("rate and burst must be positive numbers"));
            };
            if burst < 1.0 {
                return Err(bad("a burst below 1 never lets a call through"));
            }
            rates.0[class.index()] = Rate { per_second, burst };
        }
        Ok(rates)
    }
}

/// How long a throttled class waits at first and at most (before jitter).
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(20);

struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
    /// Set by a throttled answer: no call of the class goes before it.
    not_before: Option<Instant>,
    /// Throttled answers in a row.
    streak: u32,
}

pub struct Budget {
    buckets: [Mutex<Bucket>; 4],
}

impl Budget {
    pub fn new(rates: Rates) -> Budget {
        let now = Instant::now();
        Budget {
            buckets: rates.0.map(|rate| {
                Mutex::new(Bucket {
                    rate,
                    tokens: rate.burst,
                    at: now,
                    not_before: None,
                    streak: 0,
                })
            }),
        }
    }

    fn bucket(&self, action: &str) -> std::sync::MutexGuard<'_, Bucket> {
        self.buckets[Class::of(action).index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a call of `action` may go: its class's backoff is over and a token is there.
    pub async fn acquire(&self, action: &str) {
        loop {
            let wait = {
                let mut b = self.bucket(action);
                let now = Instant::now();
                if b.rate.per_second.is_finite() {
                    let refill = now.duration_since(b.at).as_secs_f64() * b.rate.per_second;
                    b.tokens = (b.tokens + refill).min(b.rate.burst);
                }
                b.at = now;
                match b.not_before.filter(|at| *at > now) {
                    Some(at) => at - now,
                    None if b.tokens >= 1.0 || !b.rate.per_second.is_finite() => {
                        b.tokens -= 1.0;
                        return;
                    }
                    None => Duration::from_secs_f64((1.0 - b.tokens) / b.rate.per_second),
                }
            };
            crate::metrics::get().ec2_budget_wait(Class::of(action).name(), wait);
            tokio::time::sleep(wait).await;
        }
    }

    /// EC2 throttled a call of `action`: every call of its class waits a jittered backoff that
    /// doubles with each throttle in a row (half of it fixed, half at random, so nodes
    /// throttled together do not come back together).
    pub fn throttled(&self, action: &str) {
        let mut b = self.bucket(action);
        b.streak = b.streak.saturating_add(1);
        let bound = BACKOFF_FIRST
            .saturating_mul(1 << (b.streak - 1).min(16))
            .min(BACKOFF_MAX);
        let until = Instant::now() + bound / 2 + (bound / 2).mul_f64(fastrand::f64());
        b.not_before = Some(b.not_before.map_or(until, |at| at.max(until)));
    }

    /// Whether a throttle holds back the calls of `action`'s class now.
    pub fn backing_off(&self, action: &str) -> bool {
        self.bucket(action)
            .not_before
            .is_some_and(|at| at > Instant::now())
    }

    /// EC2 answered a call of `action` without throttling it.
    pub fn answered(&self, action: &str) {
        self.bucket(action).streak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_parse_by_class_and_bad_ones_are_named() {
        let rates: Rates = "eni-and-ip=0.5/20, describe=2/40".parse().unwrap();
        assert_eq!(rates.0[Class::EniAndIp.index()].burst, 20.0);
        assert_eq!(rates.0[Class::Describe.index()].per_second, 2.0);
        assert_eq!(rates.0[Class::Mutating.index()], Rates::default().0[0]);
        assert!("eni=1/2"
            .parse::<Rates>()
            .unwrap_err()
            .contains("not a class"));
        assert!("describe=1/0.5"
            .parse::<Rates>()
            .unwrap_err()
            .contains("burst"));
        assert!("describe=-1/5"
            .parse::<Rates>()
            .unwrap_err()
            .contains("positive"));
        assert!("unlimited".parse::<Rates>().unwrap().0[0]
            .burst
            .is_infinite());
    }

    #[test]
    fn the_defaults_keep_a_hundred_nodes_inside_the_accounts_refill() {
        let d = Rates::default().0;
        // AWS's refill rates per class, as in `Rates::default`.
        for (rate, refill) in d.iter().zip([5.0, 5.0, 10.0, 20.0]) {
            assert!(rate.per_second * 100.0 <= refill + 1e-9, "{rate:?}");
        }
        assert_eq!(Class::of("AssignPrivateIpAddresses"), Class::EniAndIp);
        assert_eq!(Class::of("AttachNetworkInterface"), Class::Mutating);
        assert_eq!(Class::of("DescribeSubnets"), Class::Describe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_delays_the_next_call_of_its_class_only() {
        let budget = Budget::new("unlimited".parse().unwrap());
        budget.throttled("AssignPrivateIpAddresses");
        assert!(budget.backing_off("CreateNetworkInterface"));
        assert!(!budget.backing_off("DescribeSubnets"));
        let started = tokio::time::Instant::now();
        budget.acquire("DescribeSubnets").await;
        assert_eq!(started.elapsed(), Duration::ZERO, "another class waited");
        budget.acquire("CreateNetworkInterface").await;
        let waited = started.elapsed();
        assert!(
            waited >= BACKOFF_FIRST / 2 && waited <= BACKOFF_FIRST,
            "{waited:?}"
        );
        assert!(
            !budget.backing_off("CreateNetworkInterface"),
            "past its end"
        );
        // A second throttle in a row doubles the bound.
        budget.throttled("CreateNetworkInterface");
        budget.throttled("CreateNetworkInterface");
        let started = tokio::time::Instant::now();
        budget.acquire("UnassignPrivateIpAddresses").await;
        assert!(
            started.elapsed() >= BACKOFF_FIRST * 2 / 2,
            "{:?}",
            started.elapsed()
        );
        budget.answered("CreateNetworkInterface");
        budget.throttled("CreateNetworkInterface");
        let started = tokio::time::Instant::now();
        budget.acquire("CreateNetworkInterface").await;
        assert!(
            started.elapsed() <= BACKOFF_FIRST,
            "an answer did not reset the streak"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_past_the_burst_wait_for_the_refill() {
        let budget = Budget::new("describe=2/3".parse().unwrap());
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            budget.acquire("DescribeSubnets").await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "the burst");
        budget.acquire("DescribeSubnets").await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(499) && waited <= Duration::from_millis(510),
            "{waited:?}"
        );
    }
}
