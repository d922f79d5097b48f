"""Building the package's fused CPU kernels (``csrc/*.cpp``) with
``torch.utils.cpp_extension``: their names in torch's cache, where the cache keeps them, and one
build or load. Shared by :mod:`vsgd_bayes.torch._fused` (VSGD) and
:mod:`vsgd_bayes.torch._curvature_fused` (Curvature Kalman VSGD), which each keep their own
once-per-process state and messages.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import warnings
from types import ModuleType

import torch

__all__ = ["ISA_FLAGS", "CSRC", "extension_name", "library_path", "load"]

CSRC = pathlib.Path(__file__).parent / "csrc"

# Compiler flags per instruction set reported by torch (the same levels torch dispatches its
# own kernels on). The extension's name carries the level, so a cache shared between
# machines never hands AVX-512 code to an AVX2 processor.
ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}


def extension_name(prefix: str, source: pathlib.Path) -> str:
    """``<prefix>_<isa>_<first 8 hex digits of the source's SHA-256>``: the hash keeps builds
    of different versions of a kernel apart in torch's cache (two checkouts, or an upgrade,
    load their own build instead of rebuilding over each other's)."""
    isa = torch.backends.cpu.get_cpu_capability()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    return f"{prefix}_{isa.lower()}_{digest}"


def library_path(name: str) -> pathlib.Path:
    """Where torch's extension cache keeps the library of extension ``name``
    (``<build dir>/<name>.so``; torch's own directory, ``$TORCH_EXTENSIONS_DIR``, else
    ``~/.cache/torch_extensions/<python>_<accelerator>/``). Asking creates the (empty)
    directory, as every load does, and compiles nothing."""
    from torch.utils import cpp_extension

    return pathlib.Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so"


def load(name: str, source: pathlib.Path, cflags: list[str], what: str,
         ) -> tuple[ModuleType | None, str | None]:
    """Build (first time) or load (from torch's cache) one kernel with the compiler flags
    ``cflags`` (and ``-fopenmp`` to link): ``(module, None)``, or ``(None, reason)`` after one
    ``RuntimeWarning`` naming ``what`` if the build fails (no compiler, no ninja, bad
    headers)."""
    try:
        from torch.utils import cpp_extension

        module = cpp_extension.load(
            name=name,
            sources=[str(source)],
            extra_cflags=cflags,
            extra_ldflags=["-fopenmp"],
            verbose=bool(os.environ.get("VSGD_FUSED_VERBOSE")),
        )
    except Exception as error:  # any build failure
        reason = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"vsgd_bayes: the {what} could not be built, its fused path is unavailable (use "
            f"foreach): {reason.splitlines()[0]}",
            RuntimeWarning,
            stacklevel=4,
        )
        return None, reason
    return module, None
