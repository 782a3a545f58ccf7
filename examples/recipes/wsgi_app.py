"""A WSGI app, served by gunicorn under `isotropic-cluster run` (README,
"Recipes"): each worker is a gunicorn master that adopts the shared
`--listen` socket through `LISTEN_FDS` and says `READY=1` on our
`NOTIFY_SOCKET`:

    isotropic-cluster run --workers 4 --listen 127.0.0.1:8080 --ready notify -- \
        gunicorn --workers 1 --no-control-socket --chdir examples/recipes wsgi_app:app
"""
import os


def app(environ, start_response):
    body = f"slot {os.environ['ISOTROPIC_CLUSTER_SLOT']} pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
