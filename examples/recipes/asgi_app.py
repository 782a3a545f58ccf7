"""An ASGI app, served by uvicorn under `isotropic-cluster run` (README,
"Recipes"): uvicorn serves the shared `--listen` socket at fd 3:

    isotropic-cluster run --workers 4 --listen 127.0.0.1:8080 -- \
        uvicorn --fd 3 --lifespan off --app-dir examples/recipes asgi_app:app
"""
import os


async def app(scope, receive, send):
    body = f"slot {os.environ['ISOTROPIC_CLUSTER_SLOT']} pid {os.getpid()}\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
