"""A hardlinked file whose other names the scan cannot see stays on the pod (issue 20).

mergerfs (inodes from path hashes) shows the two names of one file with two inode numbers while
st_nlink says 2: the scan cannot tell they are one file, a move would treat them as two, and a
rollback would bring them back as two files (the link lost). The probe says whether hardlinked
names show one inode number (FsFacts.link_inode); where they do not, such a file stays.
"""
from __future__ import annotations

from test_plan import SAME_FS, SRC, plan_of, rec

from migrate.disk import fsops
from migrate.core import storerules
from migrate.core.model import UNPROBED, ActionKind, Mode, Policy
from migrate.views.report import warning_lines

MERGERFS = UNPROBED._replace(fstype="fuse.mergerfs", stable_inode=False, link_inode=False)
PROBE = SAME_FS._replace(fs=MERGERFS)


def pair_and_one():
    """style and second_name: two names of one file, seen with two inode numbers; other: one name."""
    return (rec("loras/style.safetensors", "d1", ino=11)._replace(nlink=2),
            rec("loras/second_name.safetensors", "d1", ino=12)._replace(nlink=2),
            rec("loras/other.safetensors", "d2", ino=13))


def stays(plan):
    return {a.rel: storerules.stay_kind(a) for a in plan.actions if a.kind is ActionKind.CONFLICT}


def test_a_pair_whose_names_show_other_inodes_stays_and_the_plan_says_why_in_one_line():
    plan = plan_of(*pair_and_one(), probe=PROBE, target_fs=MERGERFS)
    assert stays(plan) == {"loras/style.safetensors": "hidden-hardlink",
                           "loras/second_name.safetensors": "hidden-hardlink"}
    assert {a.rel: a.kind for a in plan.actions}["loras/other.safetensors"] is ActionKind.MOVE
    lines = [w for w in warning_lines(plan) if "hardlinked" in w]
    assert len(lines) == 1 and "2 hardlinked file(s)" in lines[0] and "second_name" in lines[0]
    why = {a.rel: a.reason for a in plan.actions}["loras/style.safetensors"]
    assert "fuse.mergerfs shows hardlinked names with other inode numbers" in why


def test_where_the_names_share_an_inode_or_nothing_is_removed_the_pair_is_placed_as_before():
    one_ino = (rec("loras/style.safetensors", "d1", ino=11)._replace(nlink=2),
               rec("loras/second_name.safetensors", "d1", ino=11)._replace(nlink=2))
    # a filesystem that shows one inode number by both names: the scan sees the pair
    assert stays(plan_of(*one_ino, probe=SAME_FS)) == {}
    # a name outside the models folder (nlink 3, two found) on such a filesystem: moved as before
    assert stays(plan_of(*(r._replace(nlink=3) for r in one_ino), probe=SAME_FS)) == {}
    # copy mode removes nothing: a copy is undone exactly
    assert stays(plan_of(*pair_and_one(), probe=PROBE, target_fs=MERGERFS, policy=Policy(mode=Mode.COPY))) == {}


def test_the_probe_finds_that_hardlinked_names_show_one_inode_here(tmp_path):
    fs = fsops.probe_fs(str(tmp_path))
    assert fs.hardlink and fs.link_inode
    assert list(tmp_path.iterdir()) == []
