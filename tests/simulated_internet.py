"""The internet, simulated for a first run without one: dataset URLs are answered from a folder
of archives, every other request fails, and no socket may connect.

    install("/path/with/MNIST/raw")  # in a test, or from a sitecustomize.py for a notebook kernel

Each URL asked for is appended to ``requested`` (and to ``$CNNLAB_SIMULATED_LOG`` when set).
"""

from __future__ import annotations

import io
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

requested: list[str] = []


class _Response(io.BytesIO):
    def __init__(self, url: str, body: bytes):
        super().__init__(body)
        self.url, self.length, self.status = url, len(body), 200

    def getcode(self) -> int:
        return 200


def install(archives: str | os.PathLike, setattr=setattr) -> None:
    """Answer any URL whose file name is an archive under ``archives`` (searched recursively)
    with its bytes; refuse everything else, and every socket connection. Pass pytest's
    ``monkeypatch.setattr`` to have it all undone after a test."""
    files = {p.name: p for p in Path(archives).rglob("*.gz")}
    log = os.environ.get("CNNLAB_SIMULATED_LOG")

    def urlopen(req, *args, **kwargs):
        url = req.full_url if isinstance(req, urllib.request.Request) else str(req)
        requested.append(url)
        if log:
            with open(log, "a") as f:
                f.write(url + "\n")
        name = url.rstrip("/").rsplit("/", 1)[-1]
        if name in files:
            return _Response(url, files[name].read_bytes())
        raise urllib.error.URLError(f"simulated internet: nothing at {url}")

    def no_connection(self, address):
        raise OSError(f"simulated internet: connection to {address} refused")

    setattr(urllib.request, "urlopen", urlopen)
    setattr(socket.socket, "connect", no_connection)
