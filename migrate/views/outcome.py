"""What each application outcome (app/: migrate, attach_cmd, rollback_cmd, verify_cmd, purge) prints:
`doc` is its `--format json` document, `lines` everything the command prints (stdout and stderr, in
order, as (channel, text)). Pure: an outcome's values in, a dict or lines out; the shell prints them.
Outcomes are read by their fields: views import no module of the app layer."""
from __future__ import annotations

import shlex

from migrate.views import report


def doc(outcome) -> dict:
    """The `--format json` document of any outcome (its `command` says which)."""
    return DOCS[outcome.command](outcome)


def problems_doc(problems) -> list:
    return [{"path": p.path, "message": p.message} for p in problems]


def stayed_doc(stayed) -> list:
    return [{"path": p, "why": w} for p, w in stayed]


def migrate_doc(o) -> dict:
    """`run`: the plan (a dry run), nothing to do, or what the run did."""
    plan = o.plan
    if o.state == "dry_run":
        return report.plan_doc(plan)
    findings = [report.finding_doc(f) for f in plan.findings]
    if o.state == "nothing_to_do":
        return {"run": None, "nothing_to_do": True, "stayed": stayed_doc(o.stayed), "findings": findings}
    rep = o.report
    return {"run": rep.run_id, "log": rep.log_path, "resumed": rep.resumed,
            "placed": rep.placed, "copied_bytes": rep.copied_bytes, "removed": rep.removed,
            "quarantine_bytes": rep.quarantine_bytes, "yaml_written": rep.yaml_written,
            "problems": problems_doc(rep.problems),
            "deploy": deploy(o), "report": o.page, "restart_comfyui": rep.yaml_written,
            "comfyui_running": [r.pid for r in o.running],
            "comfyui": plan.launch.doc() if plan.launch is not None else None,
            "findings": findings, "stayed": stayed_doc(o.stayed)}


def deploy(o) -> dict:
    """What to put in a Dockerfile after a run (report.deploy_doc), once the YAML is as the plan made it."""
    plan, rep = o.plan, o.report
    if plan.yaml_after is not None and (rep.yaml_written or not plan.yaml_changes):
        return report.deploy_doc(plan)
    return {}


def attach_doc(o) -> dict:
    """`attach`: the YAML section and folders it writes (or wrote), the names that change."""
    plan, first = o.plan, o.shown
    out = {"comfyui": o.home, "target": o.target, "yaml": first.yaml_path, "base_path": first.base_path,
           "base_path_mode": first.policy.base_path, "store_folders": list(first.store_folders),
           "name_changes": [report.name_change_doc(c) for c in first.name_changes],
           "not_compared": [report.name_change_doc(c) for c in o.not_compared],
           "warnings": list(first.warnings), "dry_run": o.dry_run}
    if o.state != "done":
        return dict(out, run=None, nothing_to_do=o.state == "attached", yaml_written=False)
    rep = o.report
    return dict(out, run=rep.run_id if rep else None, nothing_to_do=rep is None,
                log=rep.log_path if rep else None, yaml_written=bool(rep and rep.yaml_written),
                store_folders=list(plan.store_folders), problems=problems_doc(rep.problems if rep else []),
                restart_comfyui=bool(rep and rep.yaml_written and o.running))


def rollback_doc(o) -> dict:
    """`rollback`: nothing to roll back, what would be undone (a dry run), or what was."""
    if o.state == "nothing":
        return {"run": None, "nothing_to_roll_back": True, "message": o.message}
    if o.state == "dry_run":
        return {"run": o.plan.run_id, "dry_run": True, "steps": [
            {"op": u.op, "what": o.doomed.get(u.step) or u.describe(), "cannot": bool(o.doomed.get(u.step)),
             "kept_for": o.users.get(u.step)} for u in o.plan.undos]}
    rep = o.report
    return {"run": rep.run_id, "log": rep.log_path, "resumed": rep.resumed, "undone": rep.undone,
            "skipped": problems_doc(rep.skipped), "kept": problems_doc(rep.kept), "not_back": problems_doc(rep.stranded)}


def verify_doc(o) -> dict:
    """`verify`: app.verify's result as it is (a document already)."""
    return o.result


def purge_doc(o) -> dict:
    """`purge`: the runs whose quarantine was emptied, what was freed and kept, the trash folders."""
    return {"runs": [rid for rid, _ in o.per_run], "files": sum(len(qs) for _, qs in o.per_run),
            "freed_bytes": o.freed, "kept": list(o.kept), "permanent": o.permanent, "trash": list(o.trash)}


DOCS = {"migrate": migrate_doc, "attach": attach_doc, "rollback": rollback_doc, "verify": verify_doc,
        "purge": purge_doc}


# --- what each command prints ----------------------------------------------------------------------

class Lines(list):
    """What a command prints, in order: (channel, text). 'out': stdout, the text as it is; 'warn': a
    'warning: ' line on stderr; 'info' (not under -q) and 'debug' (only under -v): a line on stderr;
    'err': a line on stderr as it is. The shell replays them (cli.emit)."""

    def out(self, text: str) -> None:
        self.append(("out", text))

    def warn(self, text: str) -> None:
        self.append(("warn", text))

    def info(self, text: str) -> None:
        self.append(("info", text))

    def debug(self, text: str) -> None:
        self.append(("debug", text))

    def err(self, text: str) -> None:
        self.append(("err", text))


def lines(outcome, fmt: str, verbosity: int = 0, **how) -> Lines:
    """Everything a command prints of its outcome in `fmt` (table or json) at `verbosity` (-q < 0 < -v);
    `how`: what the request adds (again: the options a printed command repeats; url, quick, run_ref)."""
    return LINES[outcome.command](outcome, fmt, verbosity, **how)


def problem_lines(say: Lines, problems) -> None:
    for p in problems:
        say.warn(f"{report.show(p.path)}: {p.message}")


def migrate_lines(o, fmt: str, verbosity: int, again: str = "") -> Lines:
    """`run` once it ran, or had nothing to do (a dry run prints the plan: cli.print_plan). again: the
    options `comfy-migrate plan` needs to say why each file stayed."""
    say = Lines()
    plan, left = o.plan, o.stayed
    if fmt == "json":
        say.out(report.dumps(doc(o)))
    if o.state == "nothing_to_do":
        if left:
            say.warn(f"nothing to do, but {stayed_summary(left, len('warning: nothing to do, but '))};")
            say.err(f"  `comfy-migrate plan{again}` says why for each")
        else:
            say.info("nothing to do: the target is up to date")
        for line in report.warning_lines(plan) + report.finding_lines(plan.findings, plan.sources):
            say.debug(f"note: {line}")      # what `plan` said already; -v repeats it
        return say
    rep = o.report
    if fmt != "json":
        run_text(say, o, verbosity)
    problem_lines(say, rep.problems)
    for n in rep.notes:
        say.warn(report.show(n))
    if left and fmt == "table":
        say.warn(f"{stayed_summary(left, len('warning: '))};")      # the command on a line of its own: whole
        say.err(f"  `comfy-migrate plan{again}` says why for each")
    return say


def run_text(say: Lines, o, verbosity: int) -> None:
    """What a run did, how to undo it, the Dockerfile and the restart."""
    from migrate.core.comfy import BEGIN_MARK
    rep, plan, page, running = o.report, o.plan, o.page, o.running
    dock = deploy(o)
    say.out(f"\nrun {rep.run_id}{' (continued)' if rep.resumed else ''}: placed {rep.placed} files, "
            f"copied {report.human(rep.copied_bytes)}, removed {rep.removed} source names\n")
    tgt = shlex.quote(report.show(plan.target))
    quiet = verbosity < 0      # -q: what was done, how to undo it, the restart
    if rep.quarantine_bytes:
        say.out(f"quarantine holds {report.human(rep.quarantine_bytes)}; free it with: "
                f"comfy-migrate purge {rep.run_id} --target {tgt}\n")
    if not quiet:
        say.out(f"audit log: {report.show(rep.log_path)}\n")
    say.out(f"undo with: comfy-migrate rollback {rep.run_id} --target {tgt}\n")
    if page and not quiet:
        say.out(f"report: {report.show(page)}\n")
    first = plan.yaml_changes and BEGIN_MARK not in (plan.yaml_before or "")
    if dock and (first or verbosity > 0) and not quiet:
        say.out("\nDockerfile (an image carrying ComfyUI, the models on the volume):\n")
        say.out("".join(f"  {report.show(line)}\n" for line in dock["dockerfile"]))
        say.out("".join(f"{line}\n" for note in dock["notes"] for line in deploy_note(note, plan, verbosity > 0)))
    if dock and not quiet:
        say.out("check once ComfyUI runs:\n" + "".join(f"  {report.show(line)}\n" for line in dock["check"]))
    if rep.yaml_written:
        say.out("\nrestart ComfyUI now: it reads extra_model_paths.yaml only at start-up"
                + (f" (still running with the old folders: {', '.join(r.describe() for r in running)})"
                   if running else "") + "\n")


def deploy_note(note: str, plan, verbose: bool) -> list:
    """A Dockerfile note as comment lines of report.WIDTH columns, its paths shortened in the middle
    (-v: whole; the COPY line above names the YAML whole)."""
    import textwrap
    note = report.show(note)
    if not verbose:
        for path in (plan.yaml_path, plan.target):
            if path:
                note = note.replace(report.show(path), report.middle(path, 60))
    return textwrap.wrap(note, report.WIDTH, initial_indent="  # ", subsequent_indent="  #   ",
                         break_long_words=False, break_on_hyphens=False)


def stayed_summary(left: list, lead: int = 0) -> str:
    """'3 model file(s) stayed where they are, not in the store (2 conflict, 1 suspect; e.g. conflict: PATH)',
    PATH shortened in the middle so that, after `lead` characters, the line fits report.WIDTH columns."""
    from collections import Counter
    kinds = Counter(why for _, why in left)
    head = (f"{len(left)} model file(s) stayed where they are, not in the store ("
            + ", ".join(f"{n} {why}" for why, n in sorted(kinds.items())) + f"; e.g. {left[0][1]}: ")
    return head + report.middle(left[0][0], max(24, report.WIDTH - lead - len(head) - 2)) + ")"


def fit_lines(text: str) -> str:
    """Each line of a YAML diff shortened in the middle to report.WIDTH columns (-v: whole)."""
    return "".join(report.middle(line, report.WIDTH) + "\n" for line in text.splitlines())


def attach_preview(o, verbosity: int) -> Lines:
    """What attach shows before it asks (and all a dry run shows): the YAML diff, the folders, the names."""
    import os
    import textwrap
    say = Lines()
    home, target, plan = o.home, o.target, o.shown
    verbose = verbosity > 0
    room = (report.WIDTH - 54) // 2        # the two paths share what the words leave
    say.out(f"attach {report.show(home) if verbose else report.middle(home, room)} to the store "
            f"{report.show(target) if verbose else report.middle(target, room)} (no model file is moved or read)\n")
    diff = report.yaml_diff(plan)
    if diff:
        say.out(f"\nextra_model_paths.yaml change:\n{diff if verbose else fit_lines(diff)}")
    if plan.store_folders:
        say.out("\n" + "\n".join(textwrap.wrap(f"store folders to make ({len(plan.store_folders)}): " + ", ".join(
            report.show(os.path.basename(d)) for d in plan.store_folders), report.WIDTH, subsequent_indent="  ",
            break_long_words=False, break_on_hyphens=False)) + "\n")
    for line in report.name_change_lines(plan, when="after attach"):
        say.out(line + "\n")
    for w in plan.warnings:
        say.warn(w)
    return say


def attach_lines(o, fmt: str, verbosity: int) -> Lines:
    """`attach`: already attached, what it wrote and how to undo it (its preview: attach_preview)."""
    say = Lines()
    rep = o.report
    if fmt == "json":
        say.out(report.dumps(doc(o)))
    elif o.state == "attached":
        say.info(f"attached already: {report.show(o.plan.yaml_path)} searches {report.show(o.target)} first; "
                 "nothing written")
    elif o.state == "done" and rep is not None:
        say.out(f"\nattach {rep.run_id}: {'YAML written' if rep.yaml_written else 'YAML unchanged'}, "
                f"{len(o.plan.store_folders)} store folder(s) made\n"
                f"undo with: comfy-migrate rollback {rep.run_id} --target {shlex.quote(report.show(o.target))}\n")
        if rep.yaml_written and o.running:
            say.out(f"restart ComfyUI now: it reads extra_model_paths.yaml only at start-up "
                    f"({', '.join(r.describe() for r in o.running)})\n")
    problem_lines(say, rep.problems if rep else [])
    for n in (rep.notes if rep else []):
        say.warn(report.show(n))
    return say


def rollback_preview(shown) -> Lines:
    """What `rollback` shows before it asks: the run and a summary of its undos (-y: nothing)."""
    say = Lines()
    say.out(f"rollback of run {shown.plan.run_id}: {report.rollback_summary(shown.plan.undos, shown.kept)}\n"
            "(`--dry-run` lists every step)\n")
    return say


def rollback_lines(o, fmt: str, verbosity: int) -> Lines:
    """`rollback`: nothing to roll back, every step it would undo (a dry run), or what it undid."""
    say = Lines()
    if fmt == "json":
        say.out(report.dumps(doc(o)))
    elif o.state == "nothing":
        say.info(o.message)
    elif o.state == "dry_run":
        say.out(f"rollback of run {o.plan.run_id} ({len(o.plan.undos)} steps, newest first):\n")
        for u in o.plan.undos:
            users = o.users.get(u.step)
            say.out(f"  {report.show(o.doomed[u.step]) if u.step in o.doomed else undo_line(u, verbosity > 0)}"
                    + (f" -> kept in the store instead: run(s) {', '.join(users)} rely on it" if users else "") + "\n")
    else:
        rep = o.report
        say.out(f"run {rep.run_id} {'partly ' if rep.stranded else ''}rolled back: {rep.undone} steps undone, "
                f"{len(rep.skipped)} skipped\n")
        for p in rep.kept:
            say.out(f"  {report.show(p.path)}: {p.message}\n")
    if o.state == "dry_run" and o.doomed and fmt == "table":
        say.err(f"warning: {len(o.doomed)} source file(s) cannot be recreated: their stored copies are gone "
                "(the rollback would skip them and exit 1)")
    if o.state == "done":
        rep = o.report
        problem_lines(say, rep.skipped)
        if rep.stranded:
            problem_lines(say, rep.stranded)
            say.warn(f"rollback not finished: {len(rep.stranded)} model file(s) are not back in the pod; the YAML's "
                     "comfy-migrate section stays, so their names keep loading from the store. Fix the cause above, "
                     f"then run `comfy-migrate rollback {rep.run_id} --target {shlex.quote(report.show(o.target))} "
                     "--yes` again")
    return say


def undo_line(u, verbose: bool) -> str:
    """A rollback step in words, each path shortened in the middle so the line fits report.WIDTH
    columns (-v: whole)."""
    import re
    from migrate.core.steps import Op
    text = report.show(u.describe())
    op = Op.of({"op": u.op})
    if verbose or len(text) <= report.WIDTH - 2 or op is None:
        return text
    fields = re.findall(r"{(\w+)}", op.undo_text)
    room = (report.WIDTH - 2 - len(re.sub(r"{\w+}", "", op.undo_text))) // max(1, len(fields))
    return op.describe_undo({k: report.middle(v, max(24, room)) if k in fields and isinstance(v, str) else v
                             for k, v in u.rec.items()})


def purge_preview(shown, fmt: str) -> Lines:
    """What `purge` shows before it asks: per run, its quarantined files and their size."""
    say = Lines()
    for rid, qs in shown.per_run if fmt == "table" else ():
        say.out(f"run {rid}: {len(qs)} quarantined file(s), {report.human(sum(q['size'] for q in qs))}\n")
    return say


def purge_lines(o, fmt: str, verbosity: int, run_ref=None) -> Lines:
    """`purge`: the quarantine was empty, or what was freed, kept, and where the trash is."""
    say = Lines()
    if fmt == "json":
        say.out(report.dumps(doc(o)))
    elif o.state == "empty":
        say.out(f"the quarantine of {'this run' if run_ref else 'every run of this pod'} is empty\n")
    else:
        verb = "deleted" if o.permanent else "moved to the trash"
        say.out(f"{report.human(o.freed)} {verb}; {len(o.kept)} files kept\n")
        for where in o.trash:
            say.out(f"trash: {report.show(where)}\n  (empty it to free the space: its files are still on that disk)\n")
    return say


def verify_lines(o, fmt: str, verbosity: int, url=None, quick: bool = False) -> Lines:
    """`verify`: per run, the files checked; then each problem, and 'all good' or 'problems found'."""
    say = Lines()
    res, home, launch = o.result, o.home, o.launch
    if fmt == "json":
        say.out(report.dumps(res))
        return say
    for rid in res["runs"]:
        say.out(f"attach {rid}: the YAML only, no file placed\n" if rid in res.get("attaches", ()) else
                f"run {rid}: {res['per_run'][rid]} files checked\n")
    if launch is not None and launch.args:
        say.out(f"  names resolved as ComfyUI started with {report.show(launch.shell_args())} ({launch.origin})\n")
    if quick:
        say.out("  quick: sizes and mtimes compared with the log, no file read"
                + (f" ({len(res['size_only'])} by size alone: no mtime of theirs is logged)" if res["size_only"] else "")
                + "; run without --quick to re-hash\n")
    if res.get("moved"):
        say.out(f"  the target moved with its volume: paths logged under {res['moved']['from']} are read under "
                f"{res['moved']['to']}\n")
    for name in res["unset_variables"]:
        say.out(f"  unset: the YAML's base_path uses ${name}, which is not set here; ComfyUI started "
                f"without it finds none of these models (export {name}=...)\n")
    if res.get("names_checked"):
        say.out(f"  {res['names_checked']} model names checked: each loads the bytes the run recorded"
                + (f", but for {len(res['names_changed'])}" if res["names_changed"] else "") + "\n")
    if res.get("not_attached"):
        say.out(f"  ComfyUI does not search the store first for the names this pod's runs placed: "
                f"{report.show(res['not_attached'])}; run `comfy-migrate attach` ("
                + (f"--comfyui {shlex.quote(report.show(home))} " if home else "")
                + f"--target {shlex.quote(report.show(o.target))}), then (re)start ComfyUI\n")
    for kind in ("missing", "changed", "shadowed", "broken_link_backs", "dangling_links", "names_changed",
                 "not_listed_by_comfyui"):
        for p in res.get(kind, []):
            say.out(f"  {kind}: {report.show(p)}\n")
    if res.get("comfyui"):
        c = res["comfyui"]
        say.out(f"  ComfyUI at {url}: {c['nodes']} node types; {c['checked'] - len(c['not_listed'])} of "
                f"{c['checked']} names listed" + (f" ({len(c['unchecked'])} not in any list of its: custom-node "
                                                   "folders, files it shows under no name)" if c["unchecked"] else "")
                + "\n")
        if c["stale"]:
            say.out(f"  ComfyUI was started before the YAML changed: restart it ({c['stale']})\n")
        elif c.get("note"):
            say.out(f"  note: {c['note']}\n")
    if res["orphaned"] and not res.get("not_attached"):
        say.out(f"  note: {len(res['orphaned'])} file(s) in the target this pod's YAML does not list (other pods' "
                f"folders, or leftovers), e.g. {report.show(res['orphaned'][0])}; --format json lists them\n")
    say.out("all good\n" if res["ok"] else "problems found\n")
    return say


LINES = {"migrate": migrate_lines, "attach": attach_lines, "rollback": rollback_lines, "verify": verify_lines,
         "purge": purge_lines}
