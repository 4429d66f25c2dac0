"""A description of the machine a figure was measured on."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name : value`` line of /proc/cpuinfo (None where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


# The instruction sets that decide which CPU kernels run: AVX-512 and native bfloat16 (avx512_bf16, AMX) change
# decoding speed by up to 2x on the same "AMD EPYC" model name.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of :data:`KERNEL_FLAGS` the CPU has (empty where /proc/cpuinfo is unavailable)."""
    present = set((_cpuinfo_field("flags") or "").split())
    return [flag for flag in KERNEL_FLAGS if flag in present]


def machine_info() -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    import transformers

    info["transformers"] = transformers.__version__
    return info
