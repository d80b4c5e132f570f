"""EC2's request throttling as the account sees it: one token bucket per action class, shared by
every caller (all nodes of an account and Region draw from the same buckets), and a log of every
call with its time, caller and outcome.

The classes and their defaults are AWS's published ones (capacity, refill per second):
mutating actions 50 at 5/s; the ENI and address actions 100 at 5/s; CreateTags 100 at 10/s;
non-mutating (Describe*, Get*) 100 at 20/s, except unfiltered and unpaginated
DescribeNetworkInterfaces, DescribeInstances and DescribeSecurityGroups: 50 at 10/s. A call
names IDs, Filter.N or MaxResults to count as filtered or paginated (the lab's reading: AWS
says "filtered or paginated" and an ID list narrows the answer as a filter does).

Off until configured (POST /_lab/throttle), so the other tests see no throttling.
"""

import threading
import time

DEFAULTS = {
    "mutating": (50, 5.0),
    "eni-and-ip": (100, 5.0),
    "create-tags": (100, 10.0),
    "describe": (100, 20.0),
    "describe-unfiltered": (50, 10.0),
}

ENI_AND_IP = {
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "CreateNetworkInterface",
    "DeleteNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
}

# The non-mutating actions whose unfiltered, unpaginated form has the smaller bucket.
SMALL_WHEN_UNFILTERED = {"DescribeNetworkInterfaces", "DescribeInstances", "DescribeSecurityGroups"}

NARROWING = ("Filter.", "MaxResults", "NetworkInterfaceId.", "InstanceId.", "GroupId.")


def action_class(action, params):
    """The bucket a call of `action` with query `params` (a dict of lists) draws from."""
    if action in ENI_AND_IP:
        return "eni-and-ip"
    if action == "CreateTags":
        return "create-tags"
    if action.startswith(("Describe", "Get")):
        narrowed = any(key.startswith(NARROWING) for key in params)
        if action in SMALL_WHEN_UNFILTERED and not narrowed:
            return "describe-unfiltered"
        return "describe"
    return "mutating"


class Throttle:
    def __init__(self):
        self.lock = threading.Lock()
        self.enabled = False
        self.buckets = {}
        self.started = time.monotonic()
        self.log = []

    def configure(self, spec):
        """{"enabled": bool, "buckets": {class: [capacity, refill per second]}}: unnamed classes
        keep AWS's defaults; every bucket starts full."""
        enabled = bool(spec.get("enabled", True))
        sizes = dict(DEFAULTS)
        for name, value in (spec.get("buckets") or {}).items():
            if name not in DEFAULTS:
                raise ValueError(f"no action class {name!r}; known: {sorted(DEFAULTS)}")
            capacity, rate = value
            if capacity < 1 or rate <= 0:
                raise ValueError(f"{name}: capacity >= 1 and a positive refill rate, not {value}")
            sizes[name] = (float(capacity), float(rate))
        now = time.monotonic()
        with self.lock:
            self.enabled = enabled
            self.buckets = {
                name: {"capacity": float(c), "rate": float(r), "tokens": float(c), "at": now}
                for name, (c, r) in sizes.items()
            }

    def admit(self, action, params):
        """Whether the call may go ahead now (a token taken); False: RequestLimitExceeded."""
        with self.lock:
            if not self.enabled:
                return True
            bucket = self.buckets[action_class(action, params)]
            now = time.monotonic()
            bucket["tokens"] = min(
                bucket["capacity"], bucket["tokens"] + (now - bucket["at"]) * bucket["rate"]
            )
            bucket["at"] = now
            if bucket["tokens"] < 1:
                return False
            bucket["tokens"] -= 1
            return True

    def record(self, action, params, caller, outcome):
        with self.lock:
            self.log.append(
                {
                    "t": round(time.monotonic() - self.started, 4),
                    "action": action,
                    "class": action_class(action, params),
                    "caller": caller,
                    "outcome": outcome,
                }
            )

    def calls(self):
        with self.lock:
            return list(self.log)
