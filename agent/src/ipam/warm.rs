//! How far the pool is from its warm targets: the decision the refill loop acts on, with VPC CNI's
//! arithmetic (reference-vpc-cni.md, "Warm pool behaviour"). Pure: which ENI gives or takes the
//! addresses (attached ones first, never one younger than a minute or holding cooling addresses)
//! is the allocator's business.

use super::knobs::Knobs;
use crate::limits::ADDRESSES_PER_PREFIX as PREFIX;

/// The pool as the refill loop sees it, in addresses (a prefix counts 16; primary addresses, which
/// pods never get, are not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    pub total: u32,
    /// Held by pods.
    pub assigned: u32,
    /// Released, resting for IP_COOLDOWN_PERIOD: neither free nor removable.
    pub cooling: u32,
}

impl Pool {
    /// Free now: neither held by a pod nor cooling.
    pub fn available(&self) -> u32 {
        self.total.saturating_sub(self.assigned + self.cooling)
    }
}

/// What the node can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Pod addresses one ENI holds: IPv4 per ENI − 1, times 16 in prefix mode.
    pub per_eni: u32,
    /// The node's max pods: the pool never holds more addresses (in prefix mode, never more
    /// prefixes than it takes to hold that many).
    pub max_pods: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Hold,
    /// Add this many addresses (a multiple of 16 in prefix mode).
    Grow(u32),
    /// Release this many free addresses (whole free prefixes in prefix mode).
    Release(u32),
    /// Release this many wholly free ENIs (the ENI and prefix targets only free whole ENIs).
    ReleaseEnis(u32),
}

pub fn plan(knobs: &Knobs, capacity: Capacity, pool: Pool) -> Plan {
    let unit = if knobs.prefix_delegation { PREFIX } else { 1 };
    // Enough whole prefixes to hold max pods, and not one more.
    let room = capacity.max_pods.saturating_sub(pool.total).div_ceil(unit) * unit;
    let available = i64::from(pool.available());
    let total = i64::from(pool.total);

    if knobs.warm_ip_target.is_some() || knobs.minimum_ip_target.is_some() {
        let warm = i64::from(knobs.warm_ip_target.unwrap_or(0));
        let minimum = i64::from(knobs.minimum_ip_target.unwrap_or(0));
        let short = (warm - available).max(minimum - total).max(0) as u32;
        let over = (available - warm).min(total - minimum).max(0) as u32;
        if short > 0 {
            return grow(short.div_ceil(unit) * unit, room);
        }
        return match over / unit * unit {
            0 => Plan::Hold,
            n => Plan::Release(n),
        };
    }

    // Whole units: WARM_PREFIX_TARGET prefixes in prefix mode (when set), else WARM_ENI_TARGET ENIs.
    let (per_unit, target) = if knobs.prefix_delegation && knobs.warm_prefix_target > 0 {
        (PREFIX, knobs.warm_prefix_target)
    } else {
        (capacity.per_eni, knobs.warm_eni_target)
    };
    let wanted = i64::from(per_unit) * i64::from(target);
    if available < wanted {
        let short = (wanted - available) as u32;
        return grow(short.div_ceil(unit) * unit, room);
    }
    // Only whole ENIs go back, and only when the target still holds without them.
    let spare_enis = (available - wanted) / i64::from(capacity.per_eni.max(1));
    match spare_enis {
        0 => Plan::Hold,
        n => Plan::ReleaseEnis(n as u32),
    }
}

fn grow(addresses: u32, room: u32) -> Plan {
    match addresses.min(room) {
        0 => Plan::Hold,
        n => Plan::Grow(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(vars: &[(&str, &str)]) -> Knobs {
        Knobs::from_pairs(vars).unwrap()
    }

    fn pool(total: u32, assigned: u32, cooling: u32) -> Pool {
        Pool {
            total,
            assigned,
            cooling,
        }
    }

    // m5.large: 3 ENIs × 10 IPv4, max pods 29; c5.4xlarge: 8 × 30, max pods 110 (capped).
    const M5_LARGE: Capacity = Capacity {
        per_eni: 9,
        max_pods: 29,
    };
    const M5_LARGE_PREFIXES: Capacity = Capacity {
        per_eni: 9 * PREFIX,
        max_pods: 110,
    };
    const C5_4XLARGE: Capacity = Capacity {
        per_eni: 29,
        max_pods: 110,
    };

    #[test]
    fn secondary_ip_mode_keeps_warm_enis() {
        let default = knobs(&[]);
        for (capacity, state, expected) in [
            // A fresh node: one ENI's worth of free addresses.
            (M5_LARGE, pool(0, 0, 0), Plan::Grow(9)),
            (M5_LARGE, pool(9, 0, 0), Plan::Hold),
            (M5_LARGE, pool(9, 1, 0), Plan::Grow(1)),
            (M5_LARGE, pool(18, 9, 0), Plan::Hold),
            // Cooling addresses are not free.
            (M5_LARGE, pool(18, 6, 4), Plan::Grow(1)),
            // Never more than max pods (29): 27 held, room for 2.
            (M5_LARGE, pool(27, 27, 0), Plan::Grow(2)),
            (M5_LARGE, pool(29, 29, 0), Plan::Hold),
            // Whole ENIs go back once the target holds without them.
            (M5_LARGE, pool(27, 0, 0), Plan::ReleaseEnis(2)),
            (M5_LARGE, pool(27, 10, 0), Plan::Hold),
            (C5_4XLARGE, pool(87, 20, 0), Plan::ReleaseEnis(1)),
            (C5_4XLARGE, pool(87, 58, 0), Plan::Hold),
        ] {
            assert_eq!(
                plan(&default, capacity, state),
                expected,
                "{capacity:?} {state:?}"
            );
        }
        let two = knobs(&[("WARM_ENI_TARGET", "2")]);
        assert_eq!(plan(&two, C5_4XLARGE, pool(29, 0, 0)), Plan::Grow(29));
    }

    #[test]
    fn warm_and_minimum_ip_targets() {
        for (vars, state, expected) in [
            (&[("WARM_IP_TARGET", "5")][..], pool(0, 0, 0), Plan::Grow(5)),
            (&[("WARM_IP_TARGET", "5")], pool(5, 2, 0), Plan::Grow(2)),
            (&[("WARM_IP_TARGET", "5")], pool(9, 2, 0), Plan::Release(2)),
            (&[("WARM_IP_TARGET", "5")], pool(9, 2, 2), Plan::Hold),
            (&[("MINIMUM_IP_TARGET", "10")], pool(4, 0, 0), Plan::Grow(6)),
            (&[("MINIMUM_IP_TARGET", "10")], pool(10, 0, 0), Plan::Hold),
            (
                &[("MINIMUM_IP_TARGET", "10"), ("WARM_IP_TARGET", "2")],
                pool(12, 1, 0),
                Plan::Release(2),
            ),
            (
                &[("MINIMUM_IP_TARGET", "10"), ("WARM_IP_TARGET", "2")],
                pool(12, 11, 0),
                Plan::Grow(1),
            ),
            (&[("WARM_IP_TARGET", "50")], pool(20, 0, 0), Plan::Grow(9)),
        ] {
            assert_eq!(
                plan(&knobs(vars), M5_LARGE, state),
                expected,
                "{vars:?} {state:?}"
            );
        }
    }

    #[test]
    fn prefix_mode_counts_in_prefixes() {
        let pd = |extra: &[(&'static str, &'static str)]| {
            let mut vars = vec![("ENABLE_PREFIX_DELEGATION", "true")];
            vars.extend_from_slice(extra);
            knobs(&vars)
        };
        for (k, state, expected) in [
            (
                pd(&[("WARM_PREFIX_TARGET", "1")]),
                pool(0, 0, 0),
                Plan::Grow(16),
            ),
            (
                pd(&[("WARM_PREFIX_TARGET", "1")]),
                pool(16, 3, 0),
                Plan::Grow(16),
            ),
            (
                pd(&[("WARM_PREFIX_TARGET", "2")]),
                pool(16, 0, 0),
                Plan::Grow(16),
            ),
            (
                pd(&[("WARM_PREFIX_TARGET", "1")]),
                pool(32, 3, 0),
                Plan::Hold,
            ),
            // WARM_IP_TARGET in prefix mode: shortfalls rounded up to whole prefixes.
            (
                pd(&[("WARM_IP_TARGET", "5")]),
                pool(16, 14, 0),
                Plan::Grow(16),
            ),
            (
                pd(&[("WARM_IP_TARGET", "5")]),
                pool(48, 10, 0),
                Plan::Release(32),
            ),
            (pd(&[("WARM_IP_TARGET", "5")]), pool(48, 30, 0), Plan::Hold),
            // No prefix target: WARM_ENI_TARGET, an ENI's worth of prefixes.
            (pd(&[]), pool(0, 0, 0), Plan::Grow(112)),
            // Max pods (110) fits in 7 prefixes: the 7th is added, an 8th never.
            (
                pd(&[("WARM_PREFIX_TARGET", "1")]),
                pool(96, 96, 0),
                Plan::Grow(16),
            ),
            (
                pd(&[("WARM_PREFIX_TARGET", "1")]),
                pool(112, 110, 0),
                Plan::Hold,
            ),
            (
                pd(&[("WARM_PREFIX_TARGET", "1")]),
                pool(80, 80, 0),
                Plan::Grow(16),
            ),
        ] {
            assert_eq!(
                plan(&k, M5_LARGE_PREFIXES, state),
                expected,
                "{k:?} {state:?}"
            );
        }
    }
}
