"""Keep glibc from mapping and unmapping every large activation on each forward pass.

glibc serves allocations above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and gives
them back with ``munmap`` on free. A batch of 256 CIFAR images through a ResNet-18 allocates
activations of 64 MiB and more, so every forward pass maps new pages and pays a page fault for
each 4 KiB of them; on CPU that costs 30-45 % of the extraction time. Two glibc tunables stop it:
``mmap_max=0`` (serve large blocks from the heap) and a very large ``trim_threshold`` (never hand
freed heap memory back), so the same pages are reused batch after batch.

glibc reads tunables only when a process starts, so :func:`reexec_with_tunables` re-executes the
command once with them set. The ``normprobe`` and ``normprobe train`` commands call it first
thing; it does nothing on other platforms or C libraries, when the settings are already there or
when ``NORMPROBE_NO_REEXEC`` is set (the test suite sets it), and ``main`` called in-process with
an explicit argv (tests, notebooks) does not call it.

The training command adds :data:`TRAINING_ENV` to the same re-exec: OpenMP threads that wait for
work sleep instead of spinning. libgomp (PyTorch's OpenMP) otherwise spins for about 3 ms at
every barrier, which costs nothing on idle cores but a great deal when the cores are shared: on
a 2-core machine with one other busy process, a SimCLR step of a width-32 ResNet-18 (256 images
x 2 views) on 2 threads took 8.5 s spinning and 2.5 s sleeping (2.4 s on 1 thread). On idle
cores sleeping costs a wake-up per parallel region instead (not measured: no idle machine was at
hand). A value the user set is kept: ``OMP_WAIT_POLICY=ACTIVE`` spins again, and
``GOMP_SPINCOUNT`` overrides either in libgomp.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLES = {"glibc.malloc.mmap_max": "0", "glibc.malloc.trim_threshold": "68719476736"}
NO_REEXEC_ENV = "NORMPROBE_NO_REEXEC"
TRAINING_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def _parse(value: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in value.split(":") if item)
    return {name: setting for name, _, setting in pairs}


def has_tunables(env: Mapping[str, str]) -> bool:
    """Whether ``GLIBC_TUNABLES`` in ``env`` already carries every setting in :data:`TUNABLES`."""
    current = _parse(env.get("GLIBC_TUNABLES", ""))
    return all(current.get(name) == value for name, value in TUNABLES.items())


def env_with_tunables(env: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` with our settings merged into ``GLIBC_TUNABLES`` (the user's others are kept)
    and the variables of ``extra`` that ``env`` does not set already."""
    merged = {**_parse(env.get("GLIBC_TUNABLES", "")), **TUNABLES}
    return {
        **(extra or {}),
        **env,
        "GLIBC_TUNABLES": ":".join(f"{k}={v}" for k, v in merged.items()),
        NO_REEXEC_ENV: "1",
    }


def _is_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def should_reexec(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return _is_glibc() and bool(sys.executable) and NO_REEXEC_ENV not in env and not has_tunables(env)


def reexec_with_tunables(module: str, argv: list[str], extra: Mapping[str, str] | None = None) -> None:
    """Replace this process by ``python -m MODULE ARGV`` with the tunables (and ``extra``, see
    :func:`env_with_tunables`) set; return if not needed.

    The child carries ``NORMPROBE_NO_REEXEC=1``, so it never re-executes again, even if the C library
    ignored the tunables. If ``execve`` itself fails, the command simply goes on in this process.
    """
    if not should_reexec():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", module, *argv], env_with_tunables(os.environ, extra))
    except OSError:
        return
