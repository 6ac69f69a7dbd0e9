"""Output folders every ``ctrflow`` command writes: ownership, refusal, atomic replacement.

It lives in ``features/``, the lowest layer, because both ``pipeline/`` (simulate, load,
preprocess, train, evaluate) and ``serving/`` (export) use it, and ``serving`` may not
import ``pipeline``. It needs only the standard library.

The rules (docs/architecture.md, "Outputs"):

- Every folder a command creates holds a marker file, :data:`MARKER` (command, time,
  version), so a later run knows the folder is its own.
- :func:`claim_output`: a folder that does not exist, or is empty, may be written; one
  marked by the same command may be replaced (re-running a job replaces its own output);
  any other existing path is refused naming it, what is in it and ``--overwrite``, unless
  ``overwrite``; and never, not even with ``overwrite``, when it is or contains one of the
  command's inputs (or other outputs of the same run).
- :func:`atomic_output`: a folder is written under a sibling temp name
  (``.<name>.tmp-<pid>-<hex>``, marked) and swapped in by renames only once complete, so the
  earlier output stays intact until then; leftovers of killed runs (temp folders whose
  writer process is gone) are removed by the next run for the same output.
- :func:`write_file_atomic`: a single generated file via a temp file + ``os.replace``.

Temp-folder clean-up tells a dead writer by its process id, so it assumes one machine
writes a given output at a time.
"""
from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import re
import shutil
import uuid
from typing import Iterator, Optional, Sequence

from features.errors import UserError

MARKER = ".ctrflow-output.json"
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{12}$")
_GLOB_MAGIC = re.compile(r"[*?\[]")

NEW, OWN, REPLACE = "new", "own", "replace"  # what claim_output found (see its docstring)


class OutputError(UserError):
    """An output path a command may not write (someone else's folder, or one holding its inputs)."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ctrflow")
    except Exception:  # not installed as a package (a bare checkout)
        return "unknown"


def marker_payload(command: str) -> dict:
    """What the marker file records: the command, when, which ctrflow, and the writing process."""
    return {"command": command, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "ctrflow": _version(), "pid": os.getpid()}


def write_marker(folder: str, command: str) -> None:
    """Mark ``folder`` as written by ``command``."""
    write_file_atomic(os.path.join(folder, MARKER), json.dumps(marker_payload(command), indent=2))


def read_marker(folder: str) -> Optional[dict]:
    """The marker of ``folder`` (None when it has none or it is unreadable)."""
    try:
        with open(os.path.join(folder, MARKER)) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fixed_prefix(path: str) -> str:
    """The part of a (glob) path before its first wildcard component: ``raw/ads/*.parquet`` -> ``raw/ads``."""
    parts = path.split(os.sep)
    for i, part in enumerate(parts):
        if _GLOB_MAGIC.search(part):
            return os.sep.join(parts[:i]) or (os.sep if path.startswith(os.sep) else os.curdir)
    return path


def is_local(path: str) -> bool:
    """A local path (not an object-store URL such as gs://...)."""
    return "://" not in path


def _norm(path: str) -> str:
    """A comparable form: real absolute path locally, the URL without trailing slash otherwise."""
    path = fixed_prefix(os.path.expanduser(path))
    return os.path.realpath(path) if is_local(path) else path.rstrip("/")


def _inside(path: str, folder: str) -> bool:
    """Is (normalised) ``path`` the (normalised) ``folder`` or below it?"""
    sep = os.sep if is_local(folder) else "/"
    return path == folder or path.startswith(folder.rstrip(sep) + sep)


def protected_inside(path: str, inputs: Sequence[str]) -> list:
    """The entries of ``inputs`` (files, folders or globs) that ``path`` is or contains."""
    folder = _norm(path)
    return [p for p in inputs if p and _inside(_norm(p), folder)]


def check_claim(path: str, command: str, entries: Sequence[str], marker: Optional[dict],
                inputs: Sequence[str] = (), overwrite: bool = False, is_dir: bool = True) -> str:
    """The decision of :func:`claim_output` from what is at ``path`` (``entries``: the names in it,
    None when nothing is there; ``marker``: its marker). Usable for any filesystem."""
    held = protected_inside(path, inputs)
    if held:
        raise OutputError(
            f"{command}: output '{path}' is or contains this command's input(s) {held}; replacing it would "
            f"delete them, so it is refused even with --overwrite. Choose another output folder.")
    if entries is None or (is_dir and not [e for e in entries if e != MARKER]):
        return NEW
    if is_dir and marker and marker.get("command") == command:
        return OWN
    if overwrite:
        return REPLACE
    shown = ", ".join(sorted(entries)[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
    what = "a file" if not is_dir else (
        f"a folder written by 'ctrflow {marker.get('command')}'" if marker else "a folder") + f" (holding {shown})"
    raise OutputError(
        f"{command}: output '{path}' already exists and is {what}, not an earlier output of 'ctrflow {command}', "
        f"so it is left alone. Choose another output, or pass --overwrite to replace it.")


def claim_output(path: str, command: str, inputs: Sequence[str] = (), overwrite: bool = False) -> str:
    """May ``command`` write the local folder ``path``? Returns NEW (absent or empty), OWN (marked
    by ``command``: re-running replaces its own output) or REPLACE (someone else's, but
    ``overwrite``); raises :class:`OutputError` otherwise, and always when ``path`` is or holds
    one of ``inputs`` (the command's inputs and its other outputs; globs allowed)."""
    if os.path.isdir(path):
        return check_claim(path, command, os.listdir(path), read_marker(path), inputs, overwrite)
    if os.path.lexists(path):
        return check_claim(path, command, [os.path.basename(path)], None, inputs, overwrite, is_dir=False)
    return check_claim(path, command, None, None, inputs, overwrite)


def open_output(path: str, command: str, inputs: Sequence[str] = (), overwrite: bool = False) -> str:
    """Claim ``path`` for a command that writes in place (train's run directory, export's model
    folder): create it (or adopt someone else's folder when ``overwrite``) with the marker.
    Returns what :func:`claim_output` found."""
    status = claim_output(path, command, inputs, overwrite)
    if status == REPLACE and not os.path.isdir(path):
        os.remove(path)
    os.makedirs(path, exist_ok=True)
    if status != OWN:
        write_marker(path, command)
    return status


def _sibling(path: str, kind: str) -> str:
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def temp_dir(path: str, command: str) -> str:
    """A new, marked temp folder beside ``path``, named so :func:`clean_leftovers` can tell it."""
    tmp = _sibling(path, "tmp")
    os.makedirs(tmp)
    write_marker(tmp, command)
    return tmp


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_leftovers(path: str) -> list:
    """Remove temp folders of killed runs writing ``path`` (marked, writer process gone). An old
    output moved aside by a run killed between its two renames is moved back when ``path``
    is missing. Returns the removed folders."""
    parent, name = os.path.split(os.path.abspath(path))
    removed = []
    for cand in sorted(glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.*-*-*"))):
        m = _LEFTOVER.match(os.path.basename(cand))
        if not m or m.group("name") != name or pid_alive(int(m.group("pid"))) or read_marker(cand) is None:
            continue
        if ".old-" in os.path.basename(cand) and not os.path.lexists(path):
            os.replace(cand, path)
            continue
        shutil.rmtree(cand, ignore_errors=True)
        removed.append(cand)
    return removed


def replace_dir(new: str, path: str) -> None:
    """Put folder ``new`` at ``path`` by renames: the old one aside, the new one in, the old one
    removed; ``path`` is always either the complete old output or the complete new one."""
    old = None
    if os.path.lexists(path):
        old = _sibling(path, "old")
        os.replace(path, old)
    os.replace(new, path)
    if old:
        if os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)


def set_aside(path: str) -> str:
    """Move an output that is rewritten in place (train's run directory) out of the way, to a
    hidden sibling ``.<name>.replaced-<hex>``, where it stays until :func:`drop_set_aside`
    once the new output is complete (so a killed rewrite never costs the old one)."""
    parent, name = os.path.split(os.path.abspath(path))
    aside = os.path.join(parent, f".{name}.replaced-{uuid.uuid4().hex[:12]}")
    os.replace(path, aside)
    return aside


def drop_set_aside(path: str) -> list:
    """Delete what :func:`set_aside` kept of ``path`` (marked folders only); returns them."""
    parent, name = os.path.split(os.path.abspath(path))
    dropped = [d for d in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.replaced-*"))
               if read_marker(d) is not None]
    for d in dropped:
        shutil.rmtree(d, ignore_errors=True)
    return dropped


@contextlib.contextmanager
def atomic_output(path: str, command: str, inputs: Sequence[str] = (), overwrite: bool = False) -> Iterator[str]:
    """Write the folder ``path`` atomically: ``with atomic_output(out, "simulate") as tmp:`` write
    everything under ``tmp``; on success it replaces ``path``, on error it is removed and
    ``path`` is untouched. Claims ``path`` first and cleans leftovers of killed runs."""
    path = os.path.abspath(os.path.expanduser(path))
    claim_output(path, command, inputs, overwrite)
    clean_leftovers(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_dir(path, command)
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file_atomic(path: str, data) -> None:
    """Write ``data`` (str or bytes) to ``path`` via a temp file in the same folder and
    ``os.replace``: a reader (or a kill) never sees a half-written file."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(tmp, mode) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
