"""A worker in Python (standard library only) that speaks the framed protocol
of docs/protocol.md: it says hello and ready, echoes every message back
(bytes messages reversed), answers heartbeats, and leaves on disconnect. Run it as a pool:

    isotropic-cluster run --workers 2 --channel frames -- python3 examples/workers/echo_worker.py

The code below is the one in docs/protocol.md (a test keeps them identical).
"""
import json, os, socket, struct

fd = int(os.environ.pop("ISOTROPIC_CLUSTER_CHANNEL_FD"))
os.environ.pop("ISOTROPIC_CLUSTER_WORKER_ID"); os.environ.pop("ISOTROPIC_CLUSTER_PRIMARY_PID")
channel = socket.socket(fileno=fd)
channel.set_inheritable(False)  # the fd came inheritable: keep it from our children

def send(kind, payload=b""):
    channel.sendall(struct.pack(">IB", len(payload) + 1, kind) + payload)

def recv_exact(n):
    data = b""
    while len(data) < n:
        chunk = channel.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

send(1, b'{"protocol":2,"heartbeat":true}') # hello: version 2, I answer heartbeats
send(2)                                     # ready
try:
    while True:
        length, kind = struct.unpack(">IB", recv_exact(5))
        payload = recv_exact(length - 1)
        if kind == 4:                       # message: echo it back
            send(4, json.dumps({"echo": json.loads(payload)}).encode())
        elif kind == 13:                    # bytes: echo them back, reversed
            send(13, payload[::-1])
        elif kind == 11:                    # heartbeat: answer it
            send(11)
        elif kind == 3:                     # disconnect: leave
            send(3)
            break
except EOFError:                            # the primary is gone
    pass
