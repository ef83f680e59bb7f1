"""A short run of scripts/torture.py (every fault kind, few trials each, two fleet trials, three of each stale
kind): exit 0 and `0 failed`."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_torture_short():
    kinds = ("crash-run-step,crash-rollback-step,sigkill-random,enospc,eio/eperm,changed-under,lock,trash,"
             "hostile,fleet,audit,stale")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "torture.py"), "--trials", "10", "--seed", "1",
                        "--only", kinds],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    out = p.stdout.decode("utf-8", "replace")
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert p.returncode == 0 and last.endswith(" 0 failed"), out[-3000:]
