"""Real redis-server processes for the tests (no mocks for the Redis tier).

Per session, started on first use: one standalone server (``redis_standalone``)
and a three-node Redis Cluster (``redis_cluster``). Per test: dedicated servers
from ``redis_factory`` that a test may kill, restart, pause or fill up. Every
server listens on 127.0.0.1 only, on a free port, with persistence off
(``--save "" --appendonly no``), and is stopped when its fixture ends; servers
also get SIGKILL if the pytest process dies (``PR_SET_PDEATHSIG``), so none is
left behind. If ``redis-server`` is missing the tests *fail* (``make test``
installs it: ``make redis-server-installed``).
"""

from __future__ import annotations

import ctypes
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

HOST = "127.0.0.1"
_START_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def redis_binaries() -> tuple[str, str]:
    """Paths of redis-server and redis-cli; fails the test (never skips) when missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.fail("redis-server / redis-cli not found: run `make redis-server-installed` "
                    "(apt-get install -y redis-server); the Redis tier is tested against a "
                    "real server", pytrace=False)
    return server, cli


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, cluster: bool = False) -> int:
    """A free loopback port (and, for a cluster node, its bus port + 10000)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 30000)
        if _bindable(port) and (not cluster or _bindable(port + 10000)):
            return port
    raise RuntimeError("no free loopback port found")


class RedisServer:
    """One redis-server process on 127.0.0.1 that a test controls."""

    def __init__(self, directory: Path, *extra: str, cluster: bool = False,
                 port: int | None = None) -> None:
        self.directory = directory
        self.cluster = cluster
        self.extra = extra
        self.port = port if port is not None else free_port(cluster=cluster)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def node(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        server, _cli = redis_binaries()
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [server, "--port", str(self.port), "--bind", HOST, "--protected-mode", "yes",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"), "--daemonize", "no"]
        if self.cluster:
            # a long node timeout: a node starved of CPU by a busy machine is not voted
            # down (no replicas here, so one failed node would take the cluster down)
            args += ["--cluster-enabled", "yes", "--cluster-node-timeout", "60000",
                     "--cluster-config-file", str(self.directory / "nodes.conf")]
        self.proc = subprocess.Popen([*args, *self.extra], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited: {self.log()}")
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start: {self.log()}")

    def client(self) -> redis.Redis:
        """A plain redis-py client (for test set-up and inspection), short timeouts."""
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2,
                           socket_connect_timeout=2)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        """Terminate the server (SIGKILL after 5 s). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, like a crashed or unplugged machine."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def info(self, section: str) -> dict[str, Any]:
        return dict(self.client().info(section))


def _create_cluster(nodes: list[RedisServer]) -> None:
    _server, cli = redis_binaries()
    subprocess.run([cli, "--cluster", "create", *(n.node for n in nodes),
                    "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        # redis-py leaves execute_command unannotated
        states = [n.client().execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER", "INFO") for n in nodes]
        if all(b"cluster_state:ok" in s if isinstance(s, bytes) else
               "cluster_state:ok" in str(s) for s in states):
            return
        time.sleep(0.1)
    raise RuntimeError("the redis cluster did not reach cluster_state:ok")


@pytest.fixture(scope="session")
def redis_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One standalone server for the whole session (tests use their own namespaces)."""
    server = RedisServer(tmp_path_factory.mktemp("redis-standalone"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """A three-node Redis Cluster (no replicas) for the whole session."""
    root = tmp_path_factory.mktemp("redis-cluster")
    nodes: list[RedisServer] = []
    try:
        for i in range(3):
            nodes.append(RedisServer(root / f"node{i}", cluster=True).start())
        _create_cluster(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start dedicated servers (extra redis-server arguments allowed); all stopped after."""
    started: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", *extra)
        started.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def redis_namespace() -> str:
    """A namespace no other test uses, so tests sharing a server never see each other."""
    return f"test-{uuid.uuid4().hex[:12]}"
