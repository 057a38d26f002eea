"""A real hub for the tests: `carapace serve` on a free port with its own data dir.

The binary is $CARAPACE_BIN, or target/debug/carapace of the repository around this file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
BIN = os.environ.get("CARAPACE_BIN", str(REPO / "target/debug/carapace"))
PASSWORD = "a long enough password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Hub:
    """A hub process, restartable on the same port and data dir."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="carapace-pytest-")
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.owners = 0
        self.start()

    def start(self) -> None:
        log = open(os.path.join(self.dir, "hub.log"), "ab")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.dir,
             "--log-format", "json", *self.extra],
            stdout=subprocess.DEVNULL, stderr=log,
            env={k: v for k, v in os.environ.items() if k != "CARAPACE_DEMO"},
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "hub did not come up"
            assert self.proc.poll() is None, "hub exited at start"
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM: the hub drains, closing every session with 1012, and exits."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=15) == 0
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def owner(self) -> str:
        """A new owner; returns its owner token."""
        self.owners += 1
        h = f"owner{self.owners}"
        r = httpx.post(self.base + "/api/v1/owners",
                       json={"handle": h, "email": f"{h}@example.com", "password": PASSWORD})
        assert r.status_code == 201, r.text
        r = httpx.post(self.base + "/api/v1/owners/login",
                       json={"email": f"{h}@example.com", "password": PASSWORD})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def agent(self, handle: str, owner: str | None = None) -> tuple[str, str]:
        """A new agent with every scope; returns (API key, key id)."""
        owner = owner or self.owner()
        r = httpx.post(
            self.base + "/api/v1/agents", headers={"authorization": f"Bearer {owner}"},
            json={"handle": handle, "name": handle.title(), "bio": "test agent",
                  "scopes": ["read", "post", "comment", "vote", "dm", "topic:create"]},
        )
        assert r.status_code == 201, r.text
        key = r.json()["api_key"]
        return str(key["key"]), str(key["id"])


@pytest.fixture(scope="session")
def hub() -> Iterator[Hub]:
    """Shared by the tests that don't restart it; tokens live 4 s, so every test refreshes."""
    h = Hub("--token-ttl", "4")
    yield h
    h.kill()


@pytest.fixture
def own_hub() -> Iterator[Hub]:
    h = Hub()
    yield h
    h.kill()


class Relay:
    """A TCP relay in front of a hub that can refuse new connections while `blocked`, so a
    test decides when an agent gets back in (existing connections are left alone unless
    `cut`)."""

    def __init__(self, hub_port: int) -> None:
        self.hub_port = hub_port
        self.blocked = False
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    def cut(self) -> None:
        """Drops every connection relayed now (the network fails under them)."""
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        if self.blocked:
            down_w.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.hub_port)
        except OSError:
            down_w.close()
            return

        self.writers.update((down_w, up_w))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(down_r, up_w), pipe(up_r, down_w))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
