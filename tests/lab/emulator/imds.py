"""IMDSv2 for one lab instance, answered from the live network view (view.build).

Only what eniflow reads on a real node (the emulator note lists it), with IMDSv2's rules: a session
token from `PUT /latest/api/token` (TTL 1..21600 s, echoed back), 401 for a GET without a valid
token, 404 for anything unknown, directory listings with a trailing "/" on sub-directories.
"""

import secrets
import time

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600

# token -> monotonic expiry; tokens are valid for any instance, like a node's own IMDS.
_tokens = {}


def handle(view, instance_id, method, path, headers):
    """Returns (status, headers, body) for one request."""
    if path.rstrip("/") == "/latest/api/token":
        if method != "PUT":
            return 405, {}, "Method Not Allowed"
        return _issue_token(headers.get(TTL_HEADER))
    if method != "GET":
        return 405, {}, "Method Not Allowed"
    if not _token_valid(headers.get(TOKEN_HEADER)):
        return 401, {}, "Unauthorized"
    prefix = "/latest/meta-data"
    if path != prefix and not path.startswith(prefix + "/"):
        return 404, {}, "Not Found"
    tree = metadata(view, instance_id)
    if tree is None:
        return 404, {}, "Not Found"
    node = tree
    for part in [p for p in path[len(prefix):].split("/") if p]:
        if not isinstance(node, dict) or part not in node:
            return 404, {}, "Not Found"
        node = node[part]
    if isinstance(node, dict):
        return 200, {}, "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items())
    return 200, {}, node


def _issue_token(ttl):
    try:
        seconds = int(ttl)
    except (TypeError, ValueError):
        return 400, {}, f"{TTL_HEADER} must be an integer 1..{MAX_TTL}"
    if not 1 <= seconds <= MAX_TTL:
        return 400, {}, f"{TTL_HEADER} must be an integer 1..{MAX_TTL}"
    now = time.monotonic()
    for token, expiry in list(_tokens.items()):
        if expiry <= now:
            del _tokens[token]
    token = secrets.token_urlsafe(40)
    _tokens[token] = now + seconds
    return 200, {TTL_HEADER: str(seconds)}, token


def _token_valid(token):
    expiry = _tokens.get(token) if token else None
    return expiry is not None and expiry > time.monotonic()


def metadata(view, instance_id):
    """The meta-data tree for an instance: dicts are directories, strings are values."""
    instance = next((i for i in view["instances"] if i["id"] == instance_id), None)
    if instance is None:
        return None
    enis = sorted(
        (e for e in view["enis"] if e["instance_id"] == instance_id),
        key=lambda e: (e["network_card"], e["device_index"]),
    )
    primary = next((e for e in enis if e["id"] == instance["primary_eni"]), None)
    subnets = {s["id"]: s for s in view["subnets"]}
    vpcs = {v["id"]: v for v in view["vpcs"]}

    macs = {}
    for eni in enis:
        subnet = subnets.get(eni["subnet_id"], {})
        cidrs = vpcs.get(eni["vpc_id"], {}).get("cidrs", [])
        keys = {
            "device-number": str(eni["device_index"]),
            "interface-id": eni["id"],
            "local-ipv4s": "\n".join(eni["private_ips"]),
            "mac": eni["mac"],
            "security-group-ids": "\n".join(eni["security_groups"]),
            "subnet-id": eni["subnet_id"],
            "subnet-ipv4-cidr-block": subnet.get("cidr", ""),
            "vpc-id": eni["vpc_id"],
            "vpc-ipv4-cidr-block": cidrs[0] if cidrs else "",
            "vpc-ipv4-cidr-blocks": "\n".join(cidrs),
        }
        if eni["network_card"]:
            keys["network-card"] = str(eni["network_card"])
        if eni["prefixes"]:
            keys["ipv4-prefix"] = "\n".join(eni["prefixes"])
        macs[eni["mac"]] = dict(sorted(keys.items()))

    tree = {
        "instance-id": instance["id"],
        "instance-type": instance["type"],
        "network": {"interfaces": {"macs": macs}},
        "placement": {"availability-zone": instance["az"], "region": instance["region"]},
    }
    if primary is not None:
        tree["local-ipv4"] = primary["private_ips"][0] if primary["private_ips"] else ""
        tree["mac"] = primary["mac"]
    return dict(sorted(tree.items()))
