"""PURE: the dry-run report as one self-contained HTML page (inline CSS and SVG, no script, no
font or image from outside), readable at desktop width and on a phone, printable.

Sections: totals, a chart of bytes per category (on the container disk before and after, and in
the store after), name changes and conflicts, duplicate groups, audit findings with their fix,
custom-node folders, the pod's workflows (see migrate/core/workflows.py), the YAML diff, every step.
"""
from __future__ import annotations

import html
import posixpath
import re
from collections.abc import Mapping, Sequence

from migrate.views import report
from migrate.core.model import Action, ActionKind, Plan, Removal

CSS = """
:root{--fg:#1d2430;--muted:#5b6474;--bg:#fff;--card:#f5f7fa;--line:#dde2ea;--ok:#1f7a44;--warn:#9a5b00;--bad:#b42318;
--before:#8fa3bf;--after:#2f6fd6;--store:#18a36b}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:20px 16px 48px}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.8em 0 .5em;padding-bottom:.2em;border-bottom:1px solid var(--line)}
.sub{color:var(--muted);overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px;margin:14px 0}
.card{background:var(--card);border-radius:8px;padding:10px 12px}.card b{display:block;font-size:1.35em}
.card span{color:var(--muted);font-size:.9em}
table{border-collapse:collapse;width:100%;font-size:.92em}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--card);font-weight:600}td.num,th.num{text-align:right;white-space:nowrap}
.wrap{overflow-x:auto}code,.path{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em;overflow-wrap:anywhere}
.tag{display:inline-block;border-radius:4px;padding:0 6px;font-size:.85em;font-weight:600;white-space:nowrap}
.ok{color:var(--ok)}.warn{color:var(--warn)}.bad{color:var(--bad)}
.tag.ok{background:#e3f4ea}.tag.warn{background:#fdf0da}.tag.bad{background:#fde6e4}
pre{background:var(--card);padding:10px;border-radius:6px;overflow-x:auto;font-size:.85em}
.add{color:var(--ok)}.del{color:var(--bad)}
.legend span{margin-right:14px;white-space:nowrap}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
details summary{cursor:pointer;color:var(--muted)}
.chart .row{display:grid;grid-template-columns:minmax(90px,160px) 1fr;gap:8px;align-items:center;margin:6px 0}
.chart .lab{font-size:.9em;overflow-wrap:anywhere}.chart .bar{display:flex;align-items:center;gap:6px;height:12px}
.chart .bar i{display:block;height:9px;border-radius:2px}.chart small{color:var(--muted);font-size:.75em;white-space:nowrap}
.b0{background:var(--before)}.b1{background:var(--after)}.b2{background:var(--store)}
p,li{overflow-wrap:anywhere}
code.h{white-space:nowrap}
@media (max-width:600px){body{font-size:14px}.hide-narrow{display:none}
.wrap table,.wrap tbody,.wrap tr,.wrap td{display:block}.wrap thead{display:none}
.wrap tr{border-bottom:1px solid var(--line);padding:6px 0}.wrap td{border:0;padding:1px 4px;text-align:left}
.wrap td.num{text-align:left}.wrap td:empty{display:none}
.wrap td[data-label]::before{content:attr(data-label) ": ";color:var(--muted);font-size:.85em}
pre{white-space:pre-wrap;overflow-wrap:anywhere}}
@media print{details{display:block}}
"""


def autov2(sha256: str) -> str:
    """A1111/Forge's short hash (catalogue.autov2): the first 10 hex digits of SHA-256, upper case."""
    return sha256[:10].upper()


def esc(text: object) -> str:
    return html.escape(report.show(str(text)), quote=True)


_TICKED = re.compile(r"`([^`\n]+)`")


def prose(text: object) -> str:
    """A message (a hint, a warning, a reason) for the page: escaped, each `command` span the terminal
    shows in backticks set as <code> (names and paths go through esc: a backtick there is a character)."""
    return _TICKED.sub(r"<code>\1</code>", esc(text))


def _rel(path: str | None, root: str) -> str:
    if not path:
        return ""
    return posixpath.relpath(path, root) if path.startswith(root.rstrip("/") + "/") else path


def src_rel(plan: Plan, path: str) -> str:
    """A path in a source, relative to that source's models folder (with its name when there are several)."""
    for root in plan.sources:
        if path.startswith(root.rstrip("/") + "/"):
            rel = path[len(root.rstrip("/")) + 1:]
            return rel if len(plan.sources) == 1 else f"{posixpath.basename(root.rstrip('/'))}: {rel}"
    return path


def _side(plan: Plan, side: Mapping | None) -> str:
    """One side of a name change, so that before and after read differently: where the file is
    (the pod's source or the store), its path there and the start of its digest."""
    if not side or not side.get("path"):
        return ""
    path, target = side["path"], plan.target
    where = f"store: {_rel(path, target)}" if path.startswith(target.rstrip("/") + "/") else f"pod: {src_rel(plan, path)}"
    return where + (f" (xxh3 {side['digest'][:12]})" if side.get("digest") else "")


def src_name(plan: Plan, a: Action) -> str:
    return src_rel(plan, a.source)


def category_bytes(plan: Plan) -> list[tuple[str, int, int, int]]:
    """(category, on the container disk before, after, in the store after) per category, largest first."""
    rows: dict[str, list[int]] = {}
    for a in plan.actions:
        cat = a.category or (a.rel.split("/", 1)[0] if "/" in a.rel else "(top level)")
        r = rows.setdefault(cat, [0, 0, 0])
        if a.kind is ActionKind.SKIP and a.size == 0:
            continue
        r[0] += a.size
        leaves = a.removal in (Removal.UNLINK, Removal.RENAMED)     # the quarantine stays until `purge`
        if not leaves:
            r[1] += a.size
        if a.kind in (ActionKind.MOVE, ActionKind.COPY, ActionKind.LINK):
            r[2] += a.size
    return sorted(((c, *v) for c, v in rows.items() if any(v)), key=lambda t: (-t[1], t[0]))


def chart(rows: Sequence[tuple[str, int, int, int]]) -> str:
    """Three bars per category (CSS widths: the chart reflows from a desktop to a phone)."""
    if not rows:
        return ""
    top = max(max(r[1:]) for r in rows) or 1
    out = ['<div class="chart" role="img" aria-label="bytes per category, before and after">']
    for cat, *vals in rows:
        bars = "".join(
            f'<div class="bar"><i class="{cls}" style="width:{max(0.4 if v else 0, 100 * v / top):.1f}%"></i>'
            f'<small>{esc(report.human(v)) if v else ""}</small></div>'
            for cls, v in zip(("b0", "b1", "b2"), vals))
        out.append(f'<div class="row"><span class="lab">{esc(cat)}</span><div class="bars">{bars}</div></div>')
    out.append("</div>")
    return "".join(out)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], num: Sequence[int] = (), narrow_hide: Sequence[int] = ()) -> str:
    """A table that reads as rows of labelled lines on a phone (CSS only: each cell names its column)."""
    def cell(tag: str, i: int, v: str) -> str:
        cls = " ".join(c for c in ("num" if i in num else "", "hide-narrow" if i in narrow_hide else "") if c)
        label = f' data-label="{esc(headers[i])}"' if tag == "td" and i < len(headers) and headers[i] else ""
        return f'<{tag}{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}{label}>{v}</{tag}>'
    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _duplicates(plan: Plan) -> list[tuple[str, list[Action]]]:
    groups: dict[str, list[Action]] = {}
    for a in plan.actions:
        if a.kind in (ActionKind.SAME_CONTENT, ActionKind.ALREADY_THERE) and a.stored:
            groups.setdefault(a.stored, []).append(a)
    return sorted(groups.items(), key=lambda kv: (-sum(a.size for a in kv[1]), kv[0]))


def _diff(text: str) -> str:
    out = []
    for line in text.splitlines():
        cls = "add" if line.startswith("+") and not line.startswith("+++") else \
              "del" if line.startswith("-") and not line.startswith("---") else ""
        out.append(f'<span class="{cls}">{esc(line)}</span>' if cls else esc(line))
    return "<pre>" + "\n".join(out) + "</pre>"


STATUS = {"ok": ("ok", "loads"), "changes": ("warn", "changes"), "missing": ("bad", "missing")}


def heading(done: Mapping | None) -> tuple[str, str]:
    """(the page's <title>, its <h1>): what the page is. A plan (done None) is a dry run that changed
    nothing; a run's page says what the run did (rolled_back marks it once a rollback undid it)."""
    if done is None:
        return "comfy-migrate dry run: the plan", "Dry run: the plan (nothing has changed yet)"
    return f"comfy-migrate run {done['run']}: the result", f"Run {done['run']}: what it did"


ROLLED_BACK = '<p class="bad rolled"><b>Rolled back</b>'


def rolled_back(page: str, run_id: str, summary: str) -> str:
    """A run's page once a rollback undid the run: its title and heading say so and a banner names what
    the rollback did; the rest stays as the run left it (what it had done). Marked once."""
    if ROLLED_BACK in page:
        return page
    old_title, old_h1 = heading({"run": run_id})
    title = f"comfy-migrate run {run_id}: rolled back"
    h1 = f"Run {run_id}: rolled back (below: what it had done)"
    banner = f"{ROLLED_BACK}: {prose(summary)}. The numbers below are what the run did before it was undone.</p>"
    page = page.replace(f"<title>{esc(old_title)}</title>", f"<title>{esc(title)}</title>", 1)
    return page.replace(f"<h1>{esc(old_h1)}</h1>", f"<h1>{esc(h1)}</h1>{banner}", 1)


def _cards(plan: Plan, done: Mapping | None) -> list:
    """The page's big numbers: the plan's (what a run would do), or the run's (what its terminal printed)."""
    t = report.totals(plan)
    o = report.outcome(plan)
    if done is None:         # the plan: what a run would do
        cards = [
            (report.human(o["reach_bytes"]), f"reach the store ({o['reach_files']} model files)"),
            (report.human(t["dedup_saves_bytes"]), "saved by deduplication"),
            (report.human(t["copy_bytes"]), "to copy"),
            (str(o["conflict_files"]), f"conflicts: stay where they are ({report.human(o['conflict_bytes'])})"),
            (str(sum(1 for f in plan.findings if f.blocks)), "files held back by the audit"),
        ]
        if o["quarantine_bytes"]:
            cards.append((report.human(o["quarantine_bytes"]),
                          "go to quarantine: still on the source disk until `comfy-migrate purge` frees them"))
    else:                    # the run: the numbers its terminal printed
        cards = [
            (str(done["placed"]), "files placed in the store"),
            (report.human(done["copied_bytes"]), "copied"),
            (str(done["removed"]), "source names removed"),
            (str(done["stayed"]), "model files stayed where they are (conflicts, held back)"),
            (report.human(done["quarantine_bytes"]),
             f"in quarantine: `comfy-migrate purge {done['run']}` frees it" if done["quarantine_bytes"]
             else "in quarantine"),
        ]
    if plan.free_bytes is not None:
        cards.append((report.human(plan.free_bytes), "free in the store: " + ("fits" if plan.fits else "DOES NOT FIT")))
    return cards


def _names_section(plan: Plan, name_changes: Sequence[Mapping] | None, target: str) -> list:
    """Names whose model changes, and the conflicts that stay."""
    s: list = []
    s.append("<h2>Names whose model changes</h2>")
    conflicts = [a for a in plan.actions if a.kind is ActionKind.CONFLICT]
    if name_changes:
        s.append(_table(["category", "name", "before", "after", "why"], [
            [esc(c.get("category")), f'<span class="path">{esc(c.get("name"))}</span>',
             f'<span class="path">{esc(_side(plan, c.get("before")))}</span>',
             f'<span class="path">{esc(_side(plan, c.get("after")))}</span>' if c.get("after")
             else "<i>no longer loads</i>", prose(c.get("reason", ""))] for c in name_changes], narrow_hide=()))
    elif name_changes is not None:
        s.append('<p class="ok">None: after a restart every model name loads the bytes it loads now.</p>')
    if conflicts:
        s.append(f"<p>{len(conflicts)} conflict(s): the store holds other content under the same name; "
                 "the pod's file stays where it is.</p>")
        s.append(_table(["name", "pod's file", "store's file"], [
            [f'<span class="path">{esc(a.rel)}</span>', esc(report.human(a.size)),
             f'<span class="path">{esc(_rel(a.dst, target))}</span>'] for a in conflicts], num=(1,)))
    return s


def _duplicates_section(plan: Plan, sha256: Mapping[str, str], target: str) -> list:
    """Contents stored once for several names."""
    s: list = []
    dups = _duplicates(plan)
    s.append(f"<h2>Duplicates ({len(dups)} group(s))</h2>")
    if dups:
        rows = []
        for stored, acts in dups:
            names = "<br>".join(f'<span class="path">{esc(src_name(plan, a))}</span>' for a in acts)
            short = next((autov2(sha256[a.digest]) for a in acts if a.digest in sha256), None)
            rows.append([f'<span class="path">{esc(_rel(stored, target))}</span>'
                         + (f' <code class="h">AutoV2 {esc(short)}</code>' if short else ""), names,
                         esc(report.human(sum(a.size for a in acts)))])
        s.append(_table(["kept once in the store", "names that share it", "saved"], rows, num=(2,)))
    else:
        s.append("<p>No file's content is stored twice.</p>")
    return s


def _audit_section(plan: Plan) -> list:
    """The audit's findings."""
    s: list = []
    s.append(f"<h2>Audit ({len(plan.findings)} finding(s))</h2>")
    if plan.findings:
        sev = {"broken": "bad", "suspect": "warn", "notice": "ok"}
        s.append(_table(["", "file", "what", "fix"], [
            [f'<span class="tag {sev.get(f.severity, "warn")}">{esc(f.severity)}</span>',
             f'<span class="path">{esc(src_rel(plan, f.path))}</span>', prose(f"{f.kind}: {f.message}"), prose(f.fix)]
            for f in sorted(plan.findings, key=lambda f: (report.SEVERITY_ORDER.get(f.severity, 9), f.path))]))
    else:
        s.append('<p class="ok">Every model file looks whole.</p>')
    return s


def _workflows_section(workflows: Mapping | None) -> list:
    """Each saved workflow's models, the unused and template-named lists, and how they were made."""
    s: list = []
    s.append("<h2>Workflows</h2>")
    if workflows is None:
        s.append("<p>No ComfyUI folder given: its saved workflows were not read.</p>")
    else:
        if not workflows["workflows"]:
            s.append("<p>No saved workflows (ComfyUI saves them under <code>user/&lt;user&gt;/workflows/</code>).</p>")
        for w in workflows["workflows"]:
            s.append(f'<h3 class="path">{esc(w["path"].split("/user/", 1)[-1])}</h3>')
            if w["format"] == "unreadable":
                s.append(f'<p class="bad">unreadable: {esc(w["error"])}</p>')
                continue
            if w["error"]:
                s.append(f'<p class="warn">read in part: {esc(w["error"])}</p>')
            s.append(_table(["", "category", "model", "AutoV2", "note"], [
                [f'<span class="tag {STATUS[m["status"]][0]}">{STATUS[m["status"]][1]}</span>', esc(m["category"] or "?"),
                 f'<span class="path">{esc(m["name"])}</span>',
                 f'<code class="h">{esc(m["autov2"])}</code>' if m.get("autov2") else "-", prose(m["note"])] for m in w["models"]],
                narrow_hide=(1,)))
        if workflows["missing"]:
            s.append(f'<p class="bad">{len(workflows["missing"])} model(s) a workflow needs that this pod lacks.</p>')
        if any(w["models"] for w in workflows["workflows"]):
            s.append('<p class="sub">AutoV2: the first 10 hex digits of the model\'s SHA-256 (what A1111, Forge and '
                     'Civitai show), where a read already computed it; - where none has yet.</p>')
        if workflows["unused"]:
            s.append(f'<p>{len(workflows["unused"])} model(s) nothing names: '
                     f'{esc(report.human(workflows["unused_bytes"]))}, about '
                     f'${workflows["unused_cost_per_month"]:.2f} a month at ${workflows["price_per_gb_month"]}/GB-month.</p>')
            s.append("<details><summary>list them</summary>" + _table(["size", "$/month", "category", "name"], [
                [esc(report.human(u["size"])) + ("" if u.get("frees", u["size"]) == u["size"] else " (shared, frees 0)"),
                 f'{u["cost_per_month"]:.2f}', esc(u["category"]),
                 f'<span class="path">{esc(u["name"])}</span>'] for u in workflows["unused"]], num=(0, 1)) + "</details>")
        if workflows.get("templated"):
            s.append(f'<p>{len(workflows["templated"])} model(s) named only by a template, a custom-node example '
                     "workflow or a subgraph blueprint: not unused (they load them).</p>")
            s.append("<details><summary>list them</summary>" + _table(["size", "category", "name", "named by"], [
                [esc(report.human(t["size"])), esc(t["category"]), f'<span class="path">{esc(t["name"])}</span>',
                 f'<span class="path">{esc(report.template_name(t))}</span>'] for t in workflows["templated"]],
                num=(0,), narrow_hide=(1,)) + "</details>")
        if workflows.get("sources") or workflows.get("unused_rule"):
            s.append("<h3>How the unused list was made</h3><ul>")
            for src in workflows.get("sources", ()):
                bad = f', {len(src["unreadable"])} unreadable' if src.get("unreadable") else ""
                s.append(f'<li>{esc(src["label"])}: <b>{src["workflows"]}</b>{esc(bad)} '
                         f'<span class="path">({esc(src["where"])})</span></li>')
            s.append("</ul>")
            if workflows.get("unused_rule"):
                s.append(f'<p class="sub">{prose(workflows["unused_rule"])}.</p>')
    return s


def _steps_section(plan: Plan, sha256: Mapping[str, str], target: str) -> list:
    """Every step of the plan, folded."""
    s: list = []
    s.append(f"<h2>Every step ({len(plan.actions)})</h2><details><summary>show the table</summary>")
    s.append(_table(["action", "file", "in the store", "size", "AutoV2", "note"], [
        [esc(a.kind.value), f'<span class="path">{esc(a.rel)}</span>',
         f'<span class="path">{esc(_rel(a.dst, target))}</span>' if a.dst else "", esc(report.human(a.size)),
         f'<code class="h">{esc(autov2(sha256.get(a.digest)))}</code>' if a.digest in sha256 else "", prose(a.reason)]
        for a in plan.actions], num=(3,), narrow_hide=(2, 4)))
    return s


def render(plan: Plan, workflows: Mapping | None = None, title: str | None = None,
           made: str = "", name_changes: Sequence[Mapping] | None = (), done: Mapping | None = None,
           sha256: Mapping[str, str] | None = None) -> str:
    """The whole page. workflows: workflows.workflow_doc (None: no ComfyUI folder to read them from).
    sha256: xxh3 digest -> SHA-256 of that content, where a read computed it: each model's AutoV2 (the
    first 10 hex digits, upper case, what A1111/Forge and Civitai show) stands beside it.
    name_changes: the plan's name changes as JSON documents (category, name, before, after, reason).
    done: after a run, the numbers its terminal printed (run, placed, copied_bytes, removed, stayed,
    quarantine_bytes); None: the plan's own (report.outcome)."""
    page_title, h1 = heading(done)
    if title is not None:
        page_title = h1 = title
    target = plan.target
    sha256 = sha256 or {}
    cards = _cards(plan, done)
    s = [f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
         f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(page_title)}</title>'
         f"<style>{CSS}</style></head><body><main>"]
    s.append(f"<h1>{esc(h1)}</h1>")
    s.append(f'<p class="sub">{esc(", ".join(plan.sources))} &rarr; <b>{esc(target)}</b> '
             f"(mode {esc(plan.policy.mode.value)}){' &middot; ' + prose(made) if made else ''}</p>")
    s.append('<div class="cards">' + "".join(f"<div class=card><b>{esc(v)}</b><span>{prose(k)}</span></div>"
                                             for v, k in cards) + "</div>")
    for w in plan.warnings:
        s.append(f'<p class="warn">&#9888; {prose(w)}</p>')

    s.append("<h2>Where the bytes go</h2>")
    s.append('<p class="legend"><span><i class="b0"></i>container disk before</span>'
             '<span><i class="b1"></i>container disk after (the quarantine until <code>purge</code>)</span><span><i class="b2"></i>newly in the store</span></p>')
    s.append(chart(category_bytes(plan)))

    s += _names_section(plan, name_changes, target)

    s += _duplicates_section(plan, sha256, target)

    s += _audit_section(plan)

    if plan.custom_folders:
        s.append("<h2>Custom-node folders</h2><ul>")
        s.extend(f"<li><code>{esc(c.name)}</code>: {prose(c.note)}</li>" for c in plan.custom_folders)
        s.append("</ul>")

    s += _workflows_section(workflows)

    s.append("<h2>extra_model_paths.yaml</h2>")
    diff = report.yaml_diff(plan)
    s.append(_diff(diff) if diff else f"<p>{esc(plan.yaml_path or 'no YAML given')}: no change.</p>")

    s += _steps_section(plan, sha256, target)
    s.append("</details></main></body></html>\n")
    return "".join(s)
