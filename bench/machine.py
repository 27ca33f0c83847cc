"""What the figures were measured on: host, library versions, date and the jaxsoft tree."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import jax

_PACKAGES = ("jax", "jaxlib", "numpy", "scipy", "optax", "matplotlib", "torch", "jaxsoft")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_state() -> dict:
    """Commit and whether jaxsoft/ had uncommitted edits, so a figure can be tied to its code."""
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip() if out.returncode == 0 else None

    # The sources as measured, even when uncommitted: a digest of every jaxsoft/*.py.
    digest = hashlib.sha256()
    for path in sorted((root / "jaxsoft").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    state = {"jaxsoft_sources_sha256": digest.hexdigest()}
    try:
        state["commit"] = git("rev-parse", "HEAD")
        state["jaxsoft_dirty"] = bool(git("status", "--porcelain", "jaxsoft"))
    except (OSError, subprocess.SubprocessError):
        state["commit"] = state["jaxsoft_dirty"] = None
    return state


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def info() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": {name: _version(name) for name in _PACKAGES},
        "git": _git_state(),
    }
