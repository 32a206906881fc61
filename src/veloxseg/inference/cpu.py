"""What this CPU can do, read from the operating system: instruction-set flags and native bfloat16.

Hosts differ between runs (an AMD Zen with AVX512-BF16 but no AMX, an Intel Xeon with AMX): nothing
here is assumed, everything is read from ``/proc/cpuinfo``. A compiled package (``.pt2``) is built for
the instruction sets of the CPU it was compiled on, so its cache key and its sidecar carry these flags.
"""

from __future__ import annotations

import functools
import hashlib
import platform

#: flags of a bfloat16 unit: Intel AMX tiles, AVX512-BF16 (Intel Cooper Lake+, AMD Zen 4+), Arm's BF16
BF16_FLAGS: frozenset[str] = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
#: vector instruction sets a compiled kernel may use (a package built with one crashes where it is missing)
ISA_PREFIXES: tuple[str, ...] = ("sse", "ssse", "avx", "amx", "fma", "f16c", "bmi", "asimd", "sve", "neon", "bf16",
                                 "i8mm", "vsx", "vx")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``flags`` on x86, ``Features`` on Arm); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def isa_flags() -> list[str]:
    """The vector instruction-set flags of :func:`cpu_flags`, sorted (what compiled code may depend on)."""
    return sorted(f for f in cpu_flags() if f.startswith(ISA_PREFIXES))


def cpu_signature() -> str:
    """A short digest of the machine type and its instruction-set flags (part of a compiled package's cache key)."""
    text = platform.machine() + ":" + " ".join(isa_flags())
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX-BF16, AVX512-BF16 or Arm BF16), as ``/proc/cpuinfo`` says."""
    return bool(cpu_flags() & BF16_FLAGS)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
