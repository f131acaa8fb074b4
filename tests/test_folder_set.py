"""A saved folder is one consistent set: manifest checked on load, crashes leave old or new, no orphans."""
import os
import subprocess
import sys
import textwrap

import pytest

from golden_ptq.deploy import find_checkpoint
from golden_ptq.io.folder_set import FolderSetError, recover, verify_folder_set, write_folder_set


def _fill(content):
    def fill(tmp):
        for name in ("a.txt", "sub/b.txt"):
            os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
            with open(os.path.join(tmp, name), "w") as handle:
                handle.write(f"{content} {name}")
    return fill


def _contents(folder):
    return {name: open(os.path.join(folder, name)).read() for name in ("a.txt", "sub/b.txt")}


def _siblings(folder):
    parent, name = os.path.split(folder)
    return [entry for entry in os.listdir(parent) if entry.startswith(f".{name}.")]


def test_manifest_catches_altered_missing_and_added_files(tmp_path):
    folder = str(tmp_path / "model")
    write_folder_set(folder, _fill("v1"))
    verify_folder_set(folder)
    with open(os.path.join(folder, "a.txt"), "a") as handle:
        handle.write("!")
    with pytest.raises(FolderSetError, match=r"a.txt has 9 bytes, manifest.json says 8"):
        verify_folder_set(folder)
    write_folder_set(folder, _fill("v2"))
    with open(os.path.join(folder, "a.txt"), "w") as handle:
        handle.write("v3 a.txt")  # same size, other bytes
    with pytest.raises(FolderSetError, match=r"a.txt does not match its SHA-256"):
        verify_folder_set(folder)
    write_folder_set(folder, _fill("v2"))
    os.remove(os.path.join(folder, "sub", "b.txt"))
    with pytest.raises(FolderSetError, match=r"sub/b.txt is listed in manifest.json but missing"):
        verify_folder_set(folder)
    write_folder_set(folder, _fill("v2"))
    open(os.path.join(folder, "model.ckpt"), "w").close()
    with pytest.raises(FolderSetError, match=r"model.ckpt is not in manifest.json"):
        verify_folder_set(folder)
    os.remove(os.path.join(folder, "manifest.json"))
    with pytest.raises(FolderSetError, match=r"no manifest.json; not a complete folder"):
        verify_folder_set(folder)


def test_two_weight_files_are_ambiguous(tmp_path):
    for name in ("model.ckpt", "model.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(FolderSetError, match=r"holds both model.safetensors and model.ckpt; .* ambiguous"):
        find_checkpoint(str(tmp_path))


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"holds files that golden_ptq did not write"):
        write_folder_set(str(tmp_path / "mine"), _fill("v1"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_failing_writer_leaves_the_old_set_and_no_orphan(tmp_path):
    folder = str(tmp_path / "model")
    write_folder_set(folder, _fill("old"))

    def broken(tmp):
        _fill("new")(tmp)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder_set(folder, broken)
    verify_folder_set(folder)
    assert _contents(folder)["a.txt"] == "old a.txt" and _siblings(folder) == []


CHILD = textwrap.dedent("""
    import os, sys
    from golden_ptq.io import folder_set as fs
    folder, point = sys.argv[1], sys.argv[2]

    def die(*_args, **_kwargs):
        os._exit(9)

    def fill(tmp):
        for name in ("a.txt", "sub/b.txt"):
            os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
            with open(os.path.join(tmp, name), "w") as handle:
                handle.write(f"new {name}")
            if point == "fill":
                die()

    if point == "before_swap":
        fs._exchange = die
    elif point == "between_renames":  # the fallback path where the kernel has no atomic exchange
        fs._exchange = lambda a, b: False
        real = os.rename
        def rename(a, b):
            real(a, b)
            die()
        fs.os.rename = rename
    elif point == "after_swap":
        fs.shutil.rmtree = die
    fs.write_folder_set(folder, fill)
""")


@pytest.mark.parametrize("point", ["fill", "before_swap", "between_renames", "after_swap"])
def test_killed_save_leaves_old_or_new_set(tmp_path, point):
    folder = str(tmp_path / "model")
    write_folder_set(folder, _fill("old"))
    result = subprocess.run([sys.executable, "-c", CHILD, folder, point], capture_output=True, text=True)
    assert result.returncode == 9, result.stderr
    if not os.path.exists(folder):  # killed between the fallback's two renames: the next reader/writer restores
        assert point == "between_renames"
        recover(folder)
    verify_folder_set(folder)
    contents = _contents(folder)
    assert set(contents.values()) in ({"old a.txt", "old sub/b.txt"}, {"new a.txt", "new sub/b.txt"})
    expected_new = point == "after_swap"
    assert contents["a.txt"] == ("new a.txt" if expected_new else "old a.txt")
    write_folder_set(folder, _fill("next"))  # the next writer removes what the dead one left
    assert _siblings(folder) == [] and _contents(folder)["a.txt"] == "next a.txt"
