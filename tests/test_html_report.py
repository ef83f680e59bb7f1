"""The dry-run report as one HTML page: self-contained, complete, and rendered by a real browser."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import run_cli, run_leaving_conflicts, snapshot_tree


def no_external_resources(page: str) -> None:
    # nothing the browser would fetch: no src/href/url()/@import to anywhere, no script at all
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", page, re.I)
    assert not re.search(r"url\(|@import", page, re.I)


def visible_text(page: str) -> str:
    """What a reader sees as prose: no style sheet, no tags, entities read; without the YAML diff's <pre>,
    which shows the file's own lines (its managed-section comment names commands in backticks)."""
    import html
    body = re.sub(r"<style>.*?</style>|<pre>.*?</pre>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def test_plan_report_is_one_page_naming_every_workflow_and_missing_model(pod, cli_env, tmp_path):
    out = tmp_path / "plan.html"
    before = snapshot_tree(pod.root)
    proc = run_cli(["plan", *pod.args("--report", out)], cli_env)
    assert f"report: {out}" in proc.stderr
    assert snapshot_tree(pod.root) == before          # the dry run changed nothing but wrote the page
    page = out.read_text()
    no_external_resources(page)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for wf in ("wan22_i2v.json", "wan22_s2v_api.json"):
        assert wf in page
    assert "wan2.2_s2v_lightx2v_4steps_lora.safetensors" in page and ">missing<" in page
    for section in ("Where the bytes go", "Duplicates", "Audit", "Workflows", "extra_model_paths.yaml",
                    "Custom-node folders"):
        assert section in page
    assert "broken_empty.safetensors" in page          # an audit finding, with its fix
    assert '<span class="add">+' in page                # the YAML diff, its added lines marked


def test_report_path_must_be_html_and_writable(pod, cli_env, tmp_path):
    model = pod.models / "vae" / "wan_2.1_vae.safetensors"
    before = model.read_bytes()
    for wrong in (model, ""):
        bad = run_cli(["plan", *pod.args("--report", wrong)], cli_env, check=None)
        assert bad.returncode == 2 and "must be an .html file" in bad.stderr and not bad.stdout
    assert model.read_bytes() == before
    nan = run_cli(["workflows", "--comfyui", pod.comfyui, "--price-per-gb-month", "nan"], cli_env, check=None)
    assert nan.returncode == 2 and "not a number" in nan.stderr
    nowhere = run_cli(["plan", *pod.args("--report", tmp_path / "no" / "such" / "x.html")], cli_env, check=None)
    assert nowhere.returncode == 3 and "cannot write the report" in nowhere.stderr


def test_every_run_writes_its_page_beside_its_log(pod, cli_env):
    doc = json.loads(run_leaving_conflicts(pod.args("--yes", "--format", "json"), cli_env).stdout)
    runs, name = os.path.split(doc["log"])
    assert doc["report"] == os.path.join(os.path.dirname(runs), "reports", name[:-len(".jsonl")] + ".html")
    page = open(doc["report"]).read()
    no_external_resources(page)
    assert doc["run"] in page


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("width", [1280, 400])
def test_report_renders_in_headless_chromium(pod, cli_env, tmp_path, width):
    out = tmp_path / "plan.html"
    run_cli(["plan", *pod.args("--report", out)], cli_env)
    shot = tmp_path / f"shot{width}.png"
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", f"--window-size={width},1600", "--hide-scrollbars",
         "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert "Where the bytes go" in dom.stdout and "wan22_i2v.json" in dom.stdout
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium'}", f"--window-size={width},1600", "--hide-scrollbars",
                    f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == width


def test_run_page_shows_the_numbers_the_terminal_printed(pod, cli_env):
    proc = run_leaving_conflicts(pod.args("--yes"), cli_env)
    m = re.search(r"\nrun (\S+): placed (\d+) files, copied (\S+ \S+), removed (\d+) source names", proc.stdout)
    assert m, proc.stdout
    run_id, placed, copied, removed = m.groups()
    stayed = re.search(r"(\d+) model file\(s\) stayed where they are", proc.stderr).group(1)
    page = open(re.search(r"report: (\S+\.html)", proc.stdout).group(1)).read()
    cards = dict((k, v) for v, k in re.findall(r"<div class=card><b>([^<]*)</b><span>(.*?)</span>", page))
    assert cards["files placed in the store"] == placed and cards["copied"] == copied
    assert cards["source names removed"] == removed
    assert cards["model files stayed where they are (conflicts, held back)"] == stayed
    q = re.search(r"quarantine holds (\S+ \S+); free it with: comfy-migrate purge", proc.stdout)
    assert q, proc.stdout                        # the demo pod moves: its source copies go to quarantine
    assert cards[f"in quarantine: <code>comfy-migrate purge {run_id}</code> frees it"] == q.group(1)
    assert "`" not in visible_text(page)        # the terminal's backticks are <code> on the page


def test_plan_page_counts_no_conflict_as_reaching_the_store_and_names_the_quarantine(pod, cli_env, tmp_path):
    out = tmp_path / "plan.html"
    plan = json.loads(run_cli(["plan", *pod.args("--report", out, "--format", "json")], cli_env).stdout)
    page = out.read_text()
    acts = plan["actions"]
    reach = [a for a in acts if a["action"] not in ("skip", "conflict")]
    conflicts = [a for a in acts if a["action"] == "conflict"]
    assert conflicts
    assert f"reach the store ({len(reach)} model files)" in page
    assert f"<b>{len(conflicts)}</b><span>conflicts: stay where they are" in page
    assert plan["totals"]["quarantine_bytes"] and "until <code>comfy-migrate purge</code> frees them" in page
    # the name-change table: each row's before and after read differently
    compared = 0
    for row in re.findall(r"<tr>(.*?)</tr>", page.split("Names whose model changes", 1)[1].split("<h2>", 1)[0]):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        if len(cells) == 5:
            assert cells[2] != cells[3], row
            compared += 1
    assert compared == len(plan["name_changes"]) > 0


def test_commands_in_the_page_prose_are_code_not_backticks(pod, cli_env, tmp_path):
    # The quarantine card once read "until `comfy-migrate purge` frees them", backticks and all; the
    # terminal keeps them (they mark a command to paste in plain text).
    out = tmp_path / "plan.html"
    proc = run_cli(["plan", *pod.args("--report", out)], cli_env)
    page = out.read_text()
    assert "<span>go to quarantine: still on the source disk until <code>comfy-migrate purge</code> frees them" \
        "</span>" in page
    assert "`" not in visible_text(page)
    assert "go to quarantine (freed by `comfy-migrate purge`)" in proc.stdout      # the terminal's text as it was


def test_plan_page_shows_the_autov2_of_each_model_whose_sha256_is_known(pod, cli_env, tmp_path):
    import hashlib
    out = tmp_path / "plan.html"
    run_cli(["plan", *pod.args("--report", out)], cli_env)
    page = out.read_text()
    doc = json.loads(run_cli(["plan", *pod.args("--format", "json")], cli_env).stdout)
    read = [a for a in doc["actions"] if a["digest"] and os.path.isfile(a["source"])]
    assert len(read) >= 5
    want = {hashlib.sha256(open(a["source"], "rb").read()).hexdigest()[:10].upper() for a in read}
    shown = set(re.findall(r"<code class=\"h\">([0-9A-F]{10})</code>", page))
    assert want <= shown and shown <= want          # each read model's AutoV2 beside it, none invented
    assert "<th>AutoV2</th>" in page or ">AutoV2<" in page


def _heads(page: str) -> tuple:
    return re.search(r"<title>([^<]*)</title>", page).group(1), re.search(r"<h1>([^<]*)</h1>", page).group(1)


def test_each_page_says_what_it_is_a_dry_run_plan_a_run_result_or_a_rolled_back_run(pod, cli_env, tmp_path):
    out = tmp_path / "plan.html"
    run_cli(["plan", *pod.args("--report", out)], cli_env)
    title, h1 = _heads(out.read_text())
    assert "dry run" in title and h1 == "Dry run: the plan (nothing has changed yet)"
    doc = json.loads(run_leaving_conflicts(pod.args("--yes", "--format", "json"), cli_env).stdout)
    title, h1 = _heads(open(doc["report"]).read())
    assert title == f"comfy-migrate run {doc['run']}: the result" and h1 == f"Run {doc['run']}: what it did"
    assert "plan" not in title + h1
    run_cli(["rollback", doc["run"], "--target", pod.target, "--yes"], cli_env)
    page = open(doc["report"]).read()
    title, h1 = _heads(page)
    assert title == f"comfy-migrate run {doc['run']}: rolled back" and "rolled back" in h1
    assert re.search(r"<b>Rolled back</b>: \d+ steps undone, 0 skipped, 0 model file\(s\) not back; nothing of it "
                     r"is left to purge", page)
    assert "what it did" not in h1 and page.count("Rolled back</b>") == 1


def test_tables_read_as_labelled_rows_on_a_phone_and_hashes_never_break(pod, cli_env, tmp_path):
    out = tmp_path / "plan.html"
    run_cli(["plan", *pod.args("--report", out)], cli_env)
    page = out.read_text()
    narrow = re.search(r"@media \(max-width:600px\)\{(.*?)\}\s*@media print", page, re.S).group(1)
    assert ".wrap thead{display:none}" in narrow and "content:attr(data-label)" in narrow
    # every data cell under a named column carries its name, so a stacked row still says what each value is
    assert re.search(r'<td data-label="model"><span class="path">wan2\.2_i2v_high_noise', page)
    assert re.search(r'<td data-label="AutoV2"><code class="h">[0-9A-F]{10}</code>', page)
    assert "code.h{white-space:nowrap}" in page
