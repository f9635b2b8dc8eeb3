"""What an export stopped by a crash left in its folder, settled by the next export under the folder's lock (see
toolkit/staging.py): the folder a commit set the earlier files aside in, and the scratch files and folders of an
export stopped before its commit.

Nothing is taken for the toolkit's by a name that merely looks like one. A folder set aside is settled only when its
name is exactly one a commit makes (`fileio.ASIDE_NAME`), it holds the note the commit wrote before its first rename,
of the structure `note` writes, and everything else in it bears a name an export writes (`EXPORT_NAMES`); any other
is left alone, said in one line. A new file the note lists is removed, or an earlier file put back over it, only
while it is the very content noted: a regular file of the size and SHA-256 noted (a user's identical copy loses
nothing), a folder of the tree noted; a link is never followed. An earlier file is put back where nothing is, or
over that new file; anything else there is left as it is and the earlier file stays set aside, said in one line.
A scratch name carries `fileio.SCRATCH_MARK`, which ordinary names do not.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from toolkit import fileio
from toolkit.artifacts import GOLDEN_NAME, MANIFEST_NAME, RESULT_FILES, TRITON_REPOSITORY
from toolkit.errors import OutputError
from toolkit.formats import FORMATS
from toolkit.refinputs import INPUTS_NAME

Log = Callable[[str], None]

NOTE = ".written"  # in the folder set aside: what its commit puts in place (no name an export writes is hidden)
_NOTE_TMP = ".written.tmp"  # the note, until it is complete
# each file name an export writes, with the endings of the companion files a builder writes beside its scratch file
# (exporters.scratch_path: ".model.xml.toolkit-<random>.tmp.bin"); verify's and bench's results are no export's
# scratch files: they are written without the lock, and their scratch files may be a live command's
_OWN_FILES = {MANIFEST_NAME: (), GOLDEN_NAME: (), INPUTS_NAME: (),
              **{f.file_name(p): f.companions for f in FORMATS.values() for p in f.precisions}}
# every name an export puts in place or sets aside: its files, their companions, the Triton repository (the only
# folder), and the verify and bench results it removes with the files they describe
EXPORT_NAMES = frozenset({*_OWN_FILES, *RESULT_FILES, TRITON_REPOSITORY,
                          *(n for f in FORMATS.values() for p in f.precisions for n in f.companion_names(p))})
_SHA256 = re.compile("[0-9a-f]{64}")


def note(aside: Path, staged: list[tuple[str, Path]], known: dict[str, tuple[int, str]]) -> None:
    """Note in `aside`, before any rename, each name a commit puts in place with its scratch file (or folder) and its
    content: a file's size and SHA-256 (`known`'s where it has them: the manifest's own), a folder's `tree_digest`.
    Written whole or not at all. OSError if it cannot be."""
    entries: list[dict] = []
    for name, scratch in staged:
        if stat.S_ISDIR(os.lstat(scratch).st_mode):
            entries.append({"name": name, "scratch": scratch.name, "tree": tree_digest(scratch)})
        else:
            size, sha256 = known.get(name) or (os.lstat(scratch).st_size, fileio.file_digest(scratch))
            entries.append({"name": name, "scratch": scratch.name, "size": size, "sha256": sha256})
    (aside / _NOTE_TMP).write_text(json.dumps({"written": entries}))
    os.rename(aside / _NOTE_TMP, aside / NOTE)  # into a fresh folder: nothing is replaced


def tree_digest(folder: Path) -> str:
    """The SHA-256 of a folder's tree: each relative name with its kind, a file's size and SHA-256, a link's target
    (never followed)."""
    entries = []
    for root, dirs, files in os.walk(folder):  # a link to a folder is listed, not walked
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            rel, st = os.path.relpath(path, folder), os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with fileio.open_regular(path, follow_links=False) as f:
                    entries.append(["file", rel, st.st_size, fileio.stream_digest(f)])
            elif stat.S_ISLNK(st.st_mode):
                entries.append(["link", rel, os.readlink(path)])
            else:
                entries.append(["folder" if stat.S_ISDIR(st.st_mode) else "other", rel])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def recover(out_dir: Path, log: Log) -> None:
    """Settle the folders set aside by commits a crash stopped, and remove the scratch files of exports a crash
    stopped before their commit; only under the folder's exclusive lock. OutputError if a file cannot be put back."""
    manifest = out_dir / MANIFEST_NAME
    digest = fileio.file_digest(manifest) if manifest.is_file() and not manifest.is_symlink() else ""
    for aside in sorted(out_dir.glob(f"{glob.escape(fileio.ASIDE_SCRATCH)}*")):
        found = fileio.ASIDE_NAME.fullmatch(aside.name)
        noted = _read_note(aside) if found and aside.is_dir() and not aside.is_symlink() else None
        if noted is None:
            if found and _unfinished(aside):  # made, but stopped before its note was whole: nothing was renamed
                shutil.rmtree(aside, ignore_errors=True)
                continue
            log(f"left {aside}{'/' * aside.is_dir()} alone: it is not a folder an export sets its earlier files aside "
                "in (its name, its note or a name in it is not one an export makes)")
        elif digest.startswith(found.group(1)):  # the commit was done but for deleting it
            delete_aside(aside, log)
            log(f"removed {aside}/, the earlier files of an export that was stopped once it was done")
        else:
            _settle(out_dir, aside, noted, log)
    _remove_scratch(out_dir, log)


def _settle(out_dir: Path, aside: Path, noted: list[dict], log: Log) -> None:
    """Put back the earlier files `aside` holds, over the new ones, and remove the new files of other names. A name
    that holds something other than the new file noted (a user's, written since) is left as it is, and its earlier
    file stays in `aside`; the note goes, so that no later export takes a file of the same content for this one's."""
    names = sorted(p.name for p in aside.iterdir() if p.name != NOTE)
    by_name = {entry["name"]: entry for entry in noted}
    put, left = [], []
    for name in names:
        (put if _put_back(aside / name, out_dir / name, by_name.get(name)) else left).append(name)
    removed = _take_back(out_dir, noted, set(names))
    with contextlib.suppress(OSError):
        (aside / NOTE).unlink(missing_ok=True)
        aside.rmdir()
    if put or not (removed or left):
        log(f"put back {', '.join(put) or 'nothing'} from {aside}/, where an export that was stopped part-way had "
            "set the earlier export's files aside")
    for name in left:
        log(f"left {out_dir / name} as it is, not what an export that was stopped part-way put there; the earlier "
            f"export's {name} stays in {aside}/")
    if removed:
        log(f"removed {', '.join(removed)} from {out_dir}/, which an export that was stopped part-way had put in place")


def _read_note(aside: Path) -> list[dict] | None:
    """The note in `aside`, if it and everything beside it are as a commit makes them; else None."""
    try:
        with fileio.open_regular(aside / NOTE, follow_links=False) as f:
            noted = json.loads(f.read(1 << 20))
        others = [(e.name, e.is_dir(follow_symlinks=False)) for e in os.scandir(aside) if e.name != NOTE]
    except (OSError, ValueError):
        return None
    if not (isinstance(noted, dict) and set(noted) == {"written"} and isinstance(noted["written"], list)
            and all(_well_formed(entry) for entry in noted["written"])):
        return None
    if not all(name in EXPORT_NAMES and (not is_dir or name == TRITON_REPOSITORY) for name, is_dir in others):
        return None
    return noted["written"]


def _well_formed(entry: object) -> bool:
    """Whether a note's entry is one `note` writes: a name an export writes, its scratch name, and its content."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or entry["name"] not in EXPORT_NAMES:
        return False
    name, scratch = entry["name"], entry.get("scratch")
    if not isinstance(scratch, str):
        return False
    if set(entry) == {"name", "scratch", "tree"}:
        return name == TRITON_REPOSITORY and fileio.scratch_kind(scratch) == stat.S_IFDIR and _hex(entry["tree"])
    size = entry.get("size")
    return (set(entry) == {"name", "scratch", "size", "sha256"} and own_scratch(scratch) and _hex(entry["sha256"])
            and isinstance(size, int) and not isinstance(size, bool) and size >= 0)


def _hex(value: object) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def _unfinished(aside: Path) -> bool:
    """Whether `aside`, a real folder, holds at most a half-written note."""
    try:
        return not aside.is_symlink() and {p.name for p in aside.iterdir()} <= {_NOTE_TMP}
    except OSError:
        return False


def _put_back(kept: Path, path: Path, entry: dict | None) -> bool:
    """Put a file (or folder) set aside back as `path`, where nothing is or what the stopped commit put there, as
    `entry` notes it (None: it put nothing there); whether it was. Anything else there is left as it is."""
    try:
        try:
            if entry is None or not _is_noted(path, entry):
                return False
        except FileNotFoundError:
            pass  # the commit stopped before it put the new file there
        else:
            if "tree" in entry:
                shutil.rmtree(path)  # the stopped export's Triton repository, as noted
        os.replace(kept, path)
    except OSError as e:
        raise OutputError(f"cannot put back {path} from {kept}: {e.strerror or e}; put it back, or remove "
                          f"{kept.parent} to lose the earlier export") from None
    return True


def _take_back(out_dir: Path, noted: list[dict], put_back: set[str]) -> list[str]:
    """Remove what the commit stopped left, as it noted: each new file (or folder) in place of a name nothing was
    put back for, and each scratch file it had not yet renamed; only while it is the content noted. The names
    removed."""
    removed = []
    for entry in noted:
        if entry["name"] not in put_back and _remove_if_noted(out_dir / entry["name"], entry):
            removed.append(entry["name"])
        _remove_if_noted(out_dir / entry["scratch"], entry)
    return sorted(removed)


def _remove_if_noted(path: Path, entry: dict) -> bool:
    """Remove `path` if it is the content `entry` notes (`_is_noted`); whether it was."""
    try:
        if not _is_noted(path, entry):
            return False
        if "tree" in entry:
            shutil.rmtree(path)  # the stopped export's Triton repository
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise OutputError(f"cannot remove {path}, which an export that was stopped part-way wrote: "
                          f"{e.strerror or e}; remove it") from None
    return True


def _is_noted(path: Path, entry: dict) -> bool:
    """Whether `path` is the content `entry` notes: a regular file of its size and SHA-256, or a folder (not a link)
    of its tree; a link is never followed. FileNotFoundError where nothing is there."""
    st = os.lstat(path)
    if "tree" in entry:
        return stat.S_ISDIR(st.st_mode) and tree_digest(path) == entry["tree"]
    if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
        return False
    with fileio.open_regular(path, follow_links=False) as f:
        return fileio.stream_digest(f) == entry["sha256"]


def _remove_scratch(out_dir: Path, log: Log) -> None:
    """Remove the scratch files and folders a stopped export left in `out_dir`: each named as `fileio.temp_beside`
    names one for a file an export writes, or as a companion file beside one (a regular file), or as one of the
    other names of `fileio.scratch_kind` and of its kind (a regular file, or a folder that is not a link), never a
    link; said in one line."""
    removed, failed = [], []
    try:
        entries = sorted(os.scandir(out_dir), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        kind = stat.S_IFREG if own_scratch(entry.name) else fileio.scratch_kind(entry.name)
        try:
            if kind is None or stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode) != kind:
                continue
            if kind == stat.S_IFDIR:
                shutil.rmtree(entry.path)  # which never follows a link in it
            else:
                os.unlink(entry.path)
            removed.append(entry.name + "/" * (kind == stat.S_IFDIR))
        except FileNotFoundError:
            continue
        except OSError as e:
            failed.append(f"{entry.name} ({e.strerror or e})")
    if removed:
        log(f"removed {', '.join(removed)} from {out_dir}/, the scratch files of an export that was stopped before "
            "it was done")
    if failed:
        log(f"could not remove {', '.join(failed)} from {out_dir}/, the scratch files of an export that was stopped")


def own_scratch(name: str) -> bool:
    """Whether `name` is that of a scratch file of a name an export writes, or of a companion file beside one."""
    if fileio.temp_name_of(name) in _OWN_FILES:
        return True
    stem, ending = os.path.splitext(name)
    return ending in _OWN_FILES.get(fileio.temp_name_of(stem) or "", ())


def delete_aside(aside: Path, log: Log) -> None:
    try:
        shutil.rmtree(aside)
    except OSError as e:
        log(f"could not remove {aside}/ (the files this export replaced): {e.strerror or e}")
