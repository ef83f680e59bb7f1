"""Check what a pod's runs left in the store against the disk and ComfyUI's resolution rules (reads only).

`pod_runs` picks the runs of one pod from a store's live runs; `claims` lists every store name
those runs took out of their sources (placed there, removed because the store already held it,
or kept there by a rollback for them), the newest record of each name; `verify_pod` re-hashes
each once (or, quick, compares its size and mtime) and resolves its name as ComfyUI does.
"""
from __future__ import annotations

import os
import posixpath
import re
import stat
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from migrate.core import comfy
from migrate.disk import fsops, identity
from migrate.core.fleet import store_rel
from migrate.disk.hashing import ChangedError, hash_path, stamp
from migrate.disk.journal import group_steps
from migrate.core.model import STATE_DIR
from migrate.core.names import NOT_BY_NAME, first_holder
from migrate.core.steps import OWN_MTIME, PLACES, REMOVES_SOURCE, RETURNS_SOURCE, Op


Run = Tuple[str, List[dict]]             # (run id, records), as rollback.live_runs gives them


@dataclass(frozen=True)
class Claim:
    """A name a run took out of its sources, and what the store must hold under it.

    Args:
        rel: the name relative to the store, e.g. `loras/wan/x.safetensors`.
        digest: the content's xxh3-128, as logged.
        size: its size in bytes, as logged.
        mtime_ns: the store file's mtime where the log knows it (see steps.Op.own_mtime); None for a
            dedupe, a symlink, a source quarantined beside content already stored, a kept file.
        run: the run whose record this is.
        op: the logged step (`link`, ..., `unlink`, `quarantine`), or `keep` (a rollback's).
    """

    rel: str
    digest: str
    size: Optional[int]
    mtime_ns: Optional[int]
    run: str
    op: str



def read_digest(real: str, cache=None, on_bytes: Optional[Callable[[int], None]] = None) -> str:
    """The xxh3 digest of the file at `real`, read from its bytes (never from a cache: verify trusts
    no earlier read). SHA-256 and BLAKE3 come in the same read; the digests are recorded in the user's
    digest cache (`cache`, a hashing.DigestCache) under its trust rule, so files stored before those
    hashes existed get them here (catalogue, workflows --manifest and audit then find them there)."""
    s = stamp(os.stat(real))
    at = time.time_ns()
    try:
        digest = hash_path(real, s, on_bytes=on_bytes)
    except ChangedError:        # changed between the stat and the open: read as it is now, not cached
        return hash_path(real, on_bytes=on_bytes)
    if cache is not None:
        cache.put(s, digest, at)
    return digest

def remount(old: str, new: str) -> Tuple[str, str]:
    """(old prefix, new prefix) when the target of a run is now reached at another path: the volume
    mounted elsewhere (/workspace/models -> /runpod-volume/models gives /workspace -> /runpod-volume)."""
    o, n = old.rstrip("/").split("/"), new.rstrip("/").split("/")
    k = 0
    while k < min(len(o), len(n)) - 1 and o[-1 - k] == n[-1 - k]:
        k += 1
    return "/".join(o[:len(o) - k]) or "/", "/".join(n[:len(n) - k]) or "/"


@dataclass(frozen=True)
class Mount:
    """Where one run's logged paths are now. `base`: the store (the logged spelling while it is the
    same folder); `moved`: (old prefix, new prefix) when the volume is mounted at another path."""

    base: str
    moved: Optional[Tuple[str, str]]

    def here(self, p: str) -> str:
        if not self.moved:
            return p
        old, new = self.moved
        if old == "/":
            return new.rstrip("/") + p
        if p == old or p.startswith(old.rstrip("/") + "/"):
            return new.rstrip("/") + p[len(old.rstrip("/")):]
        return p


def mount_of(head: dict, target: str) -> Mount:
    """How a run's logged paths read now that its target is at `target`."""
    logged = head.get("target") or target
    if os.path.realpath(target) == os.path.realpath(logged):
        return Mount(logged, None)      # the same folder under another spelling: keep the logged one
    return Mount(target, remount(logged, target))


def pod_runs(runs: Sequence[Run], target: str, yaml_path: Optional[str], host: str,
             by_sources: bool = True) -> Tuple[List[Run], str]:
    """The runs of this pod among a store's runs, and how the pod was recognised.

    A pod is its YAML: the runs whose logged YAML is `yaml_path` (read through a remount). Without
    one (no ComfyUI found), or when no run names it: the runs whose sources are all on this
    machine (unless not `by_sources`: rollback and purge, which change things, do not guess
    so); else those of this host name, the last resort, as RunPod gives a pod a new host name on
    every deploy while its volume stays.
    """
    def mapped(rec: List[dict], p: str) -> str:
        return mount_of(rec[0], target).here(p)

    def install(p: str) -> str:
        # The YAML's folder resolved (a ComfyUI folder reached through a symlink is one pod), not the
        # file: two installs whose YAMLs are symlinks to one file are two pods (issue 23).
        return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))

    if yaml_path:
        want = install(yaml_path)
        mine = [(rid, rec) for rid, rec in runs if isinstance(rec[0].get("yaml"), str)
                and install(mapped(rec, rec[0]["yaml"])) == want]
        if mine:
            return mine, f"the runs that wrote {yaml_path}"
    mine = [(rid, rec) for rid, rec in runs if by_sources and rec[0].get("sources")
            and all(isinstance(s, str) and os.path.isdir(mapped(rec, s)) for s in rec[0]["sources"])]
    if mine:
        return mine, "the runs whose sources are all on this machine"
    return [(rid, rec) for rid, rec in runs if rec[0].get("host") == host], f"the runs of host {host}"


def claims(runs: Sequence[Run], kept: Sequence[dict] = ()) -> Dict[str, Claim]:
    """Every store name the runs (oldest first) took out of their sources -> the newest record of it.

    Done placements, done source removals (their content was in the store under `dst`: placed by
    this run, or already there), and files rollbacks kept in the store for one of these runs
    (`keep` records; lowest rank: a run's own record of a name says more). A newer record of the
    same content without a logged mtime keeps the older one's (the file is still the one logged);
    a dedupe's name, a symlink's and a removed source's whose content was stored under another
    name are that stored file: they take its claim's mtime.
    """
    order = [rid for rid, _ in runs]
    out: Dict[str, Claim] = {}
    same_file: Dict[str, str] = {}      # name -> the stored name it is a hardlink or symlink of

    def add(c: Claim) -> None:
        old = out.get(c.rel)
        if c.mtime_ns is None and old is not None and (old.digest, old.size) == (c.digest, c.size):
            c = Claim(c.rel, c.digest, c.size, old.mtime_ns, c.run, c.op)
        out[c.rel] = c

    for k in kept:
        users = [r for r in k.get("for") or [] if r in order]
        if users and isinstance(k.get("rel"), str) and isinstance(k.get("digest"), str):
            add(Claim(k["rel"], k["digest"], k.get("size"), None, max(users, key=order.index), "keep"))
    for rid, records in runs:
        target = records[0].get("target") or ""
        steps = group_steps(records)
        for b in steps.begins:
            op = b.get("op")
            if op not in PLACES | REMOVES_SOURCE or b["step"] not in steps.done or not isinstance(b.get("digest"), str):
                continue
            rel = store_rel(b.get("dst") or b.get("stored"), target)
            if rel is None:
                continue
            # the store file's own mtime as the run observed it after the publish (logs since issue 14;
            # a copy on MooseFS keeps whole seconds of its source's nanoseconds), else the source's
            seen = steps.done[b["step"]].get("dst_mtime_ns", b.get("mtime_ns"))
            add(Claim(rel, b["digest"], b.get("size"), seen if op in OWN_MTIME else None, rid, op))
            stored = b.get("stored")
            if op == Op.SYMLINK and isinstance(b.get("to"), str):
                stored = posixpath.normpath(posixpath.join(posixpath.dirname(b["dst"]), b["to"]))
            same = store_rel(stored, target) if isinstance(stored, str) else None
            if same is not None and same != rel:
                same_file[rel] = same
            else:
                same_file.pop(rel, None)
    for rel, same in same_file.items():
        c, of = out[rel], out.get(same)
        if c.mtime_ns is None and of is not None and (of.digest, of.size) == (c.digest, c.size):
            out[rel] = Claim(c.rel, c.digest, c.size, of.mtime_ns, c.run, c.op)
    return out


Resolution = Tuple[Dict[str, List[str]], List[str]]      # (ComfyUI's search order, unset $VARS of base_path)


def resolution(yaml_path: Optional[str], comfyui: Optional[str], launch=None) -> Resolution:
    """ComfyUI's search order from a YAML as it reads it now, and the base_path variables unset here.
    launch: how ComfyUI is started (launch.Launch: its models folder, its other YAMLs, output folders)."""
    if not yaml_path:
        return {}, []
    data = fsops.read_file(fsops.through_link(yaml_path))
    # ComfyUI reads <realpath of its folder>/extra_model_paths.yaml: resolve from the real folder.
    as_read = os.path.join(os.path.realpath(os.path.dirname(yaml_path)), os.path.basename(yaml_path))
    text = data.decode("utf-8") if data else ""
    # No YAML (a container rebuilt from its image): ComfyUI's own models folders are still searched.
    if launch is not None:
        from migrate.disk.launch import search_order
        texts = {}
        for p in launch.yamls:
            if os.path.realpath(p) == os.path.realpath(as_read):
                as_read = p         # the same file under ComfyUI's spelling
            else:
                raw = fsops.read_file(p) if os.path.isfile(p) else None
                texts[p] = raw.decode("utf-8", "replace") if raw is not None else None
        order = search_order(launch, texts, as_read, text if data else None)
    else:
        models = os.path.realpath(os.path.join(comfyui, "models") if comfyui else
                                  os.path.join(os.path.dirname(as_read), "models"))
        order = comfy.search_folders([(as_read, text)] if data else [], models)
    base = comfy.managed_base(text, as_read) if data else None
    return order, comfy.unset_variables(base[0], dict(os.environ)) if base else []


def verify_pod(runs: Sequence[Run], comfyui: Optional[str], target: Optional[str] = None, kept: Sequence[dict] = (),
               quick: bool = False, catalogue: Optional[Mapping] = None,
               on_bytes: Optional[Callable[[int], None]] = None, launch=None, digest_cache=None) -> Dict:
    """Check every name of `claims(runs, kept)` once: its store file holds the logged content
    (re-hashed; `quick`: its size and mtime compared, no byte read) and ComfyUI, with the YAML of
    the run that logged it, loads that file for the name. Also each run's link-back symlinks.

    runs: (run id, records), oldest first. target: where the store is now (default: where the
    newest run left it); paths logged under another mount path are read under this one.
    catalogue: the store's (catalogue.load), for `quick`: the size and mtime of a stored file whose
    mtime no log holds (a dedupe's, a file already there), while it lists the logged digest.
    digest_cache: the user's digest cache (hashing.DigestCache): each file read is recorded there (with SHA-256
    and BLAKE3), never trusted; the caller saves it.
    """
    newest = runs[-1][1][0]
    target = target or newest["target"]
    mounts = {rid: mount_of(rec[0], target) for rid, rec in runs}
    yamls: Dict[str, Optional[str]] = {}
    for rid, rec in runs:
        y, m = rec[0].get("yaml"), mounts[rid]
        if y and m.moved and os.path.exists(m.here(y)):
            y = m.here(y)
        yamls[rid] = y
    cache: Dict[Optional[str], Resolution] = {}

    def resolved(rid: str) -> Resolution:
        if yamls[rid] not in cache:
            cache[yamls[rid]] = resolution(yamls[rid], comfyui, launch)
        return cache[yamls[rid]]

    per_run = {rid: 0 for rid, _ in runs}
    missing: List[str] = []
    changed: List[str] = []
    shadowed: List[str] = []
    size_only: List[str] = []
    real_target = os.path.realpath(target)
    digests: Dict[str, str] = {}        # real path -> digest read here (each file read once)
    logged = {rid: (rec[0].get("target") or "", identity.precisions(rec[0])) for rid, rec in runs}
    for rel, c in sorted(claims(runs, kept).items()):
        path = os.path.join(mounts[c.run].base, rel)
        per_run[c.run] += 1
        try:
            if quick:
                root, prec = logged[c.run]
                state = _compare_stat(path, c, real_target, catalogue or {}, prec(posixpath.join(root, rel)))
                if state == "size only":
                    size_only.append(path)
            else:
                real = os.path.realpath(path)
                digests[real] = read_digest(real, digest_cache, on_bytes)
                state = "same" if digests[real] == c.digest else "changed"
        except OSError:
            state = "missing"
        if state == "missing":
            missing.append(path)
            continue
        if state == "changed":
            changed.append(path)
            continue
        folder, _, name = rel.partition("/")
        cat, _ = comfy.category_of(folder)
        order = resolved(c.run)[0]
        winner = loaded_path(order, cat, name)
        if order and (winner is None or os.path.realpath(winner) != os.path.realpath(path)):
            shadowed.append(path)
    # Link-back symlinks serve custom nodes that open ComfyUI/models/<name> directly: each must still
    # reach its file (an absolute one, or ComfyUI outside the moved volume, breaks on a remount).
    broken: List[str] = []
    for rid, records in runs:
        steps = group_steps(records)
        for b in steps.begins:
            if b["op"] == Op.LINKBACK and b["step"] in steps.done:
                src = mounts[rid].here(b["src"])
                if not os.path.exists(src) and src not in broken:      # gone, or a symlink leading nowhere
                    broken.append(src)
    dangling = dangling_links(runs, mounts)
    unset = sorted({v for rid, _ in runs for v in resolved(rid)[1]})
    latest = runs[-1][0]
    names_changed, names_checked = check_names(runs, resolved(latest)[0], quick, digests, on_bytes, digest_cache)
    # A stored file whose name a run logged is judged by that name's bytes (checked above): a user's
    # is_default folder holding the name wins, as it did before the run, and that is no failure.
    logged = logged_names(runs)
    failed = {n.split(": ", 1)[0] for n in names_changed}
    as_before = [p for p in shadowed if _name_of(p, mounts[latest].base) in logged
                 and "/".join(_name_of(p, mounts[latest].base)) not in failed]
    shadowed = [p for p in shadowed if p not in as_before]
    unattached = not_attached(runs, yamls[latest], resolved(latest)[0], mounts[latest].base, missing + changed)
    res = {"run": latest, "runs": [rid for rid, _ in runs], "per_run": per_run, "quick": quick,
           "checked": sum(per_run.values()), "missing": missing, "changed": changed, "shadowed": shadowed,
           "orphaned": find_orphans(mounts[latest].base, resolved(latest)[0]), "unset_variables": unset,
           "broken_link_backs": broken, "dangling_links": dangling,
           "names_checked": names_checked, "names_changed": names_changed,
           "shadowed_as_before": as_before, "not_attached": unattached,
           "attaches": [rid for rid, rec in runs if rec[0].get("kind") == "attach"],
           # Orphans are news, not failures: on a shared store they are mostly other pods' folders.
           "ok": not (missing or changed or shadowed or unset or broken or dangling or names_changed or unattached)}
    if quick:
        res["size_only"] = size_only
    moved = next((mounts[rid].moved for rid, _ in reversed(runs) if mounts[rid].moved), None)
    if moved:
        res["moved"] = {"from": moved[0], "to": moved[1]}
    return res


def not_attached(runs: Sequence[Run], yaml_path: Optional[str], order: Dict[str, List[str]], target: str,
                 bad: Sequence[str] = ()) -> Optional[str]:
    """Why ComfyUI, with this pod's YAML as it is now, does not search the store first for the names
    the runs placed (None when it does): the YAML is gone (a container rebuilt from its image), has
    no section leading to the store, or does not list the store's folder of such a name before
    every other folder. A name a user's is_default folder holds, as before the run, is verify's
    `shadowed_as_before`, not this: only the store's folder's absence or place counts."""
    if not yaml_path:
        return None
    real = os.path.realpath(target)
    if not os.path.exists(yaml_path):
        return f"{yaml_path} does not exist (a container rebuilt from its image?)"
    wanted: Dict[str, str] = {}
    for rel in sorted(claims(runs)):
        folder = rel.partition("/")[0]
        cat, _ = comfy.category_of(folder)
        if cat in NOT_BY_NAME or os.path.join(target, rel) in bad:
            continue
        wanted.setdefault(cat, folder)
    models = os.path.realpath(os.path.join(os.path.dirname(yaml_path), "models"))
    for cat, folder in sorted(wanted.items()):
        where = os.path.realpath(os.path.join(real, folder))
        folders = [os.path.realpath(f) for f in order.get(cat, [])]
        if where not in folders:
            return f"{yaml_path} does not list the store's {folder} folder ({where}) for {cat}"
        ahead = [f for f in folders[:folders.index(where)] if f == models or f.startswith(models + "/")]
        if ahead:       # ComfyUI's own folder first: our section is no longer is_default
            return f"{yaml_path} lists the store's {folder} folder after ComfyUI's own {ahead[0]} for {cat}"
    return None


def dangling_links(runs: Sequence[Run], mounts: Mapping[str, "Mount"]) -> List[str]:
    """Symlinks in the runs' source folders that lead nowhere because a run took their file away:
    each a name ComfyUI no longer loads. The file's removal re-points them (execute.py's relink), so
    one left dangling means that step was lost (a kill between the two, before issue 20). A symlink
    that dangled before the run, or leads to a file the runs never touched, is not ours."""
    removed = set()
    sources = set()
    for rid, records in runs:
        steps = group_steps(records)
        sources.update(mounts[rid].here(s) for s in records[0].get("sources") or [])
        for b in steps.begins:
            if b["op"] in RETURNS_SOURCE and b["step"] in steps.done and isinstance(b.get("src"), str):
                src = mounts[rid].here(b["src"])
                removed.add(os.path.join(os.path.realpath(os.path.dirname(src)), os.path.basename(src)))
    out: List[str] = []
    for root in sorted(sources):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not (dirpath == root and d == STATE_DIR))
            for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                path = os.path.join(dirpath, name)
                try:
                    if not os.path.islink(path) or os.path.exists(path):
                        continue
                    to = os.path.normpath(os.path.join(os.path.realpath(dirpath), os.readlink(path)))
                except OSError:
                    continue
                if to in removed:
                    out.append(path)
    return out


def _name_of(path: str, target: str) -> Tuple[str, str]:
    folder, _, name = os.path.relpath(path, target).partition("/")
    return comfy.category_of(folder)[0], name


def logged_names(runs: Sequence[Run]) -> Dict[Tuple[str, str], Tuple[Optional[str], Optional[int]]]:
    """(category, name) -> (digest, size) ComfyUI loads for it after the runs: each run's `names`
    record (what every name ComfyUI loaded before it loads after it), a newer run's record first."""
    out: Dict[Tuple[str, str], Tuple[Optional[str], Optional[int]]] = {}
    for _, records in runs:
        rec = next((r for r in reversed(records) if r.get("type") == "names"), None)
        for item in (rec or {}).get("names") or []:
            if isinstance(item, list) and len(item) == 4 and all(isinstance(x, str) for x in item[:2]):
                out[(item[0], item[1])] = (item[2] if isinstance(item[2], str) else None,
                                           item[3] if isinstance(item[3], int) else None)
    return out


def check_names(runs: Sequence[Run], order: Dict[str, List[str]], quick: bool, digests: Dict[str, str],
                on_bytes: Optional[Callable[[int], None]] = None, cache=None) -> Tuple[List[str], int]:
    """Each name the runs logged loads the logged bytes now, under ComfyUI's rules with the pod's
    YAML (re-hashed, once a file; `quick`: its size). Returns (the names that do not, how many checked)."""
    bad: List[str] = []
    want = logged_names(runs)
    if not order:
        return bad, 0
    for (cat, name), (digest, size) in sorted(want.items()):
        got = loaded_path(order, cat, name)
        if got is None:
            bad.append(f"{cat}/{name}: no file of this name is found any more")
            continue
        real = os.path.realpath(got)
        try:
            if quick or digest is None:
                same = os.stat(real).st_size == size
            else:
                if real not in digests:
                    digests[real] = read_digest(real, cache, on_bytes)
                same = digests[real] == digest
        except OSError:
            same = False
        if not same:
            bad.append(f"{cat}/{name}: loads {got}, other bytes than the run recorded")
    return bad, len(want)


def _compare_stat(path: str, c: Claim, real_target: str, catalogue: Mapping,
                  p: identity.Precision = identity.EXACT) -> str:
    """'same', 'changed' or 'size only' (no mtime known to compare) for a stored file, by stat alone,
    at the precision the run's probe measured for the store's filesystem (`p`): a copy on MooseFS
    reads back its mtime in whole seconds, not the nanoseconds the run may have seen at its publish."""
    st = os.stat(path)      # followed, as ComfyUI opens it
    if not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(path)
    if st.st_size != c.size:
        return "changed"
    want = c.mtime_ns
    if want is None:
        entry = catalogue.get(os.path.relpath(os.path.realpath(path), real_target))
        if entry is not None and (entry.digest, entry.size) == (c.digest, c.size):
            want = entry.mtime_ns
    if want is None:
        return "size only"
    return "changed" if identity.changes(st, identity.Observed(None, None, c.size, want), p, identity.Dev.IGNORE) \
        else "same"


def loaded_path(order: Dict[str, List[str]], category: str, name: str) -> Optional[str]:
    """The file ComfyUI loads for a name on the disk now: names.first_holder (the rule the plan's
    resolver uses on its view of the trees) with the disk's os.path.isfile."""
    return first_holder(order.get(category, []), name, os.path.isfile)


def find_orphans(target: str, order: Dict[str, List[str]]) -> List[str]:
    """Files in the target no ComfyUI folder lists (when a YAML is known), and leftover temporaries."""
    from migrate.disk.scan import TEMP_MARK, walk
    listed = {os.path.normpath(f) for folders in order.values() for f in folders}
    out = []
    if not os.path.isdir(target):
        return out
    for rel, _ in walk(target):
        folder = rel.split("/", 1)[0]
        base = rel.rsplit("/", 1)[-1]
        if TEMP_MARK in base or (order and "/" in rel and os.path.join(target, folder) not in listed):
            out.append(os.path.join(target, rel))
    return out


@dataclass(frozen=True)
class ServerView:
    """What a running ComfyUI lists.

    Args:
        choices: (node, input) -> the names that loader input offers, for every choice input of
            /object_info in either form ComfyUI has used (see `input_choices`).
        embeddings: GET /embeddings (names without extension), None where the server has no such route.
        folders: GET /internal/folder_paths, category -> the folders it searches (a frontend-internal
            route: None where it is missing or of another shape).
        nodes: how many node types /object_info lists.
    """

    choices: Dict[Tuple[str, str], List[str]]
    embeddings: Optional[List[str]]
    folders: Optional[Dict[str, List[str]]]
    nodes: int


def input_choices(spec: object) -> Optional[List[str]]:
    """A loader input's choices in both forms of /object_info: `[[choices...], {...}]` (older
    nodes) and `["COMBO", {"options": [choices...], ...}]` (newer ones); None for other inputs."""
    if isinstance(spec, list) and spec and isinstance(spec[0], list):
        return [x for x in spec[0] if isinstance(x, str)]
    if isinstance(spec, list) and len(spec) > 1 and spec[0] == "COMBO" and isinstance(spec[1], dict) \
            and isinstance(spec[1].get("options"), list):
        return [x for x in spec[1]["options"] if isinstance(x, str)]
    return None


def parse_server(object_info: object, embeddings: object = None, folders: object = None) -> ServerView:
    """A ServerView from the three answers, as JSON values (pure)."""
    choices: Dict[Tuple[str, str], List[str]] = {}
    info = object_info if isinstance(object_info, dict) else {}
    for node, spec in info.items():
        inputs = spec.get("input", {}) if isinstance(spec, dict) else {}
        for group in ("required", "optional"):
            for name, ispec in ((inputs or {}).get(group) or {}).items():
                got = input_choices(ispec)
                if got is not None:
                    choices[(node, name)] = got
    emb = [e for e in embeddings if isinstance(e, str)] if isinstance(embeddings, list) else None
    fold = None
    if isinstance(folders, dict):
        fold = {k: [p for p in v if isinstance(p, str)] for k, v in folders.items() if isinstance(v, list)}
    return ServerView(choices, emb, fold, len(info))


def looks_like_object_info(info: object) -> bool:
    """ComfyUI's /object_info: a non-empty mapping of node types, each a mapping with an `input`
    mapping. `{}`, `[]`, another JSON or a web page is not (verify then says so: exit 3)."""
    return isinstance(info, dict) and bool(info) and all(
        isinstance(v, dict) and isinstance(v.get("input"), dict) for v in info.values())


def read_server(url: str, timeout: float = 30.0) -> ServerView:
    """Ask a running ComfyUI: /object_info (must answer), /embeddings and /internal/folder_paths
    (older or newer servers may lack them). Raises OSError or ValueError for /object_info."""
    import json
    import urllib.error
    import urllib.request

    def get(route: str) -> object:
        with urllib.request.urlopen(url.rstrip("/") + route, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    info = get("/object_info")
    if not looks_like_object_info(info):
        kind = type(info).__name__ if not isinstance(info, (dict, list)) or info else f"an empty {type(info).__name__}"
        raise ValueError(f"the answer is not ComfyUI's node list ({kind}"
                         + (f", keys such as {sorted(info)[:3]}" if isinstance(info, dict) and info else "") + ")")
    extra = []
    for route in ("/embeddings", "/internal/folder_paths"):
        try:
            extra.append(get(route))
        except (OSError, ValueError):      # urllib.error.HTTPError is an OSError
            extra.append(None)
    return parse_server(info, *extra)


def _pair_family(cat: str, name: str, names: Sequence[str]) -> Optional[str]:
    """A vae_approx half's family (`taef2` for taef2_encoder.safetensors) when the other half is among
    `names` (store names, or category names): VAELoader shows an image TAE pair by its family."""
    m = re.match(r"(.+?)_(encoder|decoder)\.", name)
    if cat != "vae_approx" or not m:
        return None
    other = f"{m.group(1)}_{'decoder' if m.group(2) == 'encoder' else 'encoder'}."
    return m.group(1) if any(n.rpartition("/")[2].startswith(other) for n in names) else None


def listed_as(rel: str, names: Sequence[str]) -> Optional[Tuple[str, List[str]]]:
    """How a ComfyUI may list a store name (`loras/style/ink.safetensors`): (category, the names its
    lists may show it under: the name itself; an embedding without extension; a diffusers folder by
    the folder of its model_index.json (its other files: none); a vae_approx half also by its pair's
    family). None for a name outside any category or with an extension ComfyUI does not list.
    `names`: every name being checked (a vae_approx pair shows only when both halves are there)."""
    folder, _, name = rel.partition("/")
    cat, custom = comfy.category_of(folder)
    if not name or not comfy.lists_extension(cat, name):
        return None
    if cat == "embeddings":
        return cat, [posixpath.splitext(name)[0]]
    if cat == "diffusers":
        return cat, ([posixpath.dirname(name) or "."] if posixpath.basename(name) == "model_index.json" else [])
    if cat == "vae_approx":
        family = _pair_family(cat, name, [n.partition("/")[2] for n in names if n.partition("/")[0] == folder])
        return cat, [name] + ([family] if family else [])
    return cat, [name]


def find_loaders(view: ServerView, shown: Mapping[str, set]) -> Dict[str, List[Tuple[str, str]]]:
    """category -> the loader inputs of this server that list it: those comfy.LOADERS names (ComfyUI's
    own, 0.3.75 and 0.33) that it has, and every other input whose choices are file names of the
    category (`shown`: category -> the names ComfyUI lists for it, as listed_as shows them): at
    least one, and at least half of its choices that name a file of any category. So 0.33's new
    loaders, a custom node's, and those of versions to come count without a table of them."""
    out: Dict[str, List[Tuple[str, str]]] = {}
    for cat, pairs in comfy.LOADERS.items():
        for k in pairs:
            if k in view.choices:
                out.setdefault(cat, []).append(k)
    known = {k for pairs in comfy.LOADERS.values() for k in pairs}
    every = set().union(*shown.values()) if shown else set()
    for k, choices in view.choices.items():
        if k in known:
            continue
        got = set(choices)
        files = len(got & every)
        for cat, names in shown.items():
            n = len(got & names)
            if n and 2 * n >= files:
                out.setdefault(cat, []).append(k)
    return out


def check_listed(names: Sequence[str], view: ServerView, disk: Optional[Mapping[str, Sequence[str]]] = None) -> Dict:
    """Which store names a ComfyUI does not list where its loaders (or /embeddings) show that category.

    disk: category -> every name ComfyUI lists for it on the disk now (the pod's search order), so
    that a loader is found by its choices even when it lists none of the names checked.
    Returns {"not_listed": [store names], "checked": n, "unchecked": [store names no list of this
    server shows: a category no loader of it lists (classifiers, most custom-node folders), a
    vae_approx file it shows under no name (a lone half; a family or file its VAELoader does not
    offer: taef2, taehv before 0.33)], "loaders": {category: ["Node.input", ...]}}.
    """
    forms: Dict[str, Tuple[str, List[str]]] = {}
    shown: Dict[str, set] = {}
    for cat, listed in (disk or {}).items():
        if comfy.category_of(cat)[0] != cat:
            continue
        every = [f"{cat}/{m}" for m in listed]
        for rel in every:
            how = listed_as(rel, every)
            if how is not None:
                shown.setdefault(cat, set()).update(how[1])
    for rel in names:
        how = listed_as(rel, names)
        if how is not None:
            forms[rel] = how
            shown.setdefault(how[0], set()).update(how[1])
    shown.pop("embeddings", None)
    loaders = find_loaders(view, shown)
    not_listed: List[str] = []
    unchecked: List[str] = []
    checked = 0
    for rel in sorted(names):
        how = forms.get(rel)
        if how is None:
            unchecked.append(rel)
            continue
        cat, shows = how
        if not shows:
            continue            # a diffusers folder's other files: shown by the folder's name
        if cat == "embeddings":
            pool = view.embeddings
        else:
            lists = [view.choices[k] for k in loaders.get(cat, ())]
            pool = [n for ls in lists for n in ls] if lists else None
        if pool is None:
            unchecked.append(rel)
            continue
        if not any(f in pool for f in shows):
            name = rel.partition("/")[2]
            if cat == "vae_approx" and not (comfy.TAESD.match(name) and len(shows) > 1):
                unchecked.append(rel)   # shown under no name by this ComfyUI (see the docstring)
                continue
            not_listed.append(rel)
        checked += 1
    return {"not_listed": not_listed, "checked": checked, "unchecked": unchecked,
            "loaders": {cat: [f"{n}.{i}" for n, i in ks] for cat, ks in sorted(loaders.items())}}


CLOCK_STEP = 1.0      # the granularity of a process start from /proc (btime is whole seconds)


def start_note(view: ServerView, started: Optional[float], yaml_changed: Optional[float]) -> Optional[str]:
    """'may be stale' where only times can tell and they cannot: the process start (whole seconds
    of btime) falls within one step before the YAML's last change, and the server shows no search
    folders to decide by."""
    if view.folders is not None or started is None or yaml_changed is None:
        return None
    if started < yaml_changed < started + CLOCK_STEP:
        return ("ComfyUI may be stale: it started within a second of the YAML's last change, and its start "
                "time is known to the second only (it shows no /internal/folder_paths to decide by); "
                "restart it if its lists lack a model")
    return None


def stale_server(names: Sequence[str], view: ServerView, order: Dict[str, List[str]], target: str,
                 listed: Dict, started: Optional[float], yaml_changed: Optional[float]) -> Optional[str]:
    """Why the server looks started before the YAML changed (it reads the YAML only at start-up),
    or None. Evidence, strongest first: its search folders (/internal/folder_paths) lack a store
    folder the YAML lists for a checked name; its process (found here) started before the YAML's
    last change; it lists none of the names checked (`listed`: check_listed's result)."""
    searched = False        # its live folders showed a store folder the YAML lists: no clock needed
    if view.folders is not None:
        for rel in names:
            folder = rel.partition("/")[0]
            cat, custom = comfy.category_of(folder)
            where = os.path.realpath(os.path.join(target, folder))
            if custom or cat not in view.folders or where not in {os.path.realpath(f) for f in order.get(cat, [])}:
                continue
            if where not in {os.path.realpath(f) for f in view.folders[cat]}:
                return f"it does not search {os.path.join(target, folder)}, which the YAML lists for {cat}"
            searched = True
    # /proc gives a start in whole seconds of btime plus clock ticks: up to 1 s early. Only a start
    # a whole step before the change is known to be before it (start_note says "may be stale").
    if not searched and started is not None and yaml_changed is not None and started + CLOCK_STEP <= yaml_changed:
        return "its process started before the YAML's last change"
    if listed["checked"] and len(listed["not_listed"]) == listed["checked"]:
        return f"it lists none of the {listed['checked']} names checked"
    return None
