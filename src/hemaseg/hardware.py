"""What this machine computes fast: probes that choose a precision (used by :mod:`hemaseg.predict` and
:mod:`hemaseg.engine`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (Intel AMX or AVX512-BF16: the ``amx_bf16`` or
    ``avx512_bf16`` flag of ``/proc/cpuinfo``, or of the ``cpuinfo`` text given). Elsewhere bfloat16 is
    emulated and slower than float32.

    >>> cpu_has_native_bf16("flags\t: fpu sse avx2 avx512f"), cpu_has_native_bf16("flags\t: avx512f amx_bf16 amx_tile")
    (False, True)
    """
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return bool(flags & {"amx_bf16", "avx512_bf16"})


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """``/proc/cpuinfo``, read once per process ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
