"""A worker in Python (standard library only, 3.9 or later) that speaks the
framed protocol of docs/protocol.md, version 3: it says hello and ready,
echoes every message back, echoes bytes messages back reversed (large ones
come and go in sealed memfds), answers bytes requests named "reverse" with
their body reversed (any other name with an error), answers heartbeats,
and leaves on disconnect. Run it as a pool:

    isotropic-cluster run --workers 2 --channel frames -- python3 examples/workers/echo_worker.py

What it does not do: MessagePack (its messages are JSON: run it with a
JSON primary, the default), requests of JSON messages (kind 8: they go
unanswered), requests to the primary, listen; the fds that come with a
message are closed unused.

The code below is the one in docs/protocol.md (a test keeps them identical).
"""
import fcntl, json, mmap, os, socket, struct

fd = int(os.environ.pop("ISOTROPIC_CLUSTER_CHANNEL_FD"))
os.environ.pop("ISOTROPIC_CLUSTER_WORKER_ID"); os.environ.pop("ISOTROPIC_CLUSTER_PRIMARY_PID")
channel = socket.socket(fileno=fd)
channel.set_inheritable(False)  # the fd came inheritable: keep it from our children
unread, fds = b"", []           # bytes read and not parsed yet; fds received, in order
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL

def send(kind, payload=b"", fd=None):
    frame = struct.pack(">IB", len(payload) + 1, kind) + payload
    sent = socket.send_fds(channel, [frame], [fd]) if fd is not None else 0
    channel.sendall(frame[sent:])

def send_bytes(payload):                    # in a bytes frame, or from 1 MiB on in a sealed memfd
    if len(payload) < 1 << 20:
        return send(13, payload)
    memfd = os.memfd_create("payload", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    with open(memfd, "wb", closefd=False) as f:
        f.write(payload)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, SEALS)
    send(15, struct.pack(">Q", len(payload)), memfd)
    os.close(memfd)

def recv_exact(n):
    global unread
    while len(unread) < n:                  # recvmsg, not recv: fds come with the bytes
        data, new_fds, _, _ = socket.recv_fds(channel, 1 << 16, 17, socket.MSG_CMSG_CLOEXEC)
        if not data:
            raise EOFError
        unread += data
        fds.extend(new_fds)
    data, unread = unread[:n], unread[n:]
    return data

def recv():                                 # the next frame; a sealed one read as bytes (kind 13)
    length, kind = struct.unpack(">IB", recv_exact(5))
    payload = recv_exact(length - 1)
    if kind == 15:
        memfd = fds.pop(0)
        with mmap.mmap(memfd, struct.unpack(">Q", payload)[0], prot=mmap.PROT_READ) as m:
            kind, payload = 13, m[:]
        os.close(memfd)
    return kind, payload

send(1, b'{"protocol":3,"heartbeat":true}') # hello: version 3, I answer heartbeats
send(2)                                     # ready
try:
    while True:
        kind, payload = recv()
        if kind == 4:                       # message: echo it back
            send(4, json.dumps({"echo": json.loads(payload)}).encode())
        elif kind == 13:                    # bytes: echo them back, reversed
            send_bytes(payload[::-1])
        elif kind == 14:                    # fds for the next message: not used here, closed
            for _ in range(payload[0]):
                os.close(fds.pop(0))
        elif kind == 16:                    # bytes request: id, name; its body is the next frame
            request_id, name = payload[:8], payload[8:].decode()
            body = recv()[1]
            if name == "reverse":           # bytes reply: ok, then the body
                send(17, request_id + b"\0")
                send_bytes(body[::-1])
            else:                           # bytes reply: an error, as a JSON string
                send(17, request_id + b"\1" + json.dumps(f"no handler named {name!r}").encode())
        elif kind == 11:                    # heartbeat: answer it
            send(11)
        elif kind == 3:                     # disconnect: leave
            send(3)
            break
except EOFError:                            # the primary is gone
    pass
