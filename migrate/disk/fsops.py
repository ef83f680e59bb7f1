"""The disk's primitives: probes, no-clobber publish, copy+hash, links, atomic writes.

The only module that changes a model file, a folder of the pod or the store, or the YAML: execute,
rollback, the catalogue and the shell call its named functions ("the steps' changes" below). Only
the journal (its log), the lock (its lock file) and the digest cache (~/.cache) write their own
state files themselves; tests/test_architecture.py checks both by ast.

Every data write goes through `write_all` so faults can be injected in one place.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import time
from functools import lru_cache
from typing import Callable, List, Optional, Sequence, Tuple


from migrate.disk.hashing import Hasher, Key, TimesMove, aligned_buffer, matches, open_regular
from migrate.core.model import PROBE_PREFIX, STATE_DIR, FsFacts, Method, Probe

COPY_CHUNK = 256 << 10     # 256 KiB writes stay on the page cache's fast path here
FUSE_CHUNK = 4 << 20       # FUSE (MooseFS): every write is a round trip to the daemon; big ones cost fewer


def is_fuse(fstype: str) -> bool:
    """A FUSE filesystem (FsFacts.fstype): every write is a round trip to its daemon."""
    return fstype == "fuse" or fstype.startswith(("fuse.", "fuseblk"))


def copy_chunk(fstype: str) -> int:
    """The write size for copies into a filesystem of this type (FsFacts.fstype)."""
    return FUSE_CHUNK if is_fuse(fstype) else COPY_CHUNK


NETWORK_TYPES = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "beegfs")


def writes_wait(fstype: str) -> bool:
    """Writes into a filesystem of this type wait on a daemon or a network (FUSE: MooseFS, rclone,
    sshfs; NFS, SMB, ...): time a copy may spend hashing on another core. On a local disk or tmpfs
    the copy is as fast as the CPU, and hashing moved into it only adds to it (onto tmpfs: 1.44 s
    -> 1.63 s for a 1 GiB pod)."""
    return is_fuse(fstype) or fstype in NETWORK_TYPES


TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
FALLBACK_ERRNOS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS,
                   errno.EACCES)
# The errnos on which a step gives up its method for the next one its plan lists (Action.methods,
# dvc's _try_links): the filesystem refuses that kind of name here (a bind mount: EXDEV; a link
# limit: EMLINK; no hardlinks at all: EPERM, ENOTSUP, ...). Any other errno fails the step. A move's
# link or rename does not copy on EACCES: a copy into the same folder would be refused the same way.
FALLS_BACK_ON = {
    (Method.HARDLINK, Method.SYMLINK): FALLBACK_ERRNOS,          # a dedupe: a symlink to the stored copy
    (Method.HARDLINK, Method.COPY): tuple(e for e in FALLBACK_ERRNOS if e != errno.EACCES),
    (Method.RENAME, Method.COPY): tuple(e for e in FALLBACK_ERRNOS if e != errno.EACCES),
}

AT_FDCWD = -100
RENAME_NOREPLACE = 1


# --- facts (read-only or self-cleaning) -------------------------------------------------------------

def nearest_existing(path: str) -> str:
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_space(path: str) -> int:
    st = os.statvfs(nearest_existing(path))
    return st.f_bavail * st.f_frsize


def _restore_dir_times(path: str, st: os.stat_result) -> None:
    try:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        pass


_PROBE_NS = 1_700_000_001_123_456_789      # an odd second with every digit of its nanoseconds set


def mount_entry(path: str) -> Tuple[str, str, str]:
    """(mount point, filesystem type, super options) of the mount holding `path`, from
    /proc/self/mountinfo: the entry of the same device whose mount point is the longest prefix of the
    real path (bind mounts share a device). A FUSE mount's type is named by its subtype, or by the
    part of its source before '#' (MooseFS mounts as plain `fuse` from `mfs#host:port`)."""
    real = os.path.realpath(nearest_existing(path))
    try:
        dev = os.stat(real).st_dev
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return "/", "unknown", ""
    best = ("/", "unknown", "")
    by_path = ("/", "unknown", "")      # btrfs: a subvolume's files show an anonymous device of their own
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        major, _, minor = fields[2].partition(":")
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if not (real == point or real.startswith(point.rstrip("/") + "/")):
            continue
        fstype, source = rest[0], rest[1].replace("\\043", "#")
        if fstype == "fuse" and "#" in source:
            fstype = "fuse." + source.split("#", 1)[0]
        if len(point) >= len(by_path[0]) or by_path[1] == "unknown":
            by_path = (point, fstype, rest[2])
        if (int(major), int(minor)) != (os.major(dev), os.minor(dev)):
            continue
        if len(point) >= len(best[0]) or best[1] == "unknown":
            best = (point, fstype, rest[2])
    return best if best[1] != "unknown" or by_path[1] != "btrfs" else by_path


def _mtime_step(want: int, got: int) -> int:
    """The coarsest of the usual precisions that explains reading `got` back after setting `want`."""
    if got == want:
        return 1
    for step in (100, 1_000, 1_000_000, 10_000_000, 1_000_000_000, 2_000_000_000):
        if got % step == 0 and abs(want - got) < step:
            return step
    return 2_000_000_000


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _pid_namespace_id() -> str:
    from migrate.disk.lock import pid_namespace
    return "".join(c for c in pid_namespace() if c.isdigit())


def probe_owner() -> str:
    """`host-pid` + `n` + the PID namespace's number, in a probe's scratch name: another container
    with our host name (its own PID namespace) has other pids, so sweep_probes looks a pid up
    only from the same namespace (else only an hour-old scratch is swept, never a live probe's)."""
    import socket
    return f"{socket.gethostname()}-{os.getpid()}n{_pid_namespace_id()}"


def sweep_probes(where: str) -> None:
    """Remove scratch folders of earlier probes killed before they cleaned up: this host's whose
    process is gone, any host's older than an hour (scans never count them either way), and give
    the folder the mtime the killed probe took from it (kept in the scratch folder's name)."""
    import shutil
    try:
        names = [n for n in os.listdir(where) if n.startswith(PROBE_PREFIX)]
    except OSError:
        return
    for n in names:
        path = os.path.join(where, n)
        if _probe_gone(n[len(PROBE_PREFIX):], path):
            # The folder's mtime from before that probe, in its name: given back when nothing changed
            # the folder since the probe's last step (its mtime not past the scratch entry's m/ctime).
            was = re.search(r"\.m([0-9]+)$", n)
            try:
                parent, own = os.stat(where), os.lstat(path)
                back = was is not None and parent.st_mtime_ns <= max(own.st_mtime_ns, own.st_ctime_ns)
            except OSError:
                back = False
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            if back and was is not None:
                try:
                    os.utime(where, ns=(parent.st_atime_ns, int(was.group(1))))
                except OSError:
                    pass


def _probe_gone(owner: str, path: str) -> bool:
    """Whether the probe whose entry `path` is named `owner` (probe_owner() + `-...`, after its prefix)
    is over: this host's, in our PID namespace, whose process is gone; or anyone's, over an hour old."""
    import socket
    try:
        h, pid = owner.rsplit("-", 2)[:2]
        pid, marked, ns = pid.partition("n")       # a probe's PID namespace (probe_owner)
        mine_dead = (h == socket.gethostname() and (not marked or ns == _pid_namespace_id())
                     and not os.path.exists(f"/proc/{int(pid)}"))
        return mine_dead or os.lstat(path).st_mtime < time.time() - 3600
    except (ValueError, OSError):
        return False


def _listing(folder: str) -> str:
    """A digest of the names in `folder` (a probe's own left out)."""
    import hashlib
    names = sorted(os.fsencode(n) for n in os.listdir(folder) if not n.startswith(PROBE_PREFIX))
    return hashlib.sha256(b"\0".join(names)).hexdigest()


NOTE_PREFIX = "probe-"


def probe_notes_dir() -> str:
    """Where a probe notes, before its first change, each folder it is about to change and its time:
    beside the user's digest cache (the next command on this machine reads them, sweep_probe_notes)."""
    from migrate.disk.hashing import default_cache_path
    return os.path.join(os.path.dirname(os.path.abspath(default_cache_path())), "probes")


def _note_probe(folders: Sequence[Tuple[str, os.stat_result]]) -> Optional[str]:
    """Note the folders a probe will change, with their times and names, before it changes any:
    the removal of its last entry in a folder changes that folder's time once more, and a kill
    before the time is put back leaves no scratch there to tell it (nor which pod a `rollback
    --target` would have to look at). Returns the note's path (None where none can be written:
    then a killed probe's scratch names are all there is, as before)."""
    import json
    folders = [(f, st) for f, st in folders if os.access(f, os.W_OK | os.X_OK)]
    if not folders:
        return None         # a read-only store: the probe can change nothing (nor may a refused command)
    try:
        doc = {"folders": [[f, st.st_mtime_ns, _listing(f)] for f, st in folders]}
        d = probe_notes_dir()
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{NOTE_PREFIX}{probe_owner()}-{os.urandom(3).hex()}.json")
        fd = os.open(path, TMP_FLAGS, 0o600)
        try:
            write_all(fd, json.dumps(doc).encode())
        finally:
            os.close(fd)
        return path
    except OSError:
        return None


def _drop_note(path: Optional[str]) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def sweep_probe_notes() -> None:
    """Put back what probes killed mid-way left (their notes, _note_probe): each noted folder's
    scratch entries are swept (sweep_probes), and the folder gets its noted mtime back when it
    holds the same names as before that probe (nothing but the probe changed it since)."""
    import json
    d = probe_notes_dir()
    try:
        names = [n for n in os.listdir(d) if n.startswith(NOTE_PREFIX)]
    except OSError:
        return
    for n in names:
        path = os.path.join(d, n)
        if not _probe_gone(n[len(NOTE_PREFIX):], path):
            continue
        try:
            folders = json.loads(read_file(path, 1 << 20) or b"{}").get("folders") or []
        except (OSError, ValueError, AttributeError):
            folders = []
        for entry in folders:
            try:
                folder, mtime, names_were = entry
                sweep_probes(folder)
                st = os.stat(folder)
                if st.st_mtime_ns != mtime and _listing(folder) == names_were:
                    os.utime(folder, ns=(st.st_atime_ns, int(mtime)))
            except (OSError, TypeError, ValueError):
                continue
        _drop_note(path)


OVERLAY_TYPES = ("overlay", "fuse.fuse-overlayfs")     # the kernel's, and rootless Podman's (FUSE)


def overlay_upper(point: str, fstype: str, opts: str) -> str:
    """The upper (writable) layer of the overlay mounted at `point`, as this mount namespace sees it,
    or "" where it is not visible: a container never sees the host's folders (and a folder of that
    name here, or a mount hiding it, is not that layer: the merged root reports the upper root's
    inode number, which must match). The kernel's overlay names it in its mount options;
    fuse-overlayfs only on its own command line, visible from its PID namespace only."""
    upper = ""
    if fstype == "overlay":
        upper = next((o[len("upperdir="):] for o in opts.split(",") if o.startswith("upperdir=")), "")
    else:
        upper = _fuse_overlayfs_upper(point)
    try:
        if upper and os.path.isdir(upper) and os.stat(upper).st_ino == os.stat(point).st_ino:
            return upper
    except OSError:
        pass
    return ""


def _fuse_overlayfs_upper(point: str) -> str:
    """upperdir= of the fuse-overlayfs process serving `point` (its command line), or ""."""
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return ""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "fuse-overlayfs":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = [os.fsdecode(a) for a in f.read().split(b"\0") if a]
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        opts = ",".join(args[i + 1] for i, a in enumerate(args[:-1]) if a == "-o")
        positional = [a for i, a in enumerate(args[1:], 1) if not a.startswith("-") and args[i - 1] != "-o"]
        if positional and os.path.realpath(os.path.join(cwd, positional[-1])) == os.path.realpath(point):
            upper = next((o[len("upperdir="):] for o in opts.split(",") if o.startswith("upperdir=")), "")
            return os.path.join(cwd, upper) if upper else ""
    return ""


AT_HANDLE_FID = 0x200                 # Linux 6.5+: a handle to tell files apart, not to reopen them
OVL_FH_MAGIC = 0xfb
OVL_FH_FLAG_PATH_UPPER = 1 << 2


_HANDLE_FN: list = []


def _name_to_handle_at():
    """libc's name_to_handle_at (None where missing), loaded once."""
    if not _HANDLE_FN:
        import ctypes
        try:
            _HANDLE_FN.append(getattr(ctypes.CDLL(None, use_errno=True), "name_to_handle_at", None))
        except OSError:
            _HANDLE_FN.append(None)
    return _HANDLE_FN[0]


def overlay_layer(path: str) -> Optional[str]:
    """"upper" or "lower" for a file of a kernel overlay, told by the file handle the kernel makes for
    it (name_to_handle_at; overlayfs encodes whether the real inode is in the upper layer), seen from
    inside the container as from the host. A file copied up from an image layer is encoded by its
    image origin: "lower" (it stays; nothing is copied up for it either). None where the kernel
    cannot say: no handles for this overlay (before Linux 6.6 without nfs_export=on), fuse-overlayfs."""
    import ctypes
    import struct
    fn = _name_to_handle_at()
    if fn is None:
        return None
    for flags in (AT_HANDLE_FID, 0):
        buf = ctypes.create_string_buffer(8 + 128)
        struct.pack_into("I", buf, 0, 128)
        mount_id = ctypes.c_int()
        if fn(AT_FDCWD, os.fsencode(path), buf, ctypes.byref(mount_id), flags) == 0:
            break
        if ctypes.get_errno() != errno.EINVAL:     # EINVAL: a kernel that knows no AT_HANDLE_FID
            return None
    else:
        return None
    size, kind = struct.unpack_from("Ii", buf, 0)
    fh = buf.raw[8:8 + size]
    # struct ovl_fb {version, magic, len, flags, type, uuid, fid}: at 0 (OVL_FILEID_V0, type 0xfb),
    # after 3 bytes of padding (OVL_FILEID_V1, type 0xf8)
    at = {0xfb: 0, 0xf8: 3}.get(kind)
    if at is None or len(fh) < at + 5 or fh[at + 1] != OVL_FH_MAGIC:
        return None
    return "upper" if fh[at + 3] & OVL_FH_FLAG_PATH_UPPER else "lower"


def probe_fs(folder: str) -> FsFacts:
    """Try what the filesystem holding `folder` does, in a scratch folder made and removed here
    (named so that scans skip it and the next probe sweeps it if this one is killed), and give the
    folder its mtime back: hardlink, symlink, rename, RENAME_NOREPLACE, the mtime precision kept,
    whether a file keeps its inode number by two names and across a rename, case sensitivity."""
    where = nearest_existing(folder)
    point, fstype, opts = mount_entry(where)
    overlay = overlay_upper(point, fstype, opts) if fstype in OVERLAY_TYPES else None
    sweep_probe_notes()      # first: they give folders back the times killed probes took from them
    sweep_probes(where)
    before = os.stat(where)
    note = _note_probe([(where, before)])
    try:
        return _probe_in(where, before, fstype, overlay)
    finally:
        _drop_note(note)         # last: after the folder has its time back


def _probe_in(where: str, before: os.stat_result, fstype: str, overlay: Optional[str]) -> FsFacts:
    import shutil
    scratch = os.path.join(where, f"{PROBE_PREFIX}{probe_owner()}-{os.urandom(3).hex()}"
                                  f".m{before.st_mtime_ns}")
    refused: list = []
    try:
        os.mkdir(scratch, 0o700)
    except OSError as exc:
        _restore_dir_times(where, before)
        return by_type(FsFacts(where, fstype, False, False, False, False, 2_000_000_000, False, True, overlay,
                               f"cannot create a scratch folder: {_errname(exc)}", stable_mtime=False, up_links=False))
    try:
        a, b, c = (os.path.join(scratch, n) for n in ("a", "b", "c"))
        fd = os.open(a, TMP_FLAGS, 0o600)
        try:
            write_all(fd, b"probe")
            os.utime(fd, ns=(_PROBE_NS, _PROBE_NS))
        finally:
            os.close(fd)
        st_a = os.stat(a)
        step = _mtime_step(_PROBE_NS, st_a.st_mtime_ns)
        # rclone's VFS shows a file it has not uploaded yet with the mtime "now" while it is open,
        # even for reading: a copy read back soon after it was written seems to change under us.
        fd = os.open(a, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.read(fd, 16)
            stable_mtime = os.fstat(fd).st_mtime_ns == st_a.st_mtime_ns
        finally:
            os.close(fd)
        stable_mtime = stable_mtime and os.stat(a).st_mtime_ns == st_a.st_mtime_ns
        ino = st_a.st_ino
        stable = link_inode = True
        try:
            os.link(a, b)
            hardlink = True
            link_inode = stable = os.stat(b).st_ino == ino == os.stat(a).st_ino
            os.unlink(b)
        except OSError as exc:
            hardlink = False
            refused.append(f"hardlink {_errname(exc)}")
        try:
            os.symlink("a", c)
            symlink = os.readlink(c) == "a"
            os.unlink(c)
        except OSError as exc:
            symlink = False
            refused.append(f"symlink {_errname(exc)}")
        up_links = symlink
        if symlink:     # sshfs refuses readlink of a link whose text holds `..` (re-pointed links do)
            d = os.path.join(scratch, "d")
            try:
                os.mkdir(d)
                os.symlink("../a", os.path.join(d, "l"))
                up_links = os.readlink(os.path.join(d, "l")) == "../a"
            except OSError as exc:
                up_links = False
                refused.append(f"readlink of ../ {_errname(exc)}")
        # Three renames: rclone's inode numbers survive some renames and not others.
        rename = True
        for _ in range(3):
            try:
                os.rename(a, b)
            except OSError as exc:
                rename = False
                refused.append(f"rename {_errname(exc)}")
                break
            stable = stable and os.stat(b).st_ino == ino
            a, b = b, a
        noreplace = False
        fn = _renameat2()
        if fn is not None:
            import ctypes
            if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(c), RENAME_NOREPLACE) == 0:
                noreplace = True     # to a fresh name: the kernel itself answers EEXIST for a taken one
                a = c
            else:
                refused.append(f"RENAME_NOREPLACE {errno.errorcode.get(ctypes.get_errno(), '?')}")
        fd = os.open(os.path.join(scratch, "Case"), TMP_FLAGS, 0o600)
        os.close(fd)
        case = not os.path.lexists(os.path.join(scratch, "cASE"))
        forbidden, trailing, unit, name_max = _name_rules(scratch, where)
        try:
            block = max(os.statvfs(where).f_frsize, os.stat(a).st_blocks * 512)
        except OSError:
            block = 0
        return FsFacts(where, fstype, hardlink, symlink, rename, noreplace, step, stable, case, overlay,
                       "refused: " + ", ".join(refused) if refused else "", forbidden, trailing, unit,
                       name_max, block, stable_mtime, up_links, link_inode)
    except OSError as exc:
        return by_type(FsFacts(where, fstype, False, False, False, False, 2_000_000_000, False, True, overlay,
                               f"probe failed: {_errname(exc)} ({exc.strerror})", stable_mtime=False, up_links=False))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        _restore_dir_times(where, before)


SEEN_FILE = "fs-seen.json"      # in the store's state folder: the weakest facts any probe of it found


def fs_doc(fs: FsFacts) -> dict:
    """What later identity checks need of a probe (identity.precision_of reads it): a run header's
    `fs` entry and the store's remembered facts."""
    return {"type": fs.fstype, "mtime_step_ns": fs.mtime_step_ns, "stable_inode": fs.stable_inode,
            "stable_mtime": fs.stable_mtime}


def seen_facts(target: str) -> Optional[dict]:
    """The weakest facts earlier probes of this store found (None: none remembered, or unreadable)."""
    import json
    try:
        data = read_file(os.path.join(target, STATE_DIR, SEEN_FILE), 1 << 16)
        doc = json.loads(data) if data else None
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def weaken(fs: FsFacts, doc: Optional[dict]) -> FsFacts:
    """A probe's facts, no stronger than the remembered `doc`: a store whose facts flip between
    probes (rclone's inode numbers across a rename) is judged by the worst ever seen."""
    if not isinstance(doc, dict):
        return fs
    from migrate.disk.identity import precision_of
    p = precision_of(doc)
    return fs._replace(mtime_step_ns=max(fs.mtime_step_ns, p.mtime_step_ns), stable_inode=fs.stable_inode and p.stable_inode,
                       stable_mtime=fs.stable_mtime and p.stable_mtime)


def remember_weakest(target: str, doc: dict) -> dict:
    """Merge `doc` (fs_doc) into the store's remembered facts, written (atomically) only when it is
    weaker in some fact (than what is kept; no record means every fact is strong) and the state
    folder exists. Returns the merged record."""
    import json
    from migrate.disk.identity import EXACT, precision_of, weakest
    seen = seen_facts(target)
    merged = weakest(seen, doc) if seen else dict(doc)
    if seen is None and precision_of(merged) == EXACT:
        return merged       # nothing weaker than a file with no record says: nothing to keep
    if merged != seen and os.path.isdir(os.path.join(target, STATE_DIR)):
        atomic_write(os.path.join(target, STATE_DIR, SEEN_FILE),
                     (json.dumps(merged, sort_keys=True) + "\n").encode())
    return merged
def by_type(fs: FsFacts) -> FsFacts:
    """A probe that could not try names: the name rules known for its filesystem type (kernel
    exFAT, vfat, NTFS: storerules.KNOWN), the most cautious reading, and its block size."""
    from migrate.core.storerules import known_rules
    try:
        block = os.statvfs(fs.path).f_frsize
    except OSError:
        block = 0
    return fs._replace(block=block, **known_rules(fs.fstype))


def _accepts(folder: str, name: str) -> bool:
    """Whether the filesystem makes a file of exactly this name (listed back as given): exFAT
    through FUSE answers ENOENT for `a:b`, the kernel's exFAT drops a trailing dot."""
    p = os.path.join(folder, name)
    try:
        os.close(os.open(p, TMP_FLAGS, 0o600))
    except (OSError, ValueError):
        return False
    try:
        return name in os.listdir(folder)
    except OSError:
        return False
    finally:
        try:
            os.unlink(p)
        except OSError:
            pass


def _name_rules(scratch: str, where: str) -> Tuple[str, str, str, int]:
    """(characters refused in names, characters a name must not end with, the unit of the name limit,
    the limit), tried in the probe's scratch folder (storerules.py applies them)."""
    from migrate.core.storerules import BYTES, CONTROL, UTF16, WINDOWS_CHARS
    forbidden = ""
    if not _accepts(scratch, "a:b"):        # a Windows-family filesystem: try each character
        forbidden = "".join(c for c in WINDOWS_CHARS if not _accepts(scratch, f"a{c}b"))
        if not _accepts(scratch, "a\x01b"):
            forbidden += CONTROL
    trailing = "".join(c for c in ". " if not _accepts(scratch, f"t{c}"))
    try:
        limit = os.statvfs(where).f_namemax or 255
    except OSError:
        limit = 255
    # 200 CJK characters are 600 bytes but 200 UTF-16 units; 256 ASCII characters are 256 of either.
    if _accepts(scratch, "\u5b57" * 200) and not _accepts(scratch, "a" * 256):
        return forbidden, trailing, UTF16, 255
    return forbidden, trailing, BYTES, limit


def probe_between(source_root: str, target: str) -> Probe:
    """What moves a file from `source_root` into the target: a hardlink, a rename, or only a copy.
    Tried with a scratch file made in the source root and linked (else renamed) into the target's
    nearest existing folder, both removed again, folder times put back; the source's own
    filesystem is probed on the way (Probe.fs)."""
    fs = probe_fs(source_root)
    where = nearest_existing(target)
    tag = f"{PROBE_PREFIX}{probe_owner()}-{os.urandom(3).hex()}"
    sweep_probes(where)
    before_s, before_t = os.stat(source_root), os.stat(where)
    src = os.path.join(source_root, f"{tag}.m{before_s.st_mtime_ns}")      # each folder's time in the name
    dst = os.path.join(where, f"{tag}.m{before_t.st_mtime_ns}")            # (sweep_probes gives it back)
    note = _note_probe([(source_root, before_s), (where, before_t)])
    try:
        try:
            os.close(os.open(src, TMP_FLAGS, 0o600))
        except OSError as exc:
            same = before_s.st_dev == before_t.st_dev
            return Probe(source_root, False, same, f"cannot probe ({_errname(exc)}); judged by device", fs)
        try:
            os.link(src, dst)
            return Probe(source_root, True, True, "", fs)
        except OSError as exc:
            why = f"hardlink refused: {_errname(exc)}"
            if exc.errno == errno.EXDEV:
                return Probe(source_root, False, False, why, fs)
        try:
            os.rename(src, dst)
            return Probe(source_root, False, True, why, fs)
        except OSError as exc:
            return Probe(source_root, False, False, f"{why}; rename refused: {_errname(exc)}", fs)
    finally:
        for p in (src, dst):
            try:
                os.unlink(p)
            except OSError:
                pass
        _restore_dir_times(source_root, before_s)
        _restore_dir_times(where, before_t)
        _drop_note(note)


# --- errors that name their path and operation --------------------------------------------------------

def named(exc: OSError, op: str, path: str) -> OSError:
    """The error with the operation and the path it concerns: calls on a descriptor (read, write,
    fsync, close) raise OSErrors without a file name, and a dropped mount's "Transport endpoint is
    not connected" must say where. Keeps the errno (and so the subclass: FileNotFoundError, ...)."""
    if exc.filename is None:
        new = OSError(exc.errno, exc.strerror or str(exc), path)
        new.op = op      # type: ignore[attr-defined]
        return new
    if getattr(exc, "op", None) is None:
        try:
            exc.op = op      # type: ignore[attr-defined]
        except AttributeError:
            pass
    return exc


def describe(exc: OSError) -> str:
    """'<op> <path>: <strerror>' (what a message about an OSError says)."""
    op = getattr(exc, "op", None)
    where = f" {exc.filename}" if exc.filename else ""
    return f"{op or 'file operation'}{where}: {exc.strerror or exc}"


# --- writes ------------------------------------------------------------------------------------------

def write_all(fd: int, data) -> None:
    """All data writes go through here (the one place faults are injected in tests)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise named(exc, "fsync folder", path) from None


@lru_cache(maxsize=None)
def _renameat2():
    """libc's renameat2 (None where missing), loaded on first use: ctypes is a noticeable part of a
    short command's start-up. CDLL(None) searches the libraries already mapped into the process;
    find_library would run `ldconfig -p` in a child process."""
    import ctypes
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that fails with EEXIST instead of replacing (plain os.rename overwrites)."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        import ctypes
        r = renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE)
        if r == 0:
            return
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(e, os.strerror(e), src, None, dst)
    # The flag is unsupported here (FUSE answers EINVAL): link + unlink, or a checked rename.
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        if os.path.lexists(dst):
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def link_noreplace(src: str, dst: str) -> None:
    os.link(src, dst, follow_symlinks=False)


# --- the steps' changes ------------------------------------------------------------------------------
# Every change that run, rollback, attach and purge make to a model file, a folder of the pod or the
# store, or the YAML is one of the named functions of this module (tests/test_architecture.py checks
# that no other module calls os.unlink, os.symlink, ... : only the journal, the lock and the digest
# cache write their own state files themselves). Each does what its os call does, nothing more,
# unless its docstring says so: the caller journals the step and checks the disk before.

def hardlink(existing: str, new: str) -> None:
    """A second name of a file (never replacing one: link(2) fails with EEXIST)."""
    os.link(existing, new)


def make_symlink(to: str, path: str) -> None:
    """A symlink at `path` whose text is `to` (fails with EEXIST where a name is)."""
    os.symlink(to, path)


def repoint_symlink(path: str, to: str, tmp: str, mtime_ns: Optional[int] = None) -> None:
    """Make the symlink `path` say `to` in one step: a new link at `tmp` (beside it) renamed over it,
    given `mtime_ns` (a link's own time, as rollback puts it back), the folder fsynced. Whatever is
    at `tmp` is removed when a step fails (a leftover there fails the symlink: it goes too)."""
    try:
        os.symlink(to, tmp)
        os.replace(tmp, path)
        if mtime_ns is not None:
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        fsync_dir(os.path.dirname(path))
    except OSError:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def remove(path: str) -> None:
    """Remove one name (a file or a symlink; the bytes go with the last name)."""
    os.unlink(path)


def remove_durably(path: str) -> None:
    """Remove one name and fsync its folder: the removal survives a power cut."""
    os.unlink(path)
    fsync_dir(os.path.dirname(path))


def discard(path: str) -> None:
    """Remove a temporary file of ours if it is there; a failure is ignored (a later sweep finds it)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def make_folder(path: str) -> None:
    """One folder (its parent exists; FileExistsError where a name is)."""
    os.mkdir(path)


def make_folders(path: str) -> None:
    """A folder and every missing folder above it (none is an error where they exist)."""
    os.makedirs(path, exist_ok=True)


def remove_folder(path: str) -> None:
    """Remove an empty folder (ENOTEMPTY where anything is in it: nothing of another is removed)."""
    os.rmdir(path)


def set_mode(path: str, mode: int) -> None:
    os.chmod(path, mode)


def set_mtime(path: str, mtime_ns: int) -> None:
    """A file's access and modification times both set to `mtime_ns` (as a restored file had them)."""
    os.utime(path, ns=(mtime_ns, mtime_ns))


def set_times(path: str, atime_ns: int, mtime_ns: int, follow_symlinks: bool = True) -> None:
    os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=follow_symlinks)


def trash(path: str) -> None:
    """Move a file into the user's trash (send2trash's rule on Linux: the home's, or the volume's)."""
    from send2trash import send2trash
    send2trash(path)


def write_file(path: str, data: bytes) -> None:
    """Write a file the user named (a manifest), replacing one of that name, as open(path, "wb")."""
    with open(path, "wb") as f:
        f.write(data)


def _copy_plain(sfd: int, dfd: int, h: Hasher, on_bytes: Optional[Callable[[int], None]],
                src: str = "", tmp: str = "", chunk: int = COPY_CHUNK) -> None:
    """One pass on this thread: read into a page-aligned buffer (a bytearray's odd offset made
    copies of 512 MiB 10-20 % slower here, see hashing.py), hash, write. For files of a few chunks,
    where a writer thread costs more than it overlaps."""
    view = memoryview(aligned_buffer(chunk))
    while True:
        try:
            n = os.readv(sfd, [view])
        except OSError as exc:
            raise named(exc, "read", src) from None
        if not n:
            return
        chunk = view[:n]
        h.update(chunk)
        try:
            write_all(dfd, chunk)
        except OSError as exc:
            raise named(exc, "write", tmp) from None
        if on_bytes is not None:
            on_bytes(n)


PIPE_MIN = 4       # files of at least this many chunks are copied with a writer thread
PIPE_SLOTS = 4      # buffers in flight: one being read, one or two being hashed and written


class _Writer:
    """A thread writing the copy's chunks in order while the caller reads and hashes the next ones.

    A chunk goes back to `free` only once written (or skipped after a failure), and the caller takes
    a chunk from `free` only after it has hashed the previous one: a buffer is never refilled while
    a write or a hash still reads it, so the bytes hashed are the bytes written. The first failure
    is kept and every later chunk skipped; `close` returns only once the thread has ended, so no
    write reaches the descriptor after the caller closes it (its number may be reused at once)."""

    def __init__(self, dfd: int, views: List[memoryview]) -> None:
        import queue
        import threading
        self.dfd = dfd
        self.free: "queue.SimpleQueue[memoryview]" = queue.SimpleQueue()
        for v in views:
            self.free.put(v)
        self.todo: "queue.SimpleQueue[Optional[Tuple[memoryview, int]]]" = queue.SimpleQueue()
        self.failure: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="copy-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.todo.get()
            if item is None:
                return
            view, n = item
            try:
                if self.failure is None:
                    write_all(self.dfd, view[:n])
            except BaseException as exc:
                self.failure = exc
            finally:
                self.free.put(view)

    def close(self) -> None:
        self.todo.put(None)
        interrupted: Optional[BaseException] = None
        while self.thread.is_alive():
            try:
                self.thread.join()
            except BaseException as exc:      # an interrupt: still wait, the thread holds our fd
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted


def _copy_piped(sfd: int, dfd: int, h: Hasher, on_bytes: Optional[Callable[[int], None]],
                src: str, tmp: str, chunk: int) -> None:
    """_copy_plain's pass with the writes on a second thread: chunk k is written while this thread
    hashes it (xxh3 and BLAKE3 here, SHA-256 on hashing's pool) and then reads chunk k+1. Writes
    into a FUSE store wait on its daemon, hashing waits on the CPU: in one thread they added up
    (a 1 GiB pod onto MooseFS: 2.1 s of writes + 2.0 s of hashing, one after the other)."""
    w = _Writer(dfd, [memoryview(aligned_buffer(chunk)) for _ in range(PIPE_SLOTS)])
    try:
        while w.failure is None:
            view = w.free.get()
            try:
                n = os.readv(sfd, [view])
            except OSError as exc:
                w.free.put(view)
                raise named(exc, "read", src) from None
            if not n:
                w.free.put(view)
                break
            w.todo.put((view, n))
            h.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    finally:
        w.close()
    if w.failure is not None:
        if isinstance(w.failure, OSError):
            raise named(w.failure, "write", tmp) from None
        raise w.failure


def copy_and_hash(src: str, expect: Key, tmp: str, on_bytes: Optional[Callable[[int], None]] = None,
                  on_created: Optional[Callable[[os.stat_result], None]] = None,
                  chunk: int = COPY_CHUNK, mtime_may_move: bool = False,
                  extra: Optional[bool] = None) -> Tuple[str, os.stat_result]:
    """Copy src into a new file `tmp` (O_EXCL) while hashing, fsync it, keep mode and mtime.
    `chunk`: the read and write size (copy_chunk of the destination's filesystem).
    `mtime_may_move`: src's mtime is not part of "still the same file" (rclone's VFS shows "now"
    while a file it has not uploaded yet is open): for a caller that checks the digest it returns
    against a logged one, which then decides.
    `extra`: also SHA-256 and BLAKE3 (hashing.Hasher; None: unless `--hashes xxh3`). False where
    they are known for the digest the copy must match: the xxh3 digest checks the copy's bytes, and
    the other two are facts about that content (hashing.extras), computed once by the scan's read.

    Returns (digest of the bytes read, stat of tmp). The source must still be the scanned file
    afterwards. On any error tmp is removed.
    """
    if mtime_may_move:
        expect = TimesMove(expect)      # hashing.matches: device, inode and size
    sfd = open_regular(src, expect)
    try:
        dfd = os.open(tmp, TMP_FLAGS, 0o600)
    except BaseException:
        os.close(sfd)
        raise
    ok = False
    try:
        if on_created is not None:
            on_created(os.fstat(dfd))
        h = Hasher(extra)
        size = os.fstat(sfd).st_size
        # The writer thread only where the copy also computes SHA-256 and BLAKE3 (~0.85 CPU-s per GiB,
        # as long as the writes into a FUSE store): xxh3 alone costs ~0.03 s per GiB, nothing to hide,
        # and its copies measured no faster with the thread (docs/bench-latest.md).
        piped = h.s is not None and size >= PIPE_MIN * chunk
        (_copy_piped if piped else _copy_plain)(sfd, dfd, h, on_bytes, src, tmp, chunk)
        if not matches(os.fstat(sfd), expect):
            raise OSError(errno.ESTALE, "changed while it was copied", src)
        st = os.fstat(sfd)
        try:
            os.fchmod(dfd, stat.S_IMODE(st.st_mode))
            os.fsync(dfd)
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            dst_st = os.fstat(dfd)
        except OSError as exc:
            raise named(exc, "fsync", tmp) from None
        ok = True
        return h.hexdigest(), dst_st
    finally:
        os.close(sfd)
        try:
            os.close(dfd)   # network filesystems report "disk full" here
        except OSError as exc:
            ok = False
            raise named(exc, "close", tmp) from None
        finally:
            if not ok:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write a small file atomically: temp in the same folder, fsync, replace, fsync the folder."""
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.cm-tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


# --- the reserve: room for a rollback on a full store -----------------------------------------------

RESERVE = "reserve"     # <target>/.comfy-migrate/reserve
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def reserve_bytes(steps: int, unit: int) -> int:
    """What a rollback writes in the store before it frees anything: the lock (and a stale lock's
    `lock.break`), its log (a few hundred bytes per undone step) and a little more; in whole
    allocation units, since each small file takes at least one (a 1 MiB exFAT cluster)."""
    from migrate.core.storerules import rollback_reserve
    return rollback_reserve(steps, unit)     # within the plan's storerules.reserve (which counts it)


def allocation_unit(path: str) -> int:
    try:
        st = os.statvfs(nearest_existing(path))
    except OSError:
        return 4096
    return max(st.f_frsize or 0, st.f_bsize or 0, 4096)


def keep_reserve(state_dir: str, size: int) -> int:
    """Make `<state_dir>/reserve` hold at least `size` bytes of real data (random: no filesystem
    compresses, dedupes or leaves holes in it), taken while the store still has room, so that a
    rollback finds room on a full store (release_reserve). Returns the bytes added. A full disk
    raises, with what this call added given back."""
    path = os.path.join(state_dir, RESERVE)
    made = not os.path.lexists(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        have = os.fstat(fd).st_size
        if have >= size:
            return 0
        try:
            os.lseek(fd, have, os.SEEK_SET)
            block = os.urandom(min(1 << 20, size - have))
            n = have
            while n < size:      # not through write_all: no test's fault counts these bytes
                n += os.write(fd, block[:size - n])
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, have)
            raise named(exc, "make the rollback reserve", path) from None
    finally:
        os.close(fd)
    if made:
        fsync_dir(state_dir)
    return size - have


def release_reserve(state_dir: str) -> int:
    """Free the reserve (a rollback that met a full disk); returns the bytes freed (0: none left)."""
    path = os.path.join(state_dir, RESERVE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        os.ftruncate(fd, 0)         # freed at once, also where an unlinked file lingers (a trash)
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fsync_dir(state_dir)
    return size


def sweep_temps(folder: str, held: bool = False) -> List[str]:
    """Remove what atomic_write leaves when killed between its create and its rename,
    `.<name>.cm-tmp-<pid>` (found by that pattern; a run's copies and re-pointed links carry a run
    id instead, and the log removes those). `held`: the caller holds the store's lock, under which
    every writer of this folder writes: each such file is a leftover. Otherwise one is a leftover
    when its pid is gone on this host, or it is an hour old. Returns the paths removed."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out = []
    for n in names:
        m = _ATOMIC_TEMP.match(n)
        if not m:
            continue
        path = os.path.join(folder, n)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            if not (held or not os.path.exists(f"/proc/{int(m.group(1))}") or st.st_mtime < time.time() - 3600):
                continue
            os.unlink(path)
            out.append(path)
        except OSError:
            continue
    return out


def sweep_leftovers(state_dir: str, yaml_paths: Sequence[Optional[str]]) -> List[str]:
    """Every leftover of ours an earlier command killed mid-way left, found by name (run and rollback
    call this under the store's lock): atomic_write's temporaries beside the YAML (and the file behind
    a symlinked YAML), in the state folder and its yaml/ (written under the lock only) and reports/
    (written after it: by pid and age), and probe folders in the store."""
    out: List[str] = []
    for y in yaml_paths:
        if y:
            for d in dict.fromkeys((os.path.dirname(y), os.path.dirname(through_link(y)))):
                out += sweep_temps(d)
    out += sweep_temps(state_dir, held=True) + sweep_temps(os.path.join(state_dir, "yaml"), held=True)
    out += sweep_temps(os.path.join(state_dir, "reports"))
    return out


_ATOMIC_TEMP = re.compile(r"^\..+\.cm-tmp-([0-9]+)$", re.S)


def through_link(path: str) -> str:
    """The file behind a YAML path that is a symlink (kept on the volume, linked into ComfyUI):
    ComfyUI reads through the link, so we read and write the file behind it and keep the link."""
    return os.path.realpath(path) if os.path.islink(path) else path


def read_file(path: str, limit: int = 16 << 20) -> Optional[bytes]:
    """Bytes of a small regular file, or None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        with open(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise OSError(errno.EFBIG, "too large", path)
        return data
    finally:
        os.close(fd)
