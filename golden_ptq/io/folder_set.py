"""A folder of files written as one consistent set, with a manifest of their hashes.

``write_folder_set(folder, fill)`` lets ``fill(tmp)`` write every file into a temporary sibling
folder, adds ``manifest.json`` (size and SHA-256 of each file), then swaps the temporary folder
into place (an atomic exchange where the kernel offers one). A crash at any point leaves the old
complete set or the new complete set at ``folder``; what a crashed writer left beside it (its
temporary or replaced folder) is removed by the next writer of the same folder, or restored
when the crash fell between the two renames of the fallback path.

``verify_folder_set(folder)`` checks a folder against its manifest before anything is loaded.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable, Dict

MANIFEST = "manifest.json"
_PARTIAL = ".partial-"
_REPLACED = ".replaced-"


class FolderSetError(ValueError):
    """A saved folder is incomplete, altered, or ambiguous."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: str) -> Dict[str, str]:
    """relative path -> absolute path of every regular file below ``folder`` (manifest excluded)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel != MANIFEST:
                found[rel] = path
    return dict(sorted(found.items()))


def write_manifest(folder: str) -> Dict[str, Dict[str, object]]:
    entries = {rel: {"bytes": os.path.getsize(path), "sha256": _sha256(path)} for rel, path in _files(folder).items()}
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump({"files": entries}, handle, indent=1, sort_keys=True)
    return entries


def verify_folder_set(folder: str, check_hashes: bool = True) -> None:
    """Raise :class:`FolderSetError` naming the first file that is missing, extra, or altered."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise FolderSetError(f"{folder}: no {MANIFEST}; not a complete folder written by golden_ptq")
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise FolderSetError(f"{path}: unreadable manifest ({err})") from None
    present = _files(folder)
    for rel, entry in entries.items():
        if rel not in present:
            raise FolderSetError(f"{folder}: {rel} is listed in {MANIFEST} but missing")
        size = os.path.getsize(present[rel])
        if size != entry["bytes"]:
            raise FolderSetError(f"{folder}: {rel} has {size} bytes, {MANIFEST} says {entry['bytes']}")
        if check_hashes and _sha256(present[rel]) != entry["sha256"]:
            raise FolderSetError(f"{folder}: {rel} does not match its SHA-256 in {MANIFEST} (altered after saving)")
    extra = [rel for rel in present if rel not in entries]
    if extra:
        raise FolderSetError(f"{folder}: {extra[0]} is not in {MANIFEST} ({len(extra)} unlisted file(s)); "
                             f"files were added after saving")


def _siblings(folder: str, marker: str):
    parent, name = os.path.split(os.path.abspath(folder))
    prefix = f".{name}{marker}"
    if not os.path.isdir(parent):
        return []
    return [os.path.join(parent, entry) for entry in os.listdir(parent) if entry.startswith(prefix)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(path: str, marker: str) -> int:
    tail = os.path.basename(path).split(marker, 1)[1]
    head = tail.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


def recover(folder: str) -> None:
    """Clean up after a writer of ``folder`` that died: drop its partial folders; if it died
    between the two renames of the fallback swap, put the replaced (complete) set back."""
    for path in _siblings(folder, _PARTIAL):
        if not _pid_alive(_owner_pid(path, _PARTIAL)):
            shutil.rmtree(path, ignore_errors=True)
    for path in _siblings(folder, _REPLACED):
        if _pid_alive(_owner_pid(path, _REPLACED)):
            continue
        if not os.path.exists(folder):
            os.rename(path, folder)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unavailable."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def write_folder_set(folder: str, fill: Callable[[str], None]) -> str:
    """Write a new complete set at ``folder`` (see the module docstring); returns ``folder``."""
    folder = os.path.abspath(folder)
    parent, name = os.path.split(folder)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FileExistsError(f"{folder} exists and is not a folder")
    recover(folder)
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.isfile(os.path.join(folder, MANIFEST)):
        raise FileExistsError(f"{folder} holds files that golden_ptq did not write (no {MANIFEST}); "
                              f"choose an empty or new folder, it is replaced as a whole")
    tmp = tempfile.mkdtemp(prefix=f".{name}{_PARTIAL}{os.getpid()}-", dir=parent)
    try:
        fill(tmp)
        write_manifest(tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        if not os.path.exists(folder):
            os.rename(tmp, folder)
            return folder
        if _exchange(tmp, folder):  # tmp now holds the old set
            shutil.rmtree(tmp, ignore_errors=True)
            return folder
        replaced = os.path.join(parent, f".{name}{_REPLACED}{os.getpid()}")
        os.rename(folder, replaced)
        os.rename(tmp, folder)
        shutil.rmtree(replaced, ignore_errors=True)
        return folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
