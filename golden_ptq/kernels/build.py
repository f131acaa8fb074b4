"""Compiling the native kernel libraries, with no MindSpore import: ``setup.py`` loads this file by
path to build them at install time, and :mod:`golden_ptq.kernels.native` uses it at run time.

Two libraries: ``gp_kernels`` (the int8 products, KV cache, GPTQ, scoring and NLL sources, one
runtime) and ``float_prefill``. Each source compiles to an object of its own, all of them at once on
the machine's cores (``int8_gemm.cc`` alone takes most of the time), then each library links.

Where a library comes from, first match:

1. ``prebuilt/<name>-<source key>.so`` inside the installed package: built by ``pip install`` (the
   source key hashes the sources, headers and flags, so an edited checkout never loads a stale one);
2. the per-user cache ``$XDG_CACHE_HOME/golden_ptq/kernels`` (or ``~/.cache/...``), keyed also by the
   compiler's version, compiled there at first use.

One library serves every x86-64 CPU: the vector paths carry per-function target attributes and are
chosen at run time from the CPU's flags.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PREBUILT_FOLDER = "prebuilt"   # inside the package's kernels folder
PREBUILT = os.path.join(HERE, PREBUILT_FOLDER)
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-pthread"]
# name: (sources, headers); gp_kernels' int8_gemm.cc defines the runtime of gp_runtime.h
LIBRARIES: Dict[str, Tuple[List[str], List[str]]] = {
    "gp_kernels": ([os.path.join(HERE, name) for name in ("int8_gemm.cc", "kv_attention.cc", "kv_codec.cc",
                                                          "gptq_columns.cc", "candidate_score.cc", "nll.cc",
                                                          "blas_gemm.cc")],
                   [os.path.join(HERE, "gp_runtime.h")]),
    "float_prefill": ([os.path.join(HERE, "float_prefill.cc")], []),
}


def compiler() -> str:
    """The C++ compiler on PATH; raises RuntimeError when there is none or the machine is not x86-64."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError(f"machine {platform.machine()} is not x86-64")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    return cxx


def source_key(sources: Sequence[str], headers: Sequence[str]) -> str:
    """Hash of the sources' and headers' text and the flags (a prebuilt library's name)."""
    digest = hashlib.sha256()
    for name in list(sources) + list(headers):
        with open(name, "rb") as handle:
            digest.update(handle.read())
    digest.update(" ".join(FLAGS).encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def cache_key(sources: Sequence[str], headers: Sequence[str], cxx: str) -> str:
    """:func:`source_key` with the compiler's version (a cached library's name: an upgrade rebuilds)."""
    return hashlib.sha256((source_key(sources, headers) + _compiler_version(cxx)).encode()).hexdigest()[:16]


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "golden_ptq", "kernels")


def _library_file(folder: str, stem: str, key: str) -> str:
    """A library's file: ``<folder>/<stem>-<key>.so`` (prebuilt and cached alike)."""
    return os.path.join(folder, f"{stem}-{key}.so")


def _cached_path(stem: str, sources: Sequence[str], headers: Sequence[str], cxx: str) -> str:
    return _library_file(cache_dir(), stem, cache_key(sources, headers, cxx))


def prebuilt_path(stem: str, sources: Sequence[str], headers: Sequence[str]) -> Optional[str]:
    """The install-time library for these exact sources, if the package holds one."""
    path = _library_file(PREBUILT, stem, source_key(sources, headers))
    return path if os.path.isfile(path) else None


def compile_libraries(jobs: Dict[str, Tuple[Sequence[str], str]], cxx: str, workers: Optional[int] = None) -> None:
    """Build ``{stem: (sources, path)}``: every source to an object in parallel (``workers``, default
    the CPUs), then one link per library, each renamed into place whole (never a partial file at
    ``path``). Raises RuntimeError naming the source and the compiler's first error lines."""
    with tempfile.TemporaryDirectory(prefix="golden_ptq_build_") as work:
        objects = {stem: [os.path.join(work, f"{stem}.{i}.o") for i in range(len(sources))]
                   for stem, (sources, _) in jobs.items()}
        tasks = [(source, obj) for stem, (sources, _) in jobs.items() for source, obj in zip(sources, objects[stem])]
        # largest first, so the long source starts at once and the rest fill the other cores
        tasks.sort(key=lambda task: -os.path.getsize(task[0]))

        def run(command: List[str], what: str) -> None:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{cxx} failed on {what}: {done.stderr.strip()[:400]}")

        with ThreadPoolExecutor(max_workers=workers or len(os.sched_getaffinity(0))) as pool:
            for future in [pool.submit(run, [cxx, *FLAGS, "-c", "-o", obj, source], source) for source, obj in tasks]:
                future.result()
        for stem, (_, path) in jobs.items():
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            os.close(fd)
            try:
                run([cxx, *FLAGS, "-shared", "-o", tmp, *objects[stem]], f"linking {stem}")
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)


def library_path(stem: str, sources: Optional[Sequence[str]] = None, headers: Optional[Sequence[str]] = None) -> str:
    """Path of library ``stem`` (a key of ``LIBRARIES``, or any name with ``sources``): the prebuilt
    one, else the cached one, compiling it (and, for the packaged libraries, the others missing from
    the cache, at once) when the cache lacks it."""
    if sources is None:
        sources, headers = LIBRARIES[stem]
    headers = list(headers or [])
    found = prebuilt_path(stem, sources, headers)
    if found:
        return found
    cxx = compiler()
    path = _cached_path(stem, sources, headers, cxx)
    if os.path.isfile(path):
        return path
    jobs = {stem: (sources, path)}
    if stem in LIBRARIES and list(LIBRARIES[stem][0]) == list(sources):
        for other, (other_sources, other_headers) in LIBRARIES.items():
            other_path = _cached_path(other, other_sources, other_headers, cxx)
            if other not in jobs and not prebuilt_path(other, other_sources, other_headers) \
                    and not os.path.isfile(other_path):
                jobs[other] = (other_sources, other_path)
    compile_libraries(jobs, cxx)
    return path


def build_prebuilt(package_kernels: str) -> List[str]:
    """Compile every library into ``<package_kernels>/prebuilt`` (``setup.py`` calls this on the
    build copy of the package); returns the paths written."""
    folder = os.path.join(package_kernels, PREBUILT_FOLDER)
    jobs = {}
    for stem, (sources, headers) in LIBRARIES.items():
        copied = [os.path.join(package_kernels, os.path.basename(s)) for s in sources]
        copied_headers = [os.path.join(package_kernels, os.path.basename(h)) for h in headers]
        jobs[stem] = (copied, _library_file(folder, stem, source_key(copied, copied_headers)))
    compile_libraries(jobs, compiler())
    written = [path for _, path in jobs.values()]
    # a reused build folder (pip builds in the checkout's build/) may hold libraries of older sources
    for name in os.listdir(folder):
        if os.path.join(folder, name) not in written:
            os.remove(os.path.join(folder, name))
    return written
