"""A local stand-in for the Compute Engine metadata server, the credential source of every Cloud
Function: ``google.auth.default()`` finds it through ``GCE_METADATA_HOST`` / ``GCE_METADATA_IP``.

With it, local code takes the same credential path as in the cloud (detect GCE, read the service
account, fetch an access token, refresh it on expiry) instead of anonymous credentials. The
cold-start benchmark uses it so that both sides pay the production credential cost.

Protocol (``Metadata-Flavor: Google`` required on every request, as the real server does; answers
carry it too):

- ``GET /`` -> 200 (the residency ping);
- ``GET /computeMetadata/v1/project/project-id`` -> the project id (text);
- ``GET /computeMetadata/v1/instance/service-accounts/default/?recursive=true`` ->
  ``{"email", "aliases": ["default"], "scopes": [...]}``;
- ``GET /computeMetadata/v1/instance/service-accounts/{account}/token[?scopes=...]`` ->
  ``{"access_token", "expires_in", "token_type": "Bearer"}``;
- anything else -> 404; a request without the header -> 403.

    python -m local.metadata_server --port 8095
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from local.emulators.base import ensure_loopback

ACCOUNT = "pipelines-runtime@local-project.iam.gserviceaccount.com"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


class MetadataServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, project: str = "local-project") -> None:
        ensure_loopback(host)
        self.project = project
        self.tokens_issued = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._answer(403, "text/plain", b"Missing Metadata-Flavor:Google header.")
                path = urlparse(self.path).path.rstrip("/")
                base = "/computeMetadata/v1"
                if path == "":
                    return self._answer(200, "text/plain", b"")
                if path == f"{base}/project/project-id":
                    return self._answer(200, "text/plain", server.project.encode())
                if path in (
                    f"{base}/instance/service-accounts/default",
                    f"{base}/instance/service-accounts/{ACCOUNT}",
                ):
                    body: dict[str, object] = {"email": ACCOUNT, "aliases": ["default"], "scopes": SCOPES}
                    return self._answer(200, "application/json", json.dumps(body).encode())
                if path.startswith(f"{base}/instance/service-accounts/") and path.endswith("/token"):
                    with server._lock:
                        server.tokens_issued += 1
                    body = {
                        "access_token": "ya29.local-" + secrets.token_hex(8),
                        "expires_in": 3599,
                        "token_type": "Bearer",
                    }
                    return self._answer(200, "application/json", json.dumps(body).encode())
                return self._answer(404, "text/plain", b"Not Found")

            def _answer(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metadata-server", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """What points google-auth at this server."""
        return {"GCE_METADATA_HOST": self.address, "GCE_METADATA_IP": self.address}

    def start(self) -> MetadataServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> MetadataServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--project", default="local-project")
    args = parser.parse_args(argv)
    server = MetadataServer(args.host, args.port, args.project)
    print(json.dumps({"ready": True, "address": server.address}), flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
