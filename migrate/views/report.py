"""PURE rendering helpers: JSON documents, summary rows, human sizes, the YAML diff.

Tables themselves are drawn by the CLI (tabulate lives in the shell); this module gives it rows.
"""
from __future__ import annotations

import json
import posixpath
import shlex
from collections import OrderedDict
from collections.abc import Iterator, Sequence

from migrate.core.model import (PLAN_FORMAT, Action, ActionKind, Finding, Method, Plan, Removal, ScanResult, Status,  # noqa: F401
                                human, show)


def dumps(doc) -> str:
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def dumps_lines(doc: dict, per_line: Sequence[str]) -> str:
    """Like dumps, but each item of the top-level lists named in per_line on a line of its own.

    json's indenting encoder is pure Python (~3 us a value): printing 1,000 duplicate groups of a
    10,000-file tree took ~85 ms, longer than finding them. Items are written by the C encoder
    instead, and a group per line reads (and greps) well.
    """
    compact = json.JSONEncoder(sort_keys=True, ensure_ascii=True, separators=(", ", ": ")).encode
    parts = []
    for key in sorted(doc):
        value = doc[key]
        if key in per_line and isinstance(value, list) and value:
            body = "[\n" + ",\n".join("    " + compact(item) for item in value) + "\n  ]"
        else:
            body = json.dumps(value, sort_keys=True, indent=2, ensure_ascii=True).replace("\n", "\n  ")
        parts.append(f"  {compact(key)}: {body}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


# --- scan -----------------------------------------------------------------------------------------

def scan_doc(results: Sequence[ScanResult]) -> dict:
    return {
        "version": PLAN_FORMAT,
        "roots": [{
            "root": r.root,
            "files": [_file_entry(rec) for rec in r.records],
            "problems": [{"path": p.path, "message": p.message} for p in r.problems],
        } for r in results],
    }


def _file_entry(rec) -> dict:
    return {
        "path": rec.rel, "category": rec.category, "custom": rec.custom, "size": rec.size,
        "digest": rec.digest, "status": rec.status.value,
        **({"detail": rec.detail} if rec.detail else {}),
        **({"link_target": rec.link_target} if rec.link_target is not None else {}),
    }


_string = json.encoder.encode_basestring_ascii     # the C encoder of one str, quotes included


def _file_text(rec, pad: str) -> str:
    """`_file_entry(rec)` as `dumps` indents it at depth pad, keys sorted: written directly, since
    json's encoder call per value cost more than the rest of a cached scan."""
    line = ",\n" + pad + "  "
    return ("{\n" + pad + '  "category": ' + ("null" if rec.category is None else _string(rec.category))
            + line + '"custom": ' + ("true" if rec.custom else "false")
            + (line + '"detail": ' + _string(rec.detail) if rec.detail else "")
            + line + '"digest": ' + ("null" if rec.digest is None else _string(rec.digest))
            + (line + '"link_target": ' + _string(rec.link_target) if rec.link_target is not None else "")
            + line + '"path": ' + _string(rec.rel)
            + line + '"size": ' + str(int(rec.size))
            + line + '"status": ' + _string(rec.status.value)
            + "\n" + pad + "}")


def iter_scan_json(results: Sequence[ScanResult], batch: int = 2000) -> Iterator[str]:
    """The text of `dumps(scan_doc(results))`, produced a batch of files at a time.

    Built whole, the document of 100,000 files and its text cost ~110 MB more than the scan (and
    json's indenting encoder is pure Python); here each file's flat entry is written with the C
    string encoder in the layout `dumps` gives it (indent 2, sorted keys, ASCII): `_file_text`.
    """
    marks = {}
    skeleton = scan_doc([ScanResult(r.root, (), r.problems) for r in results])
    for n, (root, r) in enumerate(zip(skeleton["roots"], results)):
        if r.records:
            marks[n] = f"\0files-{n}\0"
            root["files"] = [marks[n]]
    text = dumps(skeleton)
    pad = " " * 8                        # files sit at depth 4: doc, roots, root, files
    for n, r in enumerate(results):
        if n not in marks:
            continue
        head, text = text.split(json.dumps(marks[n]), 1)
        yield head
        for start in range(0, len(r.records), batch):
            yield (",\n" + pad).join(_file_text(rec, pad) for rec in r.records[start:start + batch]) \
                + ("," + "\n" + pad if start + batch < len(r.records) else "")
    yield text


def scan_rows(result: ScanResult) -> list[list]:
    """One row per category: files, bytes, duplicate files, entries not migrated. A duplicate is a
    second file (inode) with content already seen, as `scan --duplicates` counts it: another name
    of the same inode (a hardlink) is no duplicate, and its bytes are counted once."""
    cats: dict[str, list] = OrderedDict()
    seen: dict[str, set] = {}
    inodes: set = set()
    for rec in sorted(result.records, key=lambda r: (r.category or "", r.rel)):
        name = (rec.category or "(top level)") + (" (custom nodes)" if rec.custom else "")
        row = cats.setdefault(name, [name, 0, 0, 0, 0])
        if rec.status.migrates:
            row[1] += 1
            if (rec.dev, rec.ino) in inodes:
                continue
            inodes.add((rec.dev, rec.ino))
            row[2] += rec.size
            if rec.digest:
                files = seen.setdefault(rec.digest, set())
                files.add((rec.dev, rec.ino))
                if len(files) > 1:
                    row[3] += 1
        else:
            row[4] += 1
    return [[n, f, human(b), d, p] for n, f, b, d, p in cats.values()]


SCAN_HEADERS = ["category", "files", "size", "duplicates", "not migrated"]


# --- scan --duplicates ---------------------------------------------------------------------------

def duplicates_doc(d) -> dict:
    """`scan --duplicates --format json`: groups of paths with one content (d: dupes.Duplicates)."""
    return {
        "version": PLAN_FORMAT,
        "groups": [{"digest": g.digest, "size": g.size, "redundant_bytes": g.redundant_bytes,
                    "copies": [list(c.names) for c in g.copies]} for g in d.groups],
        "totals": {"groups": len(d.groups), "redundant_copies": sum(len(g.copies) - 1 for g in d.groups),
                   "redundant_bytes": sum(g.redundant_bytes for g in d.groups), "files": d.files,
                   "hashed_files": d.hashed_files, "partial_files": d.partial_files,
                   "cached_files": d.cached_files},
        "problems": [{"path": p.path, "message": p.message} for p in d.problems],
    }


DUPLICATE_HEADERS = ["group", "size", "digest", "copy (names of one inode)"]


def duplicate_rows(d) -> list[list]:
    """One row per copy; a copy's hardlinked names share its row."""
    rows = []
    for n, g in enumerate(d.groups, 1):
        for k, c in enumerate(g.copies):
            rows.append([str(n) if k == 0 else "", human(g.size) if k == 0 else "",
                         g.digest[:16] if k == 0 else "", " = ".join(show(p) for p in c.names)])
    return rows


def duplicate_summary(d) -> str:
    copies = sum(len(g.copies) - 1 for g in d.groups)
    return (f"{len(d.groups)} groups of identical content among {d.files} files: {copies} redundant "
            f"copies, {human(sum(g.redundant_bytes for g in d.groups))} (hardlinked names count as one copy)")


# --- plan -----------------------------------------------------------------------------------------

def action_doc(a: Action) -> dict:
    return {
        "action": a.kind.value, "source": a.source, "category": a.category, "size": a.size,
        "digest": a.digest, "destination": a.dst, "method": a.method.value,
        "methods": [m.value for m in a.methods], "stored": a.stored,
        "source_after": a.removal.value, "link_back": a.link_back, "reason": a.reason,
    }


def plan_doc(plan: Plan) -> dict:
    return {
        "version": PLAN_FORMAT,
        "target": plan.target,
        "sources": list(plan.sources),
        "mode": plan.policy.mode.value,
        "on_conflict": plan.policy.on_conflict.value,
        "probes": [{"source": p.source, "hardlink": p.hardlink, "rename": p.rename, "detail": p.detail,
                    "filesystem": fs_doc(p.fs)} for p in plan.probes],
        "target_hardlinks": plan.target_hardlinks,
        "target_filesystem": fs_doc(plan.target_fs),
        "container_disk": {"bytes": plan.container_bytes, "free": plan.container_free},
        "actions": [action_doc(a) for a in plan.actions],
        "totals": totals(plan),
        "interrupted_run": ({"run": plan.resumed[0], "placed": list(plan.resumed[1])} if plan.resumed else None),
        "yaml": {"path": plan.yaml_path, "changes": plan.yaml_changes, "diff": yaml_diff(plan),
                 "base_path": plan.base_path, "base_path_mode": plan.policy.base_path},
        "custom_folders": [{"name": c.name, "source": c.source, "destination": c.destination, "files": c.files,
                            "stay": c.stay, "listed_in_yaml": c.listed, "link_back": c.link_back, "note": c.note}
                           for c in plan.custom_folders],
        "warnings": list(plan.warnings),
        "findings": [finding_doc(f) for f in plan.findings],
        "name_changes": [name_change_doc(c) for c in plan.name_changes],
        "preflight": list(plan.notes),
        "comfyui": plan.launch.doc() if plan.launch is not None else None,
    }


def name_change_doc(c) -> dict:
    return {"category": c.category, "name": c.name, "before": {"path": c.before, "digest": c.before_digest},
            "after": {"path": c.after, "digest": c.after_digest} if c.after is not None else None,
            "reason": c.reason}


def name_change_lines(plan: Plan, limit: int = 8, when: str = "after the run") -> list[str]:
    """The name changes as one short block, grouped by reason: what a workflow would now load."""
    if not plan.name_changes:
        return []
    groups: dict[str, list] = {}
    for c in plan.name_changes:
        groups.setdefault(c.reason, []).append(c)
    lines = [f"name changes: {len(plan.name_changes)} name(s) would load other bytes {when} (or nothing):"]
    for reason, cs in sorted(groups.items()):
        shown = ", ".join(show(f"{c.category}/{c.name}") for c in cs[:limit])
        more = f", and {len(cs) - limit} more (--format json lists them)" if len(cs) > limit else ""
        line = f"  {reason}: {shown}{more}"
        if len(line) <= WIDTH:
            lines.append(line)
        else:       # the names on lines of their own, each shortened in the middle if need be
            import textwrap
            lines.append(f"  {reason}:")
            lines += textwrap.wrap(", ".join(middle(f"{c.category}/{c.name}", 100) for c in cs[:limit]) + more,
                                   WIDTH, initial_indent="    ", subsequent_indent="    ",
                                   break_long_words=False, break_on_hyphens=False)
    return lines


def fs_doc(fs) -> dict:
    return {"type": fs.fstype, "hardlink": fs.hardlink, "symlink": fs.symlink, "rename": fs.rename,
            "rename_noreplace": fs.noreplace, "mtime_step_ns": fs.mtime_step_ns, "stable_inode": fs.stable_inode,
            "case_sensitive": fs.case_sensitive, "overlay": fs.overlay is not None, "detail": fs.detail,
            "forbidden_characters": fs.forbidden, "trailing_dropped": fs.trailing, "name_unit": fs.name_unit,
            "name_max": fs.name_max, "block_bytes": fs.block}


def totals(plan: Plan) -> dict:
    by_kind: dict[str, dict] = {}
    for a in plan.actions:
        t = by_kind.setdefault(a.kind.value, {"files": 0, "bytes": 0})
        t["files"] += 1
        t["bytes"] += a.size
    # Another name of the very file the store keeps (a hardlink already, its removal an unlink) saves nothing.
    # A file an interrupted run of this pod placed is that run's work (`run` continues it), not deduplication.
    resumed = set(plan.resumed[1]) if plan.resumed else set()
    saved = sum(a.size for a in plan.actions if a.kind in (ActionKind.ALREADY_THERE, ActionKind.SAME_CONTENT)
                and a.removal is not Removal.UNLINK and a.dst not in resumed)
    quarantined = sum(a.size for a in plan.actions if a.removal is Removal.QUARANTINE)
    from migrate.core.storerules import stay_kind
    return {"by_action": by_kind, "dedup_saves_bytes": saved, "copy_bytes": plan.bytes_to_copy,
            "quarantine_bytes": quarantined, "store_space_needed": plan.space_to_take,
            "store_reserve_bytes": plan.reserve_bytes,
            "stays": {k: sum(1 for a in plan.actions if a.kind is ActionKind.CONFLICT and stay_kind(a) == k)
                      for k in ("conflict", "case-clash", "name-refused", "hidden-hardlink")}}


def outcome(plan: Plan) -> dict:
    """What the plan does, in the numbers the terminal and the HTML page both show: the files and
    bytes that reach the store (conflicts do not), those that stay (conflicts), what goes to the
    quarantine (still on the source disk until `comfy-migrate purge` frees it)."""
    reach = [a for a in plan.actions if a.kind not in (ActionKind.SKIP, ActionKind.CONFLICT)]
    stay = [a for a in plan.actions if a.kind is ActionKind.CONFLICT]
    return {"reach_files": len(reach), "reach_bytes": sum(a.size for a in reach),
            "conflict_files": len(stay), "conflict_bytes": sum(a.size for a in stay),
            "quarantine_bytes": sum(a.size for a in plan.actions if a.removal is Removal.QUARANTINE)}


SHORT = {ActionKind.MOVE: "move", ActionKind.LINK: "link", ActionKind.COPY: "copy",
         ActionKind.ALREADY_THERE: "there", ActionKind.SAME_CONTENT: "dedupe", ActionKind.CONFLICT: "CONFLICT",
         ActionKind.RELINK: "relink", ActionKind.SKIP: "skip"}


def middle(text: str, width: int) -> str:
    """text shortened in the middle to `width` characters (both ends of a model name matter)."""
    text = show(text)
    if len(text) <= width:
        return text
    keep = width - 1
    return text[:keep - keep // 2] + "\u2026" + text[len(text) - keep // 2:]


WIDTH = 120     # columns a printed line fits unless -v (issue 22)


def fit(head: str, path: str, tail: str = "", verbose: bool = False) -> str:
    """head + path + tail in WIDTH columns: the path shortened in the middle (both ends matter), never to
    under 24 characters; whole under -v. Not for a command to paste (that stays whole)."""
    return head + (show(path) if verbose else middle(path, max(24, WIDTH - len(head) - len(tail)))) + tail


def wrap(text: str, paths=(), verbose: bool = False, lead: int = 0) -> list[str]:
    """Prose (a warning, an audit finding) in lines of WIDTH columns after `lead` characters: each of
    `paths` in it shortened in the middle, then the words wrapped, none cut, onto lines indented by 2
    (-v: the one whole line)."""
    text = show(text)
    if verbose or lead + len(text) <= WIDTH:
        return [text]
    for path in sorted((p for p in paths if p), key=len, reverse=True):
        text = text.replace(show(path), middle(path, 60))
    import textwrap
    lines = textwrap.wrap(" " * lead + text, WIDTH, subsequent_indent="  ", break_long_words=False,
                          break_on_hyphens=False)
    return [lines[0][lead:]] + lines[1:]


METHOD_WORDS = {Method.HARDLINK: "link", Method.RENAME: "rename", Method.COPY: "copy", Method.SYMLINK: "symlink"}


def methods_text(a: Action) -> str:
    """'link, else copy': the plan's methods in the order they are tried (Action.methods)."""
    return ", else ".join(METHOD_WORDS[m] for m in a.methods)


def _how(a: Action, verbose: bool = False) -> str:
    """A few words: how the bytes reach the store (copies are always verified) and what the source becomes;
    the fallbacks too under -v (else counted in a note below the table: fallback_note)."""
    method = methods_text(a) if verbose else METHOD_WORDS.get(a.method, "")
    after = "quarantine" if a.removal is Removal.QUARANTINE else ""
    return ", ".join(x for x in (method, after, "link back" if a.link_back else "") if x)


def _skip_summary(reason: str) -> str:
    """The kind of a skip reason, for counting ('placeholder', 'unfinished download', ...)."""
    if reason.startswith("symlink"):
        return "symlink (left as it is)"
    return reason.split(":", 1)[0].split(" (", 1)[0].strip() or "skipped"


def plan_rows(plan: Plan, verbose: bool = False) -> tuple[list[list], list[str]]:
    """(rows, notes) of the plan table for people: grouped by the folder a file is in (a row naming
    the folder, then its files by their name in it: what ComfyUI and workflows call them), the roots
    said once above the table, where each lands in the store only where that differs, long names
    shortened in the middle so ordinary ones fit 120 columns. Skips are counted by reason in `notes`
    (every row with verbose)."""
    target = plan.target.rstrip("/") + "/"
    many = len(plan.sources) > 1
    index = {r: i + 1 for i, r in enumerate(plan.sources)}
    wide = 400 if verbose else 0
    rows, skipped = [], {}
    group = None
    for a in sorted(plan.actions, key=lambda a: (a.rel.split("/", 1)[0] if "/" in a.rel else "", a.rel, a.root)):
        if a.kind is ActionKind.SKIP and not verbose:
            k = _skip_summary(a.reason)
            skipped[k] = skipped.get(k, 0) + 1
            continue
        folder, _, name = a.rel.rpartition("/") if "/" not in a.rel.split("/", 1)[-1] else (
            a.rel.split("/", 1)[0], "", a.rel.split("/", 1)[1])
        head = (f"[{index.get(a.root, '?')}] " if many else "") + (folder + "/" if folder else "(top level)")
        if head != group:
            rows.append(["", head, "", "", ""])
            group = head
        dst = a.dst[len(target):] if a.dst and a.dst.startswith(target) else (a.dst or "")
        there = ""
        if a.kind is ActionKind.SAME_CONTENT and a.stored:
            stored = a.stored[len(target):] if a.stored.startswith(target) else a.stored
            there = "= " + middle(stored, wide or 24)
        elif dst and dst != a.rel:
            dfolder, _, dname = dst.partition("/")
            there = dfolder + "/" if dname == a.rel.partition("/")[2] else middle(dst, wide or 26)
        how = {ActionKind.CONFLICT: "stays", ActionKind.RELINK: "symlink re-pointed"}.get(a.kind) or _how(a, verbose)
        note = a.reason if a.kind in (ActionKind.SKIP, ActionKind.CONFLICT) else ""
        if verbose and note:
            how += f" ({note})"
        rows.append([SHORT[a.kind], "  " + middle(name, wide or 48), human(a.size), there, how])
    notes = [f"{n} skipped: {k}" for k, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))]
    if notes and not verbose:
        notes[-1] += " (-v lists every file)"
    return rows, notes + fallback_note(plan, verbose)


def fallback_note(plan: Plan, verbose: bool = False) -> list[str]:
    """One line counting the planned fallbacks ('12 link, else copy'): the methods tried in order where
    the filesystem refuses one after all (a bind mount, a link limit); -v shows them on each row."""
    counts: dict = {}
    for a in plan.actions:
        if len(a.methods) > 1:
            counts[methods_text(a)] = counts.get(methods_text(a), 0) + 1
    if not counts:
        return []
    line = "fallbacks (if the filesystem refuses a method): " + "; ".join(
        f"{n} {how}" for how, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return [line + ("" if verbose else " (-v: per file)")]


PLAN_HEADERS = ["", "file (in its models folder)", "size", "in the store as", "how"]


def plan_header(plan: Plan) -> list[str]:
    """The roots, said once above the table."""
    lines = [f"source{'s' if len(plan.sources) > 1 else ''}:"
             + ("" if len(plan.sources) > 1 else f" {show(plan.sources[0])}")]
    if len(plan.sources) > 1:
        lines += [f"  [{i}] {show(r)}" for i, r in enumerate(plan.sources, 1)]
    lines.append(f"store:  {show(plan.target)}   (mode {plan.policy.mode.value})")
    if plan.launch is not None and (plan.launch.args or plan.launch.origin):
        lines.append(launch_line(plan))
    lines += [f"note: {show(n)}" for n in plan.notes]
    return lines


def launch_line(plan: Plan) -> str:
    """How ComfyUI is started, as the plan resolved names (launch.Launch)."""
    launch = plan.launch
    return (f"ComfyUI: {show(launch.comfyui)} started with {show(launch.shell_args() or 'no options that place models')}"
            + (f" ({launch.origin})" if launch.origin else ""))


def warning_lines(plan: Plan) -> list[str]:
    """The plan's warnings, each kind once: conflicts as one line naming the files (short), then the rest."""
    from migrate.core.storerules import stay_kind
    heads = {"conflict": "conflict(s): the store holds other content under the name",
             "case-clash": "case clash(es): the store's filesystem folds case, so these names are one name "
                           "there with another spelling",
             "name-refused": "name(s) the store's filesystem cannot hold (its characters or length)",
             "hidden-hardlink": "hardlinked file(s) whose other names cannot be found (their filesystem shows "
                                "them with other inode numbers: a rollback could not make them one file again)"}
    lines = []
    for kind, head in heads.items():
        group = [a for a in plan.actions if a.kind is ActionKind.CONFLICT and stay_kind(a) == kind]
        if group:
            names = ", ".join(middle(a.rel, 60) for a in group[:4]) + (" ..." if len(group) > 4 else "")
            lines.append(f"{len(group)} {head}; the pod's file stays where it is: {names}")
    lines += [w for w in plan.warnings if not w.startswith(tuple(f"{k}:" for k in heads))]
    return lines


def summary_rows(plan: Plan) -> list[list]:
    t = totals(plan)
    rows = [[k, v["files"], human(v["bytes"])] for k, v in sorted(t["by_action"].items())]
    return rows


def summary_lines(plan: Plan, quiet: bool = False, verbose: bool = False) -> list[str]:
    """The plan's totals in words; quiet (-q): without how each source reaches the store and the
    custom-node folder notes; verbose (-v): with what each filesystem allows and each custom-node
    folder's whole note (else a short summary: they are in --format json and the report)."""
    t = totals(plan)
    lines = [f"deduplication saves {human(t['dedup_saves_bytes'])}; "
             f"{human(t['copy_bytes'])} must be copied"]
    if plan.resumed:
        done = set(plan.resumed[1])
        there = [a for a in plan.actions if a.kind is ActionKind.ALREADY_THERE and a.dst in done]
        lines.append(f"run {plan.resumed[0]} was interrupted: `run` continues it"
                     + (f" ({len(there)} file(s), {human(sum(a.size for a in there))}, it placed already)"
                        if there else "") + f"; `comfy-migrate rollback {plan.resumed[0]} --target "
                     f"{shlex.quote(show(plan.target))}` undoes it")
    if plan.free_bytes is not None:
        verdict = "fits" if plan.fits else "DOES NOT FIT"
        block = plan.target_fs.block
        how = ((f" (it needs {human(plan.space_to_take)} there in {human(block)} blocks, {human(plan.reserve_bytes)} "
                "of it for the lock, the log and a rollback)") if verbose else
               f" (it needs {human(plan.space_to_take)}, {human(plan.reserve_bytes)} for the lock, log and rollback; "
               "-v: more)") if plan.space_needed else ""
        lines.append(f"target free space {human(plan.free_bytes)}: the plan {verdict}{how}")
    if outcome(plan)["quarantine_bytes"]:
        lines.append(f"{human(outcome(plan)['quarantine_bytes'])} of source copies go to quarantine "
                     "(freed by `comfy-migrate purge`)")
    if plan.container_bytes:
        verdict = "fits" if plan.container_fits else "DOES NOT FIT"
        lines.append(f"container disk: up to {human(plan.container_bytes)} copied up by setting overlay files aside, "
                     f"{human(plan.container_free or 0)} free: the plan {verdict}")
    for p in () if quiet else plan.probes:
        how = "hardlink" if p.hardlink and p.fs.stable_inode and plan.target_fs.stable_inode else \
            "rename" if p.rename else "copy + verify"
        facts = f"source {show(p.fs.summary)}; store {show(plan.target_fs.summary)}" if verbose else \
            f"{show(p.fs.fstype)} -> {show(plan.target_fs.fstype)} (-v: what each allows)"
        lines.append(fit("", p.source, f" -> target: {how}" + (f" ({p.detail})" if p.detail else "") + f"; {facts}",
                         verbose))
    extra = sum(a.size for a in plan.actions if a.kind is ActionKind.SAME_CONTENT and a.method is Method.COPY)
    if extra:
        lines.append(f"the store takes neither hardlinks nor symlinks: {human(extra)} of same-content names "
                     "are stored as extra copies")
    if plan.base_path is not None and plan.policy.base_path != "absolute":
        lines.append(f"YAML base_path {show(plan.base_path)} (--base-path {plan.policy.base_path}) "
                     f"resolves here to {show(plan.target)}")
    for c in () if quiet else plan.custom_folders:
        parts = show(c.note).split("; ")
        if verbose or len(parts) <= 2:
            lines.append("; ".join(parts))
            continue
        # The folder's name and "ComfyUI does not know it" stay whole; the path after them is shortened.
        rest = parts[1].replace(show(plan.target), middle(plan.target, 40))
        room = WIDTH - 14 - len(parts[0]) - 2
        lines.append((f"{parts[0]}; {middle(rest, room)}" if room >= 30 else middle(f"{parts[0]}; {rest}", WIDTH - 14))
                     + " (-v: in full)")
    return lines


# The loader whose list shows a category's names in /object_info (the first category the run placed).
COMFYUI_URL = "http://127.0.0.1:8188"


def choices_jq(node: str, name: str) -> str:
    """A jq filter printing a loader input's choices in both forms ComfyUI has used:
    `[[choices...], {...}]` and `["COMBO", {"options": [choices...]}]` (newer nodes)."""
    return f'.{node}.input.required.{name} | if .[0] == "COMBO" then .[1].options else .[0] end'


def deploy_doc(plan: Plan) -> dict:
    """What to put in a Dockerfile (an image carrying ComfyUI, the store on the volume) and how to check
    a started ComfyUI: copy the YAML to where ComfyUI reads it, create the mount point."""
    if plan.yaml_path is None or plan.base_path is None:
        return {}
    docker = []
    p = plan.paths
    if p is not None and p.env_name:
        docker.append(f"ENV {p.env_name}={p.env_value}")
    plain = all(c.isalnum() or c in "/._-+@" for c in plan.yaml_path)
    docker.append(f"COPY extra_model_paths.yaml {plan.yaml_path}" if plain else
                  f"COPY {json.dumps(['extra_model_paths.yaml', plan.yaml_path])}")
    docker.append(f"RUN mkdir -p {shlex.quote(plan.target)}")
    notes = [f"take {plan.yaml_path} into the image's build context for the COPY",
             "or, instead of the COPY, run `comfy-migrate attach --yes` at every start, before ComfyUI (README: "
             "After the migration): it writes the YAML from the store, and nothing once written"]
    if plan.policy.base_path == "absolute":
        notes.append(f"base_path is absolute: mount the volume so that the store is at {plan.target} "
                     "(--base-path relative or env:VAR follow the volume to another mount path)")
    elif plan.policy.base_path == "relative":
        notes.append(f"base_path {plan.base_path} is relative to the YAML's folder: ComfyUI must sit at the "
                     "same place relative to the store (both on the volume, or the volume mounted so)")
    elif p is not None:
        notes.append(f"base_path {plan.base_path}: set {p.env_name} where ComfyUI starts to the path that "
                     f"holds the store on that machine (here {p.env_value}; e.g. /runpod-volume elsewhere)")
    cats = {c for c in plan.target_categories}
    cats.update(a.category for a in plan.actions if a.dst and a.category)
    from migrate.core.comfy import LOADERS
    cat = next((c for c in LOADERS if c in cats and c not in ("vae_approx", "diffusers")), "diffusion_models")
    node, name = LOADERS[cat][0]
    check = [f"curl -s {COMFYUI_URL}/object_info | jq '{choices_jq(node, name)}'",
             f"comfy-migrate verify --target {shlex.quote(plan.target)} --comfyui-url {COMFYUI_URL}"]
    return {"dockerfile": docker, "check": check, "notes": notes}


def yaml_diff(plan: Plan) -> str:
    if not plan.yaml_changes or plan.yaml_path is None:
        return ""
    before = (plan.yaml_before or "").splitlines(keepends=True)
    after = (plan.yaml_after or "").splitlines(keepends=True)
    old = plan.yaml_path if plan.yaml_before is not None else "/dev/null"
    import difflib   # only when there is a change to show: keeps start-up short
    return "".join(difflib.unified_diff(before, after, old, plan.yaml_path))


# --- audit ----------------------------------------------------------------------------------------

SEVERITY_ORDER = {"broken": 0, "suspect": 1, "notice": 2}


def finding_doc(f: Finding) -> dict:
    return {"path": f.path, "kind": f.kind, "severity": f.severity, "message": f.message, "fix": f.fix}


def audit_doc(roots: Sequence[str], findings: Sequence[Finding], summaries: dict[str, dict], files: int) -> dict:
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITY_ORDER}
    return {"version": PLAN_FORMAT, "roots": list(roots), "entries": files, "counts": counts,
            "ok": not any(f.blocks for f in findings),
            "findings": [finding_doc(f) for f in findings],
            "files": [{"path": p, **s} for p, s in sorted(summaries.items())]}


def audit_rows(findings: Sequence[Finding]) -> list[list]:
    ordered = sorted(findings, key=lambda f: (SEVERITY_ORDER.get(f.severity, 9), f.path, f.kind))
    return [[f.severity, f.kind, show(f.path), f.message] for f in ordered]


AUDIT_HEADERS = ["severity", "finding", "path", "what"]


def finding_lines(findings: Sequence[Finding], roots: Sequence[str] = ()) -> list[str]:
    """One line per finding of a plan: what it is and the fix (paths relative to `roots`, if given)."""
    def short(path: str) -> str:
        for r in roots:
            if path.startswith(r.rstrip("/") + "/"):
                return path[len(r.rstrip("/")) + 1:]
        return path
    return [f"{f.severity}: {show(short(f.path))}: {f.kind}: {f.message}" + (f" (fix: {f.fix})" if f.fix else "")
            for f in findings]


def template_name(t: dict) -> str:
    """Which template names a model, short: ComfyUI's by its file name, a pack's example with its pack."""
    if t.get("source") == "templates":
        return "template " + posixpath.basename(t["by"])
    return "/".join(t["by"].split("/")[-3:])


def workflow_lines(doc: dict, root: str = "") -> list[str]:
    """The workflows report as text: per saved workflow its models (ok / changes / missing, with the
    AutoV2 where the SHA-256 is known already), then the models nothing names and what they cost a
    month on a network volume, the models only a template names, and how that list was made."""
    mark = {"ok": "ok     ", "changes": "CHANGES", "missing": "MISSING"}
    lines = []
    for w in doc["workflows"]:
        where = posixpath.relpath(w["path"], root) if root else w["path"]
        if w["format"] == "unreadable":
            lines.append(fit("", where, f": unreadable ({w['error'][:70]})"))
            continue
        lines.append(fit("", where, f": {len(w['models'])} model(s)" + ("" if w["models"] else " (none it names)")
                         + (f"; read in part ({w['error'][:70]})" if w["error"] else "")))
        for m in w["models"]:
            head = f"  {mark[m['status']]} {m.get('autov2') or '-':<10} "
            ref = show(f"{m['category'] or '?'}/{m['name']}")
            note = "" if m["status"] == "ok" else show(
                f"no file of this name; download: {m['url']}" if m["status"] == "missing" and m.get("url")
                else "no file of this name" if m["status"] == "missing" else m["note"])
            room = WIDTH - len(head)
            if note:        # the name first (both ends), then the note in what is left (--format json: whole)
                ref = middle(ref, max(40, room - len(note) - 2))
                note = ": " + middle(note, max(20, room - len(ref) - 2))
            lines.append(head + middle(ref, room) + note)
    if not doc["workflows"]:
        lines.append("no saved workflows (ComfyUI saves them under user/<user>/workflows/)")
    elif any(w["models"] for w in doc["workflows"]):
        lines.append("  (the column after the status is the AutoV2, the first 10 hex digits of SHA-256; "
                     "- where not read yet)")
    unused = doc["unused"]
    if unused:
        lines.append(f"\n{len(unused)} model(s) nothing names: {human(doc['unused_bytes'])}, "
                     f"${doc['unused_cost_per_month']:.2f}/month at ${doc['price_per_gb_month']}/GB-month")
        lines.append("  (listed only when no workflow, template, custom-node example or blueprint names it; each "
                     "file's bytes counted once)")
        for u in unused[:10]:
            shared = "" if u.get("frees", u["size"]) == u["size"] else " (shares its bytes: frees nothing)"
            lines.append(f"  {human(u['size']):>9}  {middle(u['category'] + '/' + u['name'], 100)}{shared}")
        if len(unused) > 10:
            lines.append(f"  ... and {len(unused) - 10} more (--format json lists them all)")
    templated = doc.get("templated") or []
    if templated:
        lines.append(f"\n{len(templated)} model(s) named only by a template (not unused: a template loads them):")
        for t in templated[:5]:
            head = f"  {human(t['size']):>9}  {middle(t['category'] + '/' + t['name'], 60)} by "
            lines.append(fit(head, template_name(t)))
        if len(templated) > 5:
            lines.append(f"  ... and {len(templated) - 5} more (--format json lists them all)")
    if doc.get("sources"):
        lines.append("\nhow the unused list was made: every workflow read, by where it was found")
        for s in doc["sources"]:
            bad = f", {len(s['unreadable'])} unreadable" if s.get("unreadable") else ""
            count = f"{s['workflows']}{bad}" if s["workflows"] or s["kind"] != "templates" else "none"
            lines.append(fit(f"  {s['label']}: {count} (", s["where"], ")"))
    missing = doc["missing"]
    if missing:
        line = f"{len(missing)} model(s) a workflow needs that this pod lacks:"
        for i, m in enumerate(missing):
            ref = f" {m['category'] or '?'}/{middle(m['name'], 60)}" + ("," if i < len(missing) - 1 else "")
            if len(line) + len(ref) > WIDTH - 4:
                line += " ..."
                break
            line += ref
        lines.append("\n" + line)
    return lines


def rollback_summary(undos: Sequence, kept: int) -> str:
    """What a rollback will do, in one line: counts per kind of step (rollback.Undo.op)."""
    from migrate.core.steps import PLACES, RETURNS_SOURCE, Op
    n: dict[str, int] = {}
    for u in undos:
        n[u.op] = n.get(u.op, 0) + 1
    back = sum(k for op, k in n.items() if op in RETURNS_SOURCE)
    parts = [f"{back} source file(s) back to their place" if back else "",
             f"{sum(k for op, k in n.items() if op in PLACES)} name(s) taken out of the store",
             f"{n[Op.LINKBACK]} link-back symlink(s) removed" if n.get(Op.LINKBACK) else "",
             f"{n[Op.MKDIR]} folder(s) removed if empty" if n.get(Op.MKDIR) else "",
             "the YAML restored" if n.get(Op.YAML) else "",
             f"{kept} stored file(s) kept for other runs" if kept else ""]
    return "; ".join(p for p in parts if p and not p.startswith("0 "))
