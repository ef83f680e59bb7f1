"""The JSON document of each application outcome (app/: migrate, attach_cmd, rollback_cmd, verify_cmd,
purge): what `--format json` prints. Pure: an outcome's values in, a dict out (the shell prints it
with report.dumps). Outcomes are read by their fields: views import no module of the app layer."""
from __future__ import annotations

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
