"""Compiling the native kernel libraries (golden_ptq.kernels.build): parallel objects, atomic
libraries, install-time libraries found before the cache, and a failed compile that names its source."""
import ctypes
import os

import pytest

from golden_ptq.kernels import build

ADD = 'extern "C" int gp_test_add(int a, int b) { return a + b + %d; }\n'


def _sources(tmp_path, count=3):
    paths = []
    for i in range(count):
        path = tmp_path / f"part{i}.cc"
        path.write_text(ADD.replace("gp_test_add", f"gp_test_add{i}") % i)
        paths.append(str(path))
    return paths


def test_compile_libraries_builds_every_library_from_parallel_objects(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _sources(tmp_path / "a", 3), _sources(tmp_path / "b", 2)
    out = tmp_path / "out"
    jobs = {"one": (first, str(out / "one.so")), "two": (second, str(out / "two.so"))}
    build.compile_libraries(jobs, build.compiler(), workers=2)
    assert sorted(os.listdir(out)) == ["one.so", "two.so"]   # nothing else left in the folder
    one, two = ctypes.CDLL(str(out / "one.so")), ctypes.CDLL(str(out / "two.so"))
    assert [one.gp_test_add0(2, 3), one.gp_test_add2(2, 3), two.gp_test_add1(2, 3)] == [5, 7, 6]


def test_a_failed_compile_names_the_source_and_leaves_no_file(tmp_path):
    good = _sources(tmp_path, 1)
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.so").write_bytes(b"the previous library")
    with pytest.raises(RuntimeError, match="broken.cc"):
        build.compile_libraries({"lib": (good + [str(broken)], str(out / "old.so"))}, build.compiler())
    assert os.listdir(out) == ["old.so"] and (out / "old.so").read_bytes() == b"the previous library"


def test_library_path_prefers_the_install_time_library_then_the_cache(tmp_path, monkeypatch):
    sources = _sources(tmp_path, 2)
    monkeypatch.setattr(build, "PREBUILT", str(tmp_path / "prebuilt"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = build.library_path("demo", sources, [])                  # nothing prebuilt: compiled into the cache
    assert cached.startswith(str(tmp_path / "cache")) and ctypes.CDLL(cached).gp_test_add1(1, 1) == 3
    assert build.library_path("demo", sources, []) == cached          # and found there again
    prebuilt = tmp_path / "prebuilt" / f"demo-{build.source_key(sources, [])}.so"
    prebuilt.parent.mkdir()
    prebuilt.write_bytes(open(cached, "rb").read())
    assert build.library_path("demo", sources, []) == str(prebuilt)
    with open(sources[0], "a") as handle:                             # an edited source: the prebuilt one is stale
        handle.write("// edited\n")
    assert build.library_path("demo", sources, []).startswith(str(tmp_path / "cache"))


def test_the_source_key_covers_sources_headers_and_flags(tmp_path, monkeypatch):
    sources = _sources(tmp_path, 1)
    header = tmp_path / "h.h"
    header.write_text("#pragma once\n")
    key = build.source_key(sources, [str(header)])
    header.write_text("#pragma once\n// changed\n")
    assert build.source_key(sources, [str(header)]) != key
    changed = build.source_key(sources, [str(header)])
    monkeypatch.setattr(build, "FLAGS", build.FLAGS + ["-DX"])
    assert build.source_key(sources, [str(header)]) != changed


def test_build_prebuilt_writes_every_library_and_drops_stale_ones(tmp_path, monkeypatch):
    originals = tmp_path / "src"
    originals.mkdir()
    monkeypatch.setattr(build, "LIBRARIES", {"one": (_sources(originals, 2), []), "two": (_sources(originals, 1), [])})
    kernels = tmp_path / "kernels"      # the build copy of the package's kernels folder
    kernels.mkdir()
    for sources, _ in build.LIBRARIES.values():
        for name in sources:
            (kernels / os.path.basename(name)).write_bytes(open(name, "rb").read())
    (kernels / "prebuilt").mkdir()
    (kernels / "prebuilt" / "one-0000000000000000.so").write_bytes(b"a library of older sources")
    written = build.build_prebuilt(str(kernels))
    assert sorted(os.listdir(kernels / "prebuilt")) == sorted(os.path.basename(p) for p in written)
    assert [os.path.basename(p).split("-")[0] for p in written] == ["one", "two"]
    assert ctypes.CDLL(written[0]).gp_test_add1(1, 1) == 3
