"""Tables and model lists fit 120 columns (unless -v asks for every cell whole), on a 60-model pod with
long names: cells are shortened in the middle, both ends of a name kept (issue 22)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from conftest import run_cli

from fixtures import make_pod

WIDTH = 120
CATS = ["checkpoints", "loras", "diffusion_models", "text_encoders", "vae", "controlnet"]
LONG = "wan2.2_i2v_high_noise_14B_fp8_scaled_lightx2v_distill_" * 2


def long_pod(tmp_path: Path):
    """The demo pod (conflicts, audit findings, workflows) plus 60 models with long names, a long
    custom-node folder, and workflows naming most of them."""
    comfyui_s, target_s = make_pod.build(str(tmp_path / "pod"))
    comfyui, target = Path(comfyui_s), Path(target_s)
    for i in range(60):
        name = f"{CATS[i % len(CATS)]}/some_author/{LONG}{i:02d}.safetensors"
        f = comfyui / "models" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(make_pod.model_bytes(name, 4096, name if i % 10 else "same"))
    custom = comfyui / "models" / ("a_custom_node_folder_with_a_long_name_" * 3)
    custom.mkdir()
    (custom / "model.safetensors").write_bytes(make_pod.model_bytes("model.safetensors", 4096, "custom"))
    return comfyui, target


def test_tables_and_model_lists_fit_120_columns_unless_verbose(tmp_path, cli_env):
    comfyui, target = long_pod(tmp_path)
    both = ["--comfyui", str(comfyui), "--target", str(target)]
    for args in (["scan", "--comfyui", str(comfyui)], ["audit", *both], ["workflows", "--comfyui", str(comfyui)]):
        proc = run_cli(args, cli_env, check=None)
        wide = [line for line in proc.stdout.splitlines() if len(line) > WIDTH and str(tmp_path) not in line
                and not line.startswith("  not migrated: ")]     # left whole: its detail names a link target
        assert not wide, (args[0], wide)
        assert "…" in proc.stdout, args[0]                      # shortened in the middle, not cut at the end
    plan = run_cli(["plan", *both], cli_env).stdout
    table = plan.split("\n\n")[1]                               # the per-file table, after the header lines
    assert table.splitlines()[1].startswith("--") and max(len(line) for line in table.splitlines()) <= WIDTH
    assert "distill_07.safetensors" in plan                    # the end of a long name is kept
    full = run_cli(["plan", *both, "-v"], cli_env).stdout
    assert f"{LONG}07.safetensors" in full                      # -v: every cell whole


# A command to paste is printed whole (shortened it would be wrong): the one thing a line may be wider for.
# It stands on its own line, after a label ("undo with: ") to the line's end, or in backticks; the rest must fit.
PASTE = re.compile(r"(?:^\s*|: |`)((?:comfy-migrate|curl|COPY|RUN|ENV) (?:[^`\n])*)`?")
# A file to open or empty ("report: PATH", "trash: PATH") is named whole, alone after its label.
FILE = re.compile(r"^[a-z ]{1,30}: (/.*)$")


def wide_lines(proc) -> list[str]:
    wide = []
    for line in (proc.stdout + proc.stderr).splitlines():
        command = PASTE.search(line)
        if command:
            assert "\u2026" not in command.group(1), line       # whole: it can be copied as printed
            if len(line) - len(command.group(1)) <= WIDTH:
                continue
        whole = FILE.match(line)
        if whole and os.path.exists(whole.group(1)):
            continue
        if len(line) > WIDTH:
            wide.append(line)
    return wide


def test_every_command_fits_120_columns_on_a_long_name_pod(tmp_path, cli_env):
    comfyui, target = long_pod(tmp_path)
    both = ["--comfyui", str(comfyui), "--target", str(target)]
    store = ["--target", str(target)]
    calls = [
        ["scan", "--comfyui", str(comfyui)],
        ["scan", "--comfyui", str(comfyui), "--duplicates"],
        ["plan", *both],
        ["audit", *both],
        ["workflows", "--comfyui", str(comfyui)],
        ["run", *both, "--dry-run"],
        ["run", *both, "--yes"],
        ["history", *store],
        ["catalogue", *store],
        ["verify", *both],
        ["verify", *both, "--quick"],
        ["plan", *both],
        ["purge", *store, "--comfyui", str(comfyui), "--yes"],
        ["rollback", *both, "--dry-run"],
        ["rollback", *both, "--dry-run", "-v"],
        ["rollback", *both, "--yes"],
        ["attach", *both, "--dry-run"],
        ["attach", *both, "--yes"],
        ["history", *store],
    ]
    found = {}
    for args in calls:
        proc = run_cli(args, cli_env, check=None, timeout=300)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        if "-v" in args:                                         # -v: every path whole, however wide
            assert f"{comfyui}/models/vae/some_author/{LONG}04.safetensors" in proc.stdout
            continue
        if args[0] == "catalogue":                              # data for a program (JSON, CSV): stderr only
            proc.stdout = ""
        if lines := wide_lines(proc):
            found[" ".join(args[:1] + [a for a in args if a.startswith("--") and a not in both + store])] = lines
    assert not found, "\n".join(f"{k}:\n" + "\n".join(f"  [{len(x)}] {x}" for x in v) for k, v in found.items())
