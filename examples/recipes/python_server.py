"""A standard-library HTTP server under `isotropic-cluster run` (README,
"Recipes") that logs each request with a plain `print`: run it with
`PYTHONUNBUFFERED=1` (or `python3 -u`), or Python holds the lines in its
buffer (stdout is a pipe, not a terminal) and prints them late, or never:

    PYTHONUNBUFFERED=1 isotropic-cluster run --workers 4 --listen 127.0.0.1:8080 -- \
        python3 examples/recipes/python_server.py
"""
import http.server, os, signal, socket, sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print(f"GET {self.path}")  # no flush: PYTHONUNBUFFERED does it
        body = f"slot {os.environ['ISOTROPIC_CLUSTER_SLOT']} pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # graceful: exit 0
server = http.server.HTTPServer(("", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)  # the shared socket (LISTEN_FDS=1)
server.serve_forever()
