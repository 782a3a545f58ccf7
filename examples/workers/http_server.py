"""An HTTP server (standard library only) for `isotropic-cluster run --listen`:
it serves on the socket the primary passes at fd 3 (systemd's socket
activation), one copy per worker, all on one port:

    isotropic-cluster run --workers 4 --listen 127.0.0.1:8080 -- python3 examples/workers/http_server.py
    curl http://127.0.0.1:8080/
"""
import http.server, os, signal, socket, sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"served by pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
    sys.exit("start me with: isotropic-cluster run --listen ADDR -- python3 http_server.py")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # graceful: exit 0
server = http.server.HTTPServer(("", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
print("serving", flush=True)
server.serve_forever()
