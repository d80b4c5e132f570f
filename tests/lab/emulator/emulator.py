"""The lab's EC2 API + IMDSv2 emulator: moto's EC2 made EC2-like (ec2_patches), a fault switch, a
live network view for the fabric, and IMDS answered from that view.

    python emulator.py --port-file F [--vpc-netns NAME]

Serves on 127.0.0.1:<ephemeral port> (written to F once ready):
    POST /                 the EC2 API (query protocol); region from the SigV4 credential scope
    GET|PUT /latest/...    IMDS for the instance chosen with POST /_lab/imds
    /_lab/faults           POST {"action", "code"|null, "status", "count", "latency_ms", "cut"};
                           DELETE. "cut": true answers HTTP 500 with no body (an answer cut off)
    GET /_lab/calls        {"Action": count} of every EC2 call received (faulted ones included)
    /_lab/throttle         POST {"enabled", "buckets": {class: [capacity, per second]}}: EC2's
                           account-wide request buckets (throttle.py), off until then
    GET /_lab/call-log     [{"t", "action", "class", "caller", "outcome"}] of every EC2 call;
                           the caller is the node whose namespace the call came from, else the
                           access key id
    GET /_lab/view         the network view (view.py)
    POST /_lab/imds        {"instance_id"}: whom loopback IMDS answers for
    POST /_lab/nodes       {"instance_id", "netns"}: the netns is that instance's machine: the
                           fabric plugs its ENIs in, and EC2 + IMDS (for that instance) answer
                           inside it on 169.254.169.254:80
Logs go to stderr. Exits on SIGTERM/SIGINT, and when its parent dies.
"""

import argparse
import ctypes
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree

import imds  # noqa: E402  (all found through HERE)
from fabric import Fabric  # noqa: E402
from throttle import Throttle  # noqa: E402

# EC2 refuses instance types it does not know; so does moto with this set (read at import).
os.environ.setdefault("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")

REGION = "us-west-2"
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
IMDS_ADDRESS = "169.254.169.254"

log = logging.getLogger("emulator")
libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent():
    parent = os.getppid()
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:
        # The parent is already gone.
        sys.exit(0)


def setns(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def error_body(code, message, request_id=None):
    request_id = request_id or str(uuid.uuid4())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{request_id}</RequestID></Response>"
    ).encode()


def access_key(environ):
    """The access key id of a SigV4-signed call (Credential=AKID/date/region/...), else None."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    _, _, rest = auth.partition("Credential=")
    return rest.split("/", 1)[0] or None


def camel_to_snake(name):
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i > 0 and (not name[i - 1].isupper() or
                                       (i + 1 < len(name) and name[i + 1].islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


class Faults:
    def __init__(self):
        self.lock = threading.Lock()
        self.armed = {}  # action -> dict(code, status, count, latency_ms)
        self.calls = {}

    def arm(self, spec):
        action = spec.get("action")
        if not action or not isinstance(action, str):
            raise ValueError("a fault needs an action")
        code = spec.get("code")
        count = int(spec.get("count", 1))
        status = int(spec.get("status") or (400 if code else 200))
        latency = int(spec.get("latency_ms") or 0)
        cut = bool(spec.get("cut"))
        if count < 0 or latency < 0 or not 100 <= status <= 599:
            raise ValueError("bad count, status or latency_ms")
        with self.lock:
            self.armed[action] = {
                "code": code,
                "status": status,
                "count": count,
                "latency_ms": latency,
                "cut": cut,
            }

    def clear(self):
        with self.lock:
            self.armed.clear()

    def take(self, action):
        """Counts a call; returns the fault that applies to it, if any."""
        with self.lock:
            self.calls[action] = self.calls.get(action, 0) + 1
            fault = self.armed.get(action)
            if not fault or fault["count"] <= 0:
                return None
            fault["count"] -= 1
            if fault["count"] == 0:
                del self.armed[action]
            return dict(fault)

    def counts(self):
        with self.lock:
            return dict(self.calls)


class Lab:
    """The WSGI application: EC2 (moto, patched), IMDS and the control endpoints."""

    def __init__(self, vpc_netns):
        import moto.backends  # noqa: F401
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends
        from moto.ec2.responses import EC2Response
        from moto.moto_server.werkzeug_app import create_backend_app

        import ec2_patches
        import view

        if os.environ.get("ENIFLOW_LAB_EMULATOR_UNPATCHED") == "1":
            # Plain moto behind the same front: shows which fidelity tests catch what.
            log.warning("ENIFLOW_LAB_EMULATOR_UNPATCHED=1: moto's EC2 as is")
        else:
            ec2_patches.apply()
        self.ec2_response = EC2Response
        self.backend = lambda: ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
        self.view_module = view
        self.ec2_app = create_backend_app("ec2")
        self.lock = threading.RLock()
        self.faults = Faults()
        self.throttle = Throttle()
        self.fabric = Fabric(vpc_netns)
        self.imds_instance = None
        self.nodes = {}  # instance id -> (netns, server)
        self.servers = []
        self.host_netns = os.open("/proc/self/ns/net", os.O_RDONLY)

    # -- helpers ------------------------------------------------------------------------------

    def view(self):
        with self.lock:
            return self.view_module.build(self.backend())

    def sync(self):
        """Reconciles the fabric with the view; the caller holds the lock."""
        try:
            self.fabric.sync(self.view_module.build(self.backend()))
        except Exception:
            log.error("fabric sync failed:\n%s", traceback.format_exc())

    @staticmethod
    def respond(start_response, status, body, content_type="application/json", headers=None):
        from werkzeug.http import HTTP_STATUS_CODES

        reason = HTTP_STATUS_CODES.get(status, "Unknown")
        hdrs = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        for k, v in (headers or {}).items():
            if k.lower() not in ("content-length",):
                hdrs.append((k, str(v)))
        start_response(f"{status} {reason}", hdrs)
        return [body]

    def json(self, start_response, status, obj):
        return self.respond(start_response, status, json.dumps(obj).encode())

    def ec2_error(self, start_response, status, code, message):
        return self.respond(start_response, status, error_body(code, message), "text/xml")

    # -- dispatch -----------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        return self.serve(environ, start_response, None)

    def for_node(self, instance_id):
        def app(environ, start_response):
            return self.serve(environ, start_response, instance_id)

        return app

    def serve(self, environ, start_response, node_instance):
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if path.startswith("/_lab/"):
                return self.control(environ, start_response, method, path)
            if path.startswith("/latest/") or path == "/latest":
                return self.serve_imds(environ, start_response, method, path, node_instance)
            if method == "POST" and path == "/":
                return self.serve_ec2(environ, start_response, caller=node_instance)
            return self.json(start_response, 404, {"error": f"no such endpoint {method} {path}"})
        except Exception:
            log.error("%s %s failed:\n%s", method, path, traceback.format_exc())
            return self.json(start_response, 500, {"error": traceback.format_exc()})

    # -- EC2 ----------------------------------------------------------------------------------

    def serve_ec2(self, environ, start_response, count=True, caller=None):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        params = parse_qs(body.decode("utf-8", "replace"))
        action = (params.get("Action") or [None])[0]
        if not action:
            return self.ec2_error(start_response, 400, "MissingAction",
                                  "The request must contain the parameter Action")
        if not count:
            return self.run_ec2(environ, start_response, action)[1]
        caller = caller or access_key(environ)
        outcome, answer = self.serve_counted(environ, start_response, action, params)
        self.throttle.record(action, params, caller, outcome)
        return answer

    def serve_counted(self, environ, start_response, action, params):
        """A call as EC2 answers it, faults and throttling first: (outcome, answer)."""
        fault = self.faults.take(action)
        if fault:
            if fault["latency_ms"]:
                time.sleep(fault["latency_ms"] / 1000)
            if fault["cut"]:
                log.info("fault: %s -> an answer with no body", action)
                start_response("500 Internal Server Error", [("Content-Length", "0")])
                return "cut", []
            if fault["code"]:
                log.info("fault: %s -> %s %s", action, fault["status"], fault["code"])
                return fault["code"], self.ec2_error(
                    start_response, fault["status"], fault["code"],
                    f"Injected by the lab for {action}")
        if not self.throttle.admit(action, params):
            return "RequestLimitExceeded", self.ec2_error(
                start_response, 503, "RequestLimitExceeded", "Request limit exceeded.")
        return self.run_ec2(environ, start_response, action)

    def run_ec2(self, environ, start_response, action):
        """Moto's answer to the call: (outcome, answer)."""
        if not callable(getattr(self.ec2_response, camel_to_snake(action), None)):
            return "InvalidAction", self.ec2_error(
                start_response, 400, "InvalidAction",
                f"The action {action} is not valid for this web service.")
        from moto.core.exceptions import ServiceException
        from werkzeug.test import run_wsgi_app

        mutating = not action.startswith(("Describe", "Get"))
        with self.lock:
            try:
                app_iter, status, headers = run_wsgi_app(self.ec2_app, environ, buffered=True)
                data = b"".join(app_iter)
            except ServiceException as e:
                return e.code, self.ec2_error(start_response, 400, e.code, e.message)
            except NotImplementedError as e:
                code = "UnsupportedOperation"
                if "filter" in str(e).lower():
                    code = "InvalidParameterValue"
                log.warning("%s: not implemented: %s", action, e)
                return code, self.ec2_error(start_response, 400, code,
                                            f"The lab's EC2 does not support this: {e}")
            except Exception as e:
                log.error("%s failed:\n%s", action, traceback.format_exc())
                return "InternalError", self.ec2_error(start_response, 500, "InternalError",
                                                       f"{type(e).__name__}: {e}")
            code = int(status.split()[0])
            if 200 <= code < 300 and mutating:
                self.sync()
        hdrs = [(k, v) for k, v in headers if k.lower() != "content-length"]
        hdrs.append(("Content-Length", str(len(data))))
        start_response(status, hdrs)
        return ("ok" if 200 <= code < 300 else f"HTTP {code}"), [data]

    def warm_up(self):
        """Pays moto's first-call cost (backend, service model) before anyone waits on it."""
        from werkzeug.test import EnvironBuilder

        auth = ("AWS4-HMAC-SHA256 Credential=lab/20240101/" + REGION +
                "/ec2/aws4_request, SignedHeaders=host, Signature=0")
        for action in ("DescribeVpcs", "DescribeNetworkInterfaces", "DescribeSubnets",
                       "DescribeInstances", "DescribeInstanceTypes&InstanceType.1=m5.large"):
            builder = EnvironBuilder(
                path="/", method="POST",
                data=f"Action={action}&Version=2016-11-15",
                content_type="application/x-www-form-urlencoded; charset=utf-8",
                headers={"Authorization": auth, "Host": "127.0.0.1"},
            )
            environ = builder.get_environ()
            statuses = []
            self.serve_ec2(environ, lambda s, h, statuses=statuses: statuses.append(s),
                           count=False)
            if not statuses or not statuses[0].startswith("200"):
                raise RuntimeError(f"warm-up {action} failed: {statuses}")
        self.view()

    # -- IMDS ---------------------------------------------------------------------------------

    def serve_imds(self, environ, start_response, method, path, node_instance):
        from werkzeug.datastructures import EnvironHeaders

        instance_id = node_instance or self.imds_instance
        if instance_id is None:
            return self.respond(start_response, 404, b"Not Found", "text/plain")
        view = self.view()
        status, headers, body = imds.handle(view, instance_id, method, path,
                                          EnvironHeaders(environ))
        if isinstance(body, str):
            body = body.encode()
        headers = dict(headers or {})
        content_type = headers.pop("Content-Type", headers.pop("content-type", "text/plain"))
        return self.respond(start_response, status, body or b"", content_type, headers)

    # -- control ------------------------------------------------------------------------------

    def control(self, environ, start_response, method, path):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return self.json(start_response, 400, {"error": "the body is not JSON"})
        if path == "/_lab/faults" and method == "POST":
            try:
                self.faults.arm(body)
            except (ValueError, TypeError) as e:
                return self.json(start_response, 400, {"error": str(e)})
            return self.json(start_response, 200, {"ok": True})
        if path == "/_lab/faults" and method == "DELETE":
            self.faults.clear()
            return self.json(start_response, 200, {"ok": True})
        if path == "/_lab/calls" and method == "GET":
            return self.json(start_response, 200, self.faults.counts())
        if path == "/_lab/call-log" and method == "GET":
            return self.json(start_response, 200, self.throttle.calls())
        if path == "/_lab/throttle" and method == "POST":
            try:
                self.throttle.configure(body)
            except (ValueError, TypeError) as e:
                return self.json(start_response, 400, {"error": f"throttle: {e}"})
            return self.json(start_response, 200, {"ok": True})
        if path == "/_lab/view" and method == "GET":
            return self.json(start_response, 200, self.view())
        if path == "/_lab/imds" and method == "POST":
            instance_id = body.get("instance_id")
            if not self.instance_known(instance_id):
                return self.json(start_response, 400, {"error": f"no instance {instance_id}"})
            self.imds_instance = instance_id
            return self.json(start_response, 200, {"ok": True})
        if path == "/_lab/nodes" and method == "POST":
            instance_id, netns = body.get("instance_id"), body.get("netns")
            if not self.instance_known(instance_id):
                return self.json(start_response, 400, {"error": f"no instance {instance_id}"})
            if not netns or "/" in netns or not os.path.exists(f"/run/netns/{netns}"):
                return self.json(start_response, 400, {"error": f"no netns {netns!r}"})
            try:
                self.add_node(instance_id, netns)
            except Exception as e:
                log.error("register %s in %s:\n%s", instance_id, netns, traceback.format_exc())
                return self.json(start_response, 500, {"error": f"{type(e).__name__}: {e}"})
            return self.json(start_response, 200, {"ok": True})
        return self.json(start_response, 404, {"error": f"no such endpoint {method} {path}"})

    def instance_known(self, instance_id):
        if not isinstance(instance_id, str):
            return False
        with self.lock:
            return any(i["id"] == instance_id for i in self.view()["instances"])

    # -- nodes --------------------------------------------------------------------------------

    def add_node(self, instance_id, netns):
        with self.lock:
            self.fabric.register(instance_id, netns)
            self.sync()
        if instance_id in self.nodes:
            if self.nodes[instance_id][0] == netns:
                return
            raise RuntimeError(f"{instance_id} already lives in {self.nodes[instance_id][0]}")
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"],
                       check=True, capture_output=True)
        added = subprocess.run(["ip", "-n", netns, "addr", "add", f"{IMDS_ADDRESS}/32",
                                "dev", "lo"], capture_output=True, text=True)
        if added.returncode != 0 and "exists" not in added.stderr:
            raise RuntimeError(f"ip addr add {IMDS_ADDRESS}: {added.stderr.strip()}")
        ready = threading.Event()
        outcome = {}

        def run():
            try:
                with open(f"/run/netns/{netns}") as ns:
                    setns(ns.fileno())
                try:
                    server = make_server(IMDS_ADDRESS, 80, self.for_node(instance_id))
                finally:
                    # Only the socket lives in the node's netns; this thread goes back home.
                    setns(self.host_netns)
            except Exception as e:
                outcome["error"] = e
                ready.set()
                return
            outcome["server"] = server
            ready.set()
            server.serve_forever(poll_interval=0.2)

        thread = threading.Thread(target=run, name=f"node-{instance_id}", daemon=True)
        thread.start()
        ready.wait()
        if "error" in outcome:
            raise outcome["error"]
        self.nodes[instance_id] = (netns, outcome["server"])
        self.servers.append(outcome["server"])
        log.info("%s: EC2 + IMDS on %s:80 in netns %s", instance_id, IMDS_ADDRESS, netns)

    def close(self):
        for server in self.servers:
            try:
                server.shutdown()
                server.server_close()
            except Exception:
                pass
        try:
            self.fabric.close()
        except Exception:
            log.error("fabric close failed:\n%s", traceback.format_exc())


def make_server(host, port, app):
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server as werkzeug_server

    class Handler(MotoRequestHandler):
        def log_request(self, code="-", size="-"):
            pass

    server = werkzeug_server(host, port, app, threaded=True, request_handler=Handler)
    server.daemon_threads = True
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--vpc-netns")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="emulator %(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    die_with_parent()

    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = time.monotonic()
    lab = Lab(args.vpc_netns)
    lab.warm_up()
    server = make_server("127.0.0.1", 0, lab)
    lab.servers.append(server)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                     name="loopback", daemon=True).start()
    port = server.server_address[1]
    tmp = f"{args.port_file}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.rename(tmp, args.port_file)
    log.info("EC2 + IMDS on http://127.0.0.1:%d (ready in %.2f s)", port,
             time.monotonic() - started)

    while not stop.wait(0.1):
        pass
    log.info("stopping")
    lab.close()
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
