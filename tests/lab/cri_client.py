"""A minimal CRI v1 client: drives containerd's CRI as kubelet does, for the real-runtime tests.

    python cri_client.py SOCKET run NAME [NAME ...]   -> JSON [{"name", "id", "ip"}]
    python cri_client.py SOCKET stop-remove ID [ID ...]
    python cri_client.py SOCKET cleanup                -> stops and removes every sandbox left

`run` calls RunPodSandbox (with the pod annotations kubelet passes) then PodSandboxStatus for
each pod; `stop-remove` calls StopPodSandbox then RemovePodSandbox, as kubelet does when a pod
goes (each runs the whole CNI DEL chain, so DEL arrives twice per pod).
"""

import json
import sys
import uuid

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc


def runtime(socket):
    channel = grpc.insecure_channel(f"unix://{socket}")
    return api_pb2_grpc.RuntimeServiceStub(channel)


def run(stub, names):
    pods = []
    for name in names:
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(
                name=name, uid=str(uuid.uuid4()), namespace="default", attempt=0
            ),
            hostname=name,
            log_directory="",
            annotations={"eniflow.io/test": name},
            linux=api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(network=api_pb2.POD)
                )
            ),
        )
        sandbox = stub.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60)
        status = stub.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox.pod_sandbox_id), timeout=30
        )
        pods.append(
            {"name": name, "id": sandbox.pod_sandbox_id, "ip": status.status.network.ip}
        )
    return pods


def stop_remove(stub, ids):
    for pod_id in ids:
        stub.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        stub.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    return []


def cleanup(stub):
    left = stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items
    for sandbox in left:
        try:
            stop_remove(stub, [sandbox.id])
        except grpc.RpcError as e:
            print(f"cleanup {sandbox.id}: {e.code()}: {e.details()}", file=sys.stderr)
    return [s.id for s in left]


def main():
    socket, action, *args = sys.argv[1:]
    stub = runtime(socket)
    try:
        if action == "run":
            print(json.dumps(run(stub, args)))
        elif action == "stop-remove":
            print(json.dumps(stop_remove(stub, args)))
        elif action == "cleanup":
            print(json.dumps(cleanup(stub)))
        else:
            sys.exit(f"unknown action {action!r}")
    except grpc.RpcError as e:
        sys.exit(f"{action}: {e.code()}: {e.details()}")


if __name__ == "__main__":
    main()
