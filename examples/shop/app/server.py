"""HTTP front end: ``python3 -m app.server --config config/staging.toml``.

Serves ``/health`` and ``/products`` as JSON; the listening port and the banner come from the
environment's config file, which graven exposes per environment.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from app import catalog


def load_config(path: str) -> dict[str, object]:
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def make_handler(config: dict[str, object]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"status": "ok", "environment": config.get("environment")})
            elif self.path == "/products":
                self._send(200, {"banner": config.get("banner"), "products": catalog.PRODUCTS})
            else:
                self._send(404, {"error": "not found"})

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = load_config(args.config)
    server = ThreadingHTTPServer(("127.0.0.1", int(config.get("port", 8000))), make_handler(config))
    server.serve_forever()


if __name__ == "__main__":
    main()
