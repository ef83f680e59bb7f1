"""Frozen values shared by every layer: what a scan finds, what a plan says, what a run reports.

Nothing here touches the disk or imports anything of ours. The records are named tuples, not frozen
dataclasses: as immutable and hashable, with no per-instance dict (FileRecord and Action exist once
per file), but a class costs a fraction of a dataclass's to create, and no `dataclasses` (which
imports `inspect`) on the path of `scan`: start-up is most of its time on small trees. They are
built on collections.namedtuple rather than typing.NamedTuple, so that `typing` (5-8 ms) is not
imported either; each field's comment gives its type, and its default where it has one. Use
`rec._replace(...)`, never iterate, index or len() a record.
"""
import enum
from collections import namedtuple

PLAN_FORMAT = 1
STATE_DIR = ".comfy-migrate"     # state folder name, in the target and in each source
PROBE_PREFIX = ".comfy-migrate-probe-"   # a probe's scratch folder (fsops.probe_fs): never scanned


class Status(str, enum.Enum):
    """What a scanned entry is, and whether it is migrated."""

    MIGRATE = "migrate"              # a regular, complete, non-empty file in a category folder
    INCOMPLETE = "incomplete"        # an unfinished download (.part, .tmp, .crdownload, ...)
    PLACEHOLDER = "placeholder"      # ComfyUI's put_*_here files
    EMPTY = "empty"                  # zero bytes
    SPECIAL = "special"              # socket, FIFO, device
    SYMLINK = "symlink"              # left as it is, reported with its target
    UNCATEGORISED = "uncategorised"  # directly under models/, in no category folder
    BAD_NAME = "bad-name"            # not valid UTF-8: ComfyUI workflows cannot name it
    UNREADABLE = "unreadable"        # permission or I/O error while reading
    CHANGED = "changed"              # changed or vanished while being scanned
    TEMP = "temp"                    # our own temporary file from an interrupted run
    SUSPECT = "suspect"              # the audit found it broken or suspect: kept out (--include-suspect)

    @property
    def migrates(self) -> bool:
        return self is Status.MIGRATE


class ActionKind(str, enum.Enum):
    MOVE = "move"
    LINK = "link"
    COPY = "copy"
    ALREADY_THERE = "already-there"    # identical content at the same name in the target
    SAME_CONTENT = "same-content"      # content stored under another name: this name becomes a link
    CONFLICT = "conflict"              # different content holds the name: never overwritten
    RELINK = "relink"                  # a symlink in the sources whose file moves: re-pointed there
    SKIP = "skip"


class Method(str, enum.Enum):
    """How bytes (or a name) reach the target."""

    HARDLINK = "hardlink"   # same filesystem: link the inode (a move then unlinks the source)
    RENAME = "rename"       # same filesystem refusing hardlinks: rename without replacing
    COPY = "copy"           # copy + hash in one pass, verify, publish without clobbering
    SYMLINK = "symlink"     # a name inside the target that points at the stored copy
    NONE = "none"


class Removal(str, enum.Enum):
    """What happens to the source once every copy is verified and the YAML is switched."""

    NONE = "none"               # stays (link/copy modes, conflicts, skips)
    UNLINK = "unlink"           # the target holds the same inode: only a name goes
    QUARANTINE = "quarantine"   # renamed into <source>/.comfy-migrate/quarantine/<run>/
    RENAMED = "renamed"         # already moved by the rename itself


class Mode(str, enum.Enum):
    MOVE = "move"
    LINK = "link"
    COPY = "copy"


class OnConflict(str, enum.Enum):
    SKIP = "skip"
    RENAME = "rename"


class FileRecord(namedtuple("FileRecord", [
    "root",                       # str
    "rel",                        # str: posix path relative to root
    "folder",                     # str: first component as found on disk ('' at the root)
    "category",                   # str | None: canonical ComfyUI category, None at the root
    "custom",                     # bool: a folder ComfyUI itself does not know (custom nodes')
    "status",                     # Status
    "size",                       # int = 0
    "mtime_ns",                   # int = 0
    "mode",                       # int = 0
    "dev",                        # int = 0
    "ino",                        # int = 0
    "nlink",                      # int = 1
    "digest",                     # str | None = None
    "link_target",                # str | None = None
    "detail",                     # str = ""
    "ctime_ns",                   # int = 0
], defaults=(0, 0, 0, 0, 0, 1, None, None, "", 0))):
    """One entry found under a root, with its stat facts and (for files to migrate) its digest."""

    __slots__ = ()

    @property
    def stamp(self) -> tuple:
        """(dev, ino, size, mtime_ns, ctime_ns): what a digest of this file is bound to (hashing.Stamp)."""
        return (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)

    @property
    def path(self) -> str:
        return self.root.rstrip("/") + "/" + self.rel

    @property
    def name(self) -> str:
        """The name ComfyUI shows: the path relative to the category folder."""
        return self.rel.split("/", 1)[1] if "/" in self.rel else self.rel


class Problem(namedtuple("Problem", [
    "path",                       # str
    "message",                    # str
])):
    """A per-file trouble, collected as data; the run goes on where it safely can."""

    __slots__ = ()


class Finding(namedtuple("Finding", [
    "path",                       # str
    "kind",                       # str: e.g. truncated, lfs-pointer, shadowed (README lists them all)
    "severity",                   # str
    "message",                    # str
    "fix",                        # str = ""
], defaults=("",))):
    """One audit result about a path (data, like Problem). severity: broken | suspect | notice."""

    __slots__ = ()

    @property
    def blocks(self) -> bool:
        """Whether this keeps a file out of the store (and makes `audit` exit 1)."""
        return self.severity in ("broken", "suspect")


class ScanResult(namedtuple("ScanResult", [
    "root",                       # str
    "records",                    # tuple[FileRecord, ...]
    "problems",                   # tuple[Problem, ...] = ()
    "hashed_files",               # int = 0: files whose data was read
    "hashed_bytes",               # int = 0
    "cached_files",               # int = 0: digests taken from the cache
], defaults=((), 0, 0, 0))):
    """Everything found under one root, with counts of how its digests were obtained."""

    __slots__ = ()


class FsFacts(namedtuple("FsFacts", [
    "path",                       # str: the folder probed (a root, or the nearest existing folder of a new target)
    "fstype",                     # str: from /proc/self/mountinfo, e.g. ext4, overlay, fuse.mfs, fuse.sshfs
    "hardlink",                   # bool: a second name for one file
    "symlink",                    # bool
    "rename",                     # bool
    "noreplace",                  # bool: renameat2(RENAME_NOREPLACE) (FUSE answers EINVAL)
    "mtime_step_ns",              # int: the mtime precision kept: 1 (ns) ... 10**9 (whole seconds), 2*10**9 (FAT)
    "stable_inode",               # bool: one file keeps its inode number by two names and across a rename
    "case_sensitive",             # bool
    "overlay",                    # str | None = None: None: not an overlay; else its upper layer ('' when
                                  # this mount namespace cannot see it)
    "detail",                     # str = "": what was refused, with its errno name
    "forbidden",                  # str = "": characters it refuses in names (exFAT, NTFS, vfat: '"*:<>?\\|' and controls)
    "trailing",                   # str = "": characters a name must not end with (dropped or refused there)
    "name_unit",                  # str = "bytes": what its name limit counts: bytes (UTF-8) or utf16 (code units)
    "name_max",                   # int = 255: the longest name, in name_unit
    "block",                      # int = 0: its allocation unit in bytes (0: unknown, sizes are counted as they are)
    "stable_mtime",               # bool = True: a fresh file's mtime stays as set while it is read (rclone's
                                  # VFS shows "now" until it has uploaded the file)
    "up_links",                   # bool = True: a symlink whose text holds `..` reads back (sshfs refuses it)
    "link_inode",                 # bool = True: two hardlinked names show one inode number (mergerfs with
                                  # path-hash inodes shows two, while st_nlink says 2)
], defaults=(None, "", "", "", "bytes", 255, 0, True, True, True))):
    """What one filesystem does, tried with scratch files we create and remove (never predicted).

    Every later choice follows from it: the method of a move, the removal of a source, how a dedupe
    name is made, how rollback recognises a file it left (identity.Precision)."""

    __slots__ = ()

    @property
    def summary(self) -> str:
        yes = lambda b: "yes" if b else "no"     # noqa: E731
        step = self.mtime_step_ns
        when = ("ns" if step <= 1 else f"{step} ns" if step < 1000 else f"{step // 1000} us" if step < 1_000_000 else
                f"{step // 1_000_000} ms" if step < 1_000_000_000 else f"{step // 1_000_000_000} s")
        return (f"{self.fstype}: hardlinks {yes(self.hardlink)}, symlinks {yes(self.symlink)}, "
                f"rename {yes(self.rename)}, RENAME_NOREPLACE {yes(self.noreplace)}, mtime to {when}, "
                f"inode numbers {'stable' if self.stable_inode else 'NOT stable'}, "
                + ("" if self.stable_mtime else "mtimes move while a file is read, ")
                + ("" if self.up_links or not self.symlink else "links through .. unreadable, ")
                + ("" if self.link_inode or not self.hardlink else "hardlinked names show other inode numbers, ") +
                f"case-{'sensitive' if self.case_sensitive else 'insensitive'}"
                + (f", names up to {self.name_max} {'UTF-16 units' if self.name_unit == 'utf16' else 'bytes'}"
                   if self.name_unit != "bytes" or self.name_max != 255 else "")
                + (", Windows names only" if self.forbidden else "")
                + ("" if self.block <= 4096 else f", {self.block >> 20} MiB blocks" if self.block >= 1 << 20
                   else f", {self.block >> 10} KiB blocks")
                + ("" if self.overlay is None else ", overlay" + (" (upper layer visible)" if self.overlay
                                                                   else " (layers not visible)")))


UNPROBED = FsFacts("", "unknown", True, True, True, True, 1, True, True)


class Probe(namedtuple("Probe", [
    "source",                     # str
    "hardlink",                   # bool
    "rename",                     # bool
    "detail",                     # str = ""
    "fs",                         # FsFacts = UNPROBED: the source's own filesystem
], defaults=("", UNPROBED))):
    """What the filesystem really allows between a source and the target (tried, not predicted)."""

    __slots__ = ()


class Policy(namedtuple("Policy", [
    "mode",                       # Mode = Mode.MOVE
    "on_conflict",                # OnConflict = OnConflict.SKIP
    "link_back",                  # bool | None = None: None, only for custom-node folders
    "base_path",                  # str | None = "absolute": absolute | relative | env:VAR; None: the
                                  # form the YAML's managed section has (comfy.kept_base_spec)
], defaults=(Mode.MOVE, OnConflict.SKIP, None, "absolute"))):
    """The user's choices that shape a plan."""

    __slots__ = ()


class PathFacts(namedtuple("PathFacts", [
    "yaml_dir",                   # str: the YAML's folder, symlinks resolved
    "target",                     # str: the target, symlinks resolved (its nearest existing folder's, if new)
    "yaml_mount",                 # str: mount point holding the YAML's folder
    "target_mount",               # str: mount point holding the target
    "env_name",                   # str | None = None: the variable of --base-path env:VAR
    "env_value",                  # str | None = None: its value now (None: not set)
], defaults=(None, None))):
    """Where the YAML and the target really are, as ComfyUI will see them (gathered by the shell).

    ComfyUI reads `<realpath of its folder>/extra_model_paths.yaml` and resolves a relative
    base_path from that folder, so relative paths are computed between real paths.
    """

    __slots__ = ()


class PathFact(namedtuple("PathFact", [
    "kind",                       # str: dir | missing | file | symlink-dir | symlink-dangling | symlink-other | other
    "to",                         # str = "": a symlink's text
    "writable",                   # bool = True: a folder (or the folder behind a symlink) that takes new names
    "read_only",                  # bool = False: on a read-only mount
    "name_max",                   # int = 255: the longest name (bytes) its filesystem takes
], defaults=("", True, False, 255))):
    """What one path run will touch is now (lstat, access, statvfs), gathered for the preflight."""

    __slots__ = ()

    @property
    def is_dir(self) -> bool:
        return self.kind in ("dir", "symlink-dir")


class CustomFolder(namedtuple("CustomFolder", [
    "name",                       # str: the folder under models/, e.g. insightface
    "source",                     # str: <source root>/<name>
    "destination",                # str: <target>/<name>
    "files",                      # int: files that end up in the target
    "stay",                       # int: entries left where they are (skipped, conflicts)
    "listed",                     # bool: the YAML lists it as `<name>: <name>`
    "link_back",                  # bool: a symlink at each moved file's old place
    "note",                       # str: the sentence the plan prints
])):
    """One folder ComfyUI does not know (a custom node's), and what the plan does with it."""

    __slots__ = ()


class Action(namedtuple("Action", [
    "kind",                       # ActionKind
    "root",                       # str: source root ('' for target-only entries)
    "rel",                        # str: path relative to the source root
    "category",                   # str | None
    "size",                       # int = 0
    "digest",                     # str | None = None
    "dst",                        # str | None = None: absolute path in the target
    "method",                     # Method = Method.NONE
    "stored",                     # str | None = None: the one stored copy this name shares content with
    "removal",                    # Removal = Removal.NONE
    "link_back",                  # bool = False
    "reason",                     # str = ""
    "dev",                        # int = 0
    "ino",                        # int = 0
    "mode",                       # int = 0
    "mtime_ns",                   # int = 0
    "fallbacks",                  # tuple[Method, ...] = (): tried in order after `method`, each on the
                                  # errnos that say the filesystem refuses the one before (fsops.FALLS_BACK_ON)
], defaults=(0, None, None, Method.NONE, None, Removal.NONE, False, "", 0, 0, 0, 0, ()))):
    """One step of a plan for one source entry (or a target-only entry)."""

    __slots__ = ()

    @property
    def source(self) -> str:
        return self.root.rstrip("/") + "/" + self.rel

    @property
    def methods(self) -> tuple:
        """Every way the plan allows to place it, in the order they are tried (dvc's _try_links)."""
        return (self.method,) + tuple(self.fallbacks) if self.method is not Method.NONE else ()


class Plan(namedtuple("Plan", [
    "target",                     # str
    "sources",                    # tuple[str, ...]
    "yaml_path",                  # str | None
    "yaml_before",                # str | None: None, the file does not exist
    "yaml_after",                 # str | None: None, no change
    "policy",                     # Policy
    "actions",                    # tuple[Action, ...]
    "probes",                     # tuple[Probe, ...]
    "target_hardlinks",           # bool
    "target_categories",          # tuple[str, ...]
    "warnings",                   # tuple[str, ...] = ()
    "free_bytes",                 # int | None = None: not compared, see __eq__
    "custom_folders",             # tuple[CustomFolder, ...] = ()
    "base_path",                  # str | None = None: the base_path written to the YAML
    "paths",                      # PathFacts | None = None
    "findings",                   # tuple[Finding, ...] = (): what the audit found in the sources
                                  # (held back or not)
    "name_changes",               # tuple[names.NameChange, ...] = (): names that would load other
                                  # bytes (or none) after the run, sorted
    "names_after",                # tuple[(category, name, digest | None, size), ...] = (): what each
                                  # name ComfyUI loads today loads after the run (logged by the run)
    "target_fs",                  # FsFacts = UNPROBED: what the store's filesystem does
    "container_bytes",            # int = 0: bytes the sources' own (container) disk must take during the run
    "container_free",             # int | None = None: its free space (not compared, like free_bytes)
    "notes",                      # tuple[str, ...] = (): what the preflight decided (a target to create,
                                  # a symlinked store folder written through), shown with the plan
    "resumed",                    # (run id, tuple of store paths) | None = None: an interrupted run of
                                  # this pod that `run` continues, and the files it placed already
    "launch",                     # launch.Launch | None = None: how ComfyUI is started (its options)
    "space_needed",               # int = 0: store space the run takes: copies rounded up to the store's
                                  # allocation unit, new folders, and reserve_bytes (storerules.py)
    "reserve_bytes",              # int = 0: of it, for the run's own files (lock, log, a rollback's records)
    "store_folders",              # tuple[str, ...] = (): store folders the YAML lists that are not there yet
], defaults=((), None, (), None, None, (), (), (), UNPROBED, 0, None, (), None, None, 0, 0, ()))):
    """What `run` will do, as a value: the dry run prints it, the run executes it."""

    __slots__ = ()

    @property
    def bytes_to_copy(self) -> int:
        return sum(a.size for a in self.actions if a.method is Method.COPY)

    @property
    def space_to_take(self) -> int:
        """Bytes of store space the run needs: allocation, not bytes (at least the bytes copied)."""
        return max(self.space_needed, self.bytes_to_copy)

    @property
    def fits(self) -> bool:
        return self.free_bytes is None or self.space_to_take <= self.free_bytes

    @property
    def container_fits(self) -> bool:
        return self.container_free is None or self.container_bytes <= self.container_free

    @property
    def yaml_changes(self) -> bool:
        return self.yaml_after is not None and self.yaml_after != self.yaml_before

    @property
    def has_work(self) -> bool:
        return self.yaml_changes or bool(self.store_folders) or any(
            a.method is not Method.NONE or a.removal is not Removal.NONE or a.kind is ActionKind.RELINK
            for a in self.actions
        )

    # A dataclass field(compare=False) before: free space changes between the dry run and the run
    # (and from one moment to the next), what the plan does does not.
    def __eq__(self, other: object) -> bool:
        """Equal plans: every field but free_bytes equal (never equal to a plain tuple)."""
        return other.__class__ is Plan and \
            tuple.__eq__(self._replace(free_bytes=None, container_free=None),  # type: ignore[attr-defined]
                         other._replace(free_bytes=None, container_free=None))  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self._replace(free_bytes=None, container_free=None))


def human(n: float) -> str:
    """A byte count for a person: 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def show(path: str) -> str:
    """A path (or a message naming one) made safe for a terminal: newlines and undecodable bytes escaped.

    isprintable() is False for surrogates too (undecodable bytes), so it alone decides.
    """
    return path.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace") \
        .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") if not path.isprintable() else path
