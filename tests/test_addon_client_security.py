"""The add-on's HTTP client keeps the backend token to the backend (issue 20, item 2):
loopback is decided on addresses, not name prefixes; no token in clear text to another
machine; no redirect followed; a token file others can read is refused. Tested against
local capture servers on loopback (numpy and the standard library only, as the add-on)."""

from __future__ import annotations

import http.server
import os
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from instascene_blender.io.service import Client, ServiceError, is_loopback, read_token  # noqa: E402

TOKEN = "s3cret-" + "x" * 32


class Capture:
    """A loopback HTTP server that records every request's path and Authorization header and
    answers `status` (with `location` for a redirect) or 200 {}."""

    def __init__(self, status: int = 200, location: str | None = None, host: str = "127.0.0.1"):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                seen.append((self.path, self.headers.get("Authorization")))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_loopback_is_an_address_not_a_prefix():
    for url in ("http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:8", "http://127.0.0.2", "https://LOCALHOST"):
        assert is_loopback(url), url
    for url in ("http://127.evil.example", "http://0.0.0.0:8765", "http://10.0.0.1", "http://localhost.evil.example",
                "http://[::]:8"):
        assert not is_loopback(url), url


def test_the_token_is_not_sent_in_clear_text_to_another_host():
    srv = Capture(host="0.0.0.0")
    try:
        with pytest.raises(ServiceError, match="clear text"):
            Client(f"http://0.0.0.0:{srv.port}", TOKEN).request("GET", "/capabilities")
        assert srv.seen == []
        # /health needs no token and goes through; loopback with the token works
        Client(f"http://0.0.0.0:{srv.port}", TOKEN).request("GET", "/health", auth=False)
        Client(f"http://127.0.0.1:{srv.port}", TOKEN).request("GET", "/capabilities")
        assert srv.seen == [("/health", None), ("/capabilities", f"Bearer {TOKEN}")]
    finally:
        srv.close()


def test_a_redirect_is_not_followed_with_the_token():
    elsewhere = Capture()
    backend = Capture(status=307, location=f"http://localhost:{elsewhere.port}/steal")
    try:
        with pytest.raises(ServiceError, match="307"):
            Client(f"http://127.0.0.1:{backend.port}", TOKEN).request("GET", "/capabilities")
        assert backend.seen == [("/capabilities", f"Bearer {TOKEN}")] and elsewhere.seen == []
    finally:
        backend.close()
        elsewhere.close()


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_token_file_others_can_read_is_refused(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o644)
    with pytest.raises(ServiceError, match="chmod 600"):
        read_token(str(f))
    f.chmod(0o600)
    assert read_token(str(f)) == TOKEN
