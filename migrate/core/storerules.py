"""PURE: what the store's filesystem does to a name and to a file's size (issue 20).

The facts come from the probe (fsops.probe_fs tries them in a scratch folder, since FUSE mounts of
exFAT and NTFS both show as `fuseblk`): whether it folds case, which characters it refuses, the
unit its name limit counts (exFAT, NTFS and vfat count UTF-16 code units, ext4 and most others
UTF-8 bytes) and its allocation unit (exFAT's clusters reach 32 MiB; a 1-byte file takes one).
The plan applies them before anything moves: a name the store refuses, or one that folds onto
another name there, stays on the pod (or is renamed with --on-conflict rename), and "fits" counts
allocation, not bytes, plus a reserve for the store's lock, the run's log and a rollback.
"""
from __future__ import annotations

import posixpath
import unicodedata
from typing import Iterable, Optional

from migrate.core.model import Action, FsFacts

# What Windows-family filesystems refuse in a name (exFAT, NTFS with windows_names, vfat): the
# probe tries these one by one; a refused control character stands for all of them (1-31).
WINDOWS_CHARS = '"*:<>?\\|'
CONTROL = "".join(chr(c) for c in range(1, 32))
UTF16 = "utf16"
BYTES = "bytes"


# The reasons of the plan's CONFLICT actions made by these rules (stay_kind tells them apart).
NAME_REFUSED = "the store cannot hold this name"
CASE_CLASH = "one name with"
HIDDEN_LINK = "a hardlinked file whose other name"


def stay_kind(a: Action) -> str:
    """Why a CONFLICT action stays on the pod: conflict (the store holds other bytes under its
    name), case-clash (its name folds onto another spelling on a case-insensitive store) or
    name-refused (the store's filesystem cannot hold its name) or hidden-hardlink (a hardlinked file
    whose other names the scan cannot see: its source filesystem shows them with other inode numbers)."""
    if a.reason.startswith(NAME_REFUSED):
        return "name-refused"
    if a.reason.startswith(HIDDEN_LINK):
        return "hidden-hardlink"
    if a.reason.startswith(CASE_CLASH):
        return "case-clash"
    return "conflict"


# Name rules by filesystem type, for a probe that could not try them (its scratch folder refused):
# the cautious reading (a case-insensitive lookup, Windows characters refused, 255 UTF-16 units).
# FUSE mounts of exFAT and NTFS show as `fuseblk` and get nothing from this table.
_WINDOWS = {"case_sensitive": False, "name_unit": UTF16, "name_max": 255}
KNOWN = {"exfat": _WINDOWS, "vfat": _WINDOWS, "msdos": _WINDOWS, "ntfs3": _WINDOWS, "ntfs": _WINDOWS}


def known_rules(fstype: str) -> dict:
    """FsFacts fields known for a filesystem type (empty for types with POSIX names)."""
    rules = KNOWN.get(fstype)
    if rules is None:
        return {}
    return dict(rules, forbidden=WINDOWS_CHARS + CONTROL, trailing=". ")


def fold(name: str) -> str:
    """The key under which a case-insensitive filesystem finds `name`: names with one key are one
    name there. Per character of the NFC form: the simple upper-case mapping (exFAT's and NTFS's
    upcase tables are made from it), then Unicode case folding (macOS's case-insensitive volumes,
    which also ignore composed/decomposed forms). Coarser than any one filesystem on purpose: a
    pair it joins that the store would keep apart is only kept on the pod (or renamed), never lost."""
    out = []
    for c in unicodedata.normalize("NFC", name):
        up = c.upper()
        out.append((up if len(up) == 1 else c).casefold())
    return "".join(out)


def key_of(fs: FsFacts):
    """The function giving one key per name the store holds: the name itself where case counts."""
    return (lambda p: p) if fs.case_sensitive else fold


def length(name: str, unit: str) -> int:
    """A name's length in the unit its filesystem counts."""
    if unit == UTF16:
        return len(name.encode("utf-16-le", "surrogatepass")) // 2
    return len(name.encode("utf-8", "surrogateescape"))


def refusal(component: str, fs: FsFacts) -> Optional[str]:
    """Why the store's filesystem cannot hold a file or folder of this name (None: it can)."""
    bad = sorted({c for c in component if c in fs.forbidden})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"holds {shown}, which the store's filesystem ({fs.fstype}) refuses in names"
    if component and component[-1] in fs.trailing:
        what = "a dot" if component[-1] == "." else "a space"
        return f"ends with {what}, which the store's filesystem ({fs.fstype}) drops from names"
    n = length(component, fs.name_unit)
    if n > fs.name_max:
        unit = "UTF-16 units" if fs.name_unit == UTF16 else "bytes"
        return (f"is {n} {unit} long, longer than the {fs.name_max} {unit} the store's filesystem "
                f"({fs.fstype}) takes")
    return None


def refused_path(rel: str, fs: FsFacts) -> Optional[str]:
    """Why a path below the store cannot exist there: the first refused component, named."""
    for part in rel.split("/"):
        why = refusal(part, fs)
        if why is not None:
            return f"{part!r} {why}" if part != posixpath.basename(rel) else f"the name {why}"
    return None


def shorten(stem: str, tail: str, fs: FsFacts) -> str:
    """`stem + tail`, the stem cut (on a character boundary) so that the whole fits the store."""
    room = fs.name_max - length(tail, fs.name_unit)
    while stem and length(stem, fs.name_unit) > room:
        stem = stem[:-1]
    return (stem or "x") + tail


def allocation(size: int, block: int) -> int:
    """What a file of `size` bytes takes on a filesystem allocating `block` bytes at a time (0: unknown)."""
    if block <= 0 or size <= 0:
        return max(size, 0)
    return -(-size // block) * block


# The run's own small files in the store, measured on exFAT with 1 MiB clusters: the state folder
# and its runs/, yaml/ (with the YAML's pre-image) and reports/ (with the run's page) folders, the
# lock and a spare; each takes a block at least. STATE_PATHS: the ones of them (and the rollback
# reserve, the catalogue) whose space a store that has them already spent: facts.state_bytes.
STATE_FILES = 8
STATE_PATHS = ("", "runs", "yaml", "reports", "lock", "reserve", "catalogue.jsonl")
# Measured on the demo pod: its 16 steps wrote a 30.5 KB log (1.9 KB a step, headers included) and
# its rollback 12.8 KB; a catalogue line is ~230 bytes. Doubled: paths can be ten times as long.
LOG_BYTES_PER_STEP = 4096       # a step's begin and done records, with a few paths each
CATALOGUE_BYTES_PER_FILE = 512  # one line per stored file


def rollback_reserve(actions: int, block: int) -> int:
    """The file `run` keeps in the store (`.comfy-migrate/reserve`, fsops.keep_reserve) so that a
    rollback finds room for its lock and log on a store that has filled up: 32 KiB and 1 KiB per
    action, in whole blocks, and three blocks more."""
    unit = max(4096, block)
    return allocation((32 << 10) + 1024 * max(0, actions), unit) + 3 * unit


def reserve(block: int, steps: int, stored_files: int, present: int = 0, actions: int = 0) -> int:
    """Store space the run needs beyond the files it places, at its peak: its log (begin and done
    records of each step), the rollback reserve (rollback_reserve: a rollback's lock and log), the
    catalogue rewritten beside the old one and the small state files; less the `present` bytes
    our state files there take already (facts.state_bytes: a continued run's log, the reserve and
    catalogue an earlier run left, the lock and folders the plan made under the lock finds).
    0 where the block size is unknown."""
    if block <= 0:
        return 0
    log = allocation(LOG_BYTES_PER_STEP * (steps + 16), block)
    catalogue = allocation(CATALOGUE_BYTES_PER_FILE * (stored_files + 1), block)
    peak = log + rollback_reserve(actions, block) + 2 * catalogue + STATE_FILES * block
    return max(0, peak - present)


def new_folders(dsts: Iterable[str], existing: Iterable[str], target: str) -> int:
    """Folders below the target (and the target) that placing `dsts` creates: each takes a block."""
    have = set(existing)
    made = set()
    for d in dsts:
        cur = posixpath.dirname(d)
        while cur not in have and cur not in made and (cur == target or cur.startswith(target.rstrip("/") + "/")):
            made.add(cur)
            if cur == target:
                break
            cur = posixpath.dirname(cur)
    return len(made)
