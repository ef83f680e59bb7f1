"""PURE: which file ComfyUI loads for every model name, before and after a plan (issue 13).

A migration is correct when ComfyUI, restarted, loads for every name exactly the bytes it loaded
before. `first_holder` is ComfyUI's rule (folder_paths.get_full_path): the first folder in search
order holding a file, or a symlink to one, at the name's relative path. verify and audit call it
on the disk; the plan calls it on a `View`: the scanned trees (and the files gathered at the
user's own folders), before the plan and as the plan leaves them, so a dry run can say which
names would load other bytes (`name_changes`) without touching the disk.
"""
from __future__ import annotations

import bisect
import posixpath
from collections import namedtuple
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from migrate.core import comfy

# Categories whose entries are not files ComfyUI loads by name.
NOT_BY_NAME = frozenset({"diffusers", "custom_nodes"})


class Node(namedtuple("Node", [
    "kind",                       # str: "file" or "link"
    "size",                       # int
    "digest",                     # str | None: None, not read (sizes differ, or held back)
    "to",                         # str | None: a link's text
])):
    """One entry of a tree as the resolver sees it."""

    __slots__ = ()


class NameChange(namedtuple("NameChange", [
    "category",                   # str
    "name",                       # str: as workflows name it, relative to the category folder
    "before",                     # str: the file ComfyUI loads today
    "before_digest",              # str | None
    "after",                      # str | None: the file it loads after the run; None: none
    "after_digest",               # str | None
    "reason",                     # str: a short phrase, the group it is shown under
])):
    """A name whose bytes the plan would change, or that would no longer load."""

    __slots__ = ()


def first_holder(folders: Iterable[str], name: str, is_file: Callable[[str], bool]) -> Optional[str]:
    """ComfyUI's get_full_path: the first folder holding a file (or a symlink to one) at `name`;
    a dangling symlink is skipped. The one rule, for the disk (os.path.isfile) and for a View."""
    name = posixpath.relpath(posixpath.join("/", name), "/")
    for f in folders:
        p = posixpath.join(f, name)
        if is_file(p):
            return p
    return None


def _under(p: str, root: str) -> bool:
    return p == root or p.startswith(root.rstrip("/") + "/")


class View:
    """Trees as the resolver sees them: path -> Node, for the scanned roots (complete: a path below
    one that is not here does not exist) and for single files found elsewhere (gathered).

    aliases: (real path, path as scanned) of each scanned root, so that folders of a YAML read
    from real paths and absolute link texts meet the scanned paths; and of each symlinked folder
    of the store whose content the trees list under the store's name (facts.through_links): such
    a folder's link is not followed, a path behind it (a file run places there) stays in the store.
    The longest alias matching a path applies.

    folded: roots on a case-insensitive filesystem (the store on exFAT): a name below one finds a
    file of any spelling that folds onto it (storerules.fold), as the filesystem's lookup does.
    """

    def __init__(self, tree: Mapping[str, Node], roots: Sequence[str], aliases: Sequence[Tuple[str, str]] = (),
                 folded: Sequence[str] = ()):
        self.tree = dict(tree)
        self.folded = tuple(r.rstrip("/") for r in folded)
        self._fold_index: Optional[Dict[str, str]] = None
        self.roots = [r.rstrip("/") or "/" for r in roots]
        self.aliases = [(r.rstrip("/"), g.rstrip("/")) for r, g in aliases if r.rstrip("/") != g.rstrip("/")]
        self._by_real = sorted(self.aliases, key=lambda a: -len(a[0]))      # the longest match first
        self._by_given = sorted(self.aliases, key=lambda a: -len(a[1]))
        self._entered = {g for _, g in self.aliases}
        self._keys: Optional[List[str]] = None

    def replace(self, changes: Mapping[str, Optional[Node]]) -> "View":
        tree = dict(self.tree)
        for p, n in changes.items():
            if n is None:
                tree.pop(p, None)
            else:
                tree[p] = n
        return View(tree, self.roots, self.aliases, self.folded)

    def canon(self, p: str) -> str:
        p = posixpath.normpath(p)
        for real, given in self._by_real:
            if _under(p, real):
                return given + p[len(real):]
        return p

    def real(self, p: str) -> str:
        for real, given in self._by_given:
            if _under(p, given):
                return real + p[len(given):]
        return p

    def final(self, p: str, depth: int = 0) -> Optional[str]:
        """`p` with every symlink on the way followed (as far as the trees know); None for a loop."""
        if depth > 40:
            return None
        p = self.canon(p)
        parts = p.split("/")
        for i in range(1, len(parts)):
            cur = "/".join(parts[:i + 1])
            n = self.tree.get(cur)
            if n is not None and n.kind == "link" and cur not in self._entered:
                # A relative link is read from the real folder holding it (the root may be a symlink).
                to = posixpath.join(posixpath.dirname(self.real(cur)), n.to or "")
                rest = "/".join(parts[i + 1:])
                return self.final(posixpath.join(to, rest) if rest else to, depth + 1)
        return p

    def node(self, p: str) -> Optional[Node]:
        f = self.final(p)
        n = self.tree.get(f) if f is not None else None
        if n is None and f is not None and self.folded:
            n = self.tree.get(self._spelled(f) or "")
        return n if n is not None and n.kind == "file" else None

    def _spelled(self, p: str) -> Optional[str]:
        """The path the trees hold for `p` below a case-insensitive root, in any spelling."""
        from migrate.core.storerules import fold
        root = next((r for r in self.folded if _under(p, r)), None)
        if root is None:
            return None
        if self._fold_index is None:
            self._fold_index = {}
            for q in sorted(self.tree):
                r = next((r for r in self.folded if _under(q, r)), None)
                if r is not None:
                    self._fold_index.setdefault(r + fold(q[len(r):]), q)
        return self._fold_index.get(root + fold(p[len(root):]))

    def is_file(self, p: str) -> bool:
        return self.node(p) is not None

    def below(self, folder: str) -> List[str]:
        """Paths in the trees below `folder` (sorted)."""
        if self._keys is None:
            self._keys = sorted(self.tree)
        prefix = folder.rstrip("/") + "/"
        i = bisect.bisect_left(self._keys, prefix)
        out = []
        while i < len(self._keys) and self._keys[i].startswith(prefix):
            out.append(self._keys[i])
            i += 1
        return out

    def listed(self, folder: str) -> List[str]:
        """The names below `folder` as ComfyUI's walk (os.walk, followlinks=True) lists them: a
        symlinked folder on the way, or the folder itself, is followed (as far as the trees know;
        a loop is not)."""
        out: List[str] = []

        def walk(at: str, prefix: str, seen: Tuple[str, ...]) -> None:
            if at in seen or len(seen) > 40:
                return
            for p in self.below(at):
                name = prefix + p[len(at.rstrip("/")) + 1:]
                out.append(name)
                n = self.tree[p]
                if n.kind == "link" and p not in self._entered:
                    end = self.final(p)
                    if end is not None and end not in self.tree:     # a folder (or nothing the trees hold)
                        walk(end, name + "/", seen + (at,))

        start = self.final(folder)
        if start is not None:
            walk(start, "", ())
        return out


def loads(order: Mapping[str, Sequence[str]], view: View) -> Dict[Tuple[str, str], str]:
    """(category, name) -> the file ComfyUI loads (symlinks followed), for every name listed in
    the view's trees under a folder of the category (View.listed; by ComfyUI's extension filter)."""
    out: Dict[Tuple[str, str], str] = {}
    for cat, folders in order.items():
        if cat in NOT_BY_NAME:
            continue
        folders = [view.canon(f) for f in folders]
        names: Set[str] = set()
        for f in folders:
            for name in view.listed(f):
                if ".git" not in name.split("/") and comfy.lists_extension(cat, name):
                    names.add(name)
        for name in sorted(names):
            got = first_holder(folders, name, view.is_file)
            if got is not None:
                got = view.final(got) or got
                out[(cat, name)] = got if got in view.tree or not view.folded else view._spelled(got) or got
    return out


def same_bytes(a: Optional[Node], b: Optional[Node]) -> bool:
    """Known to hold the same bytes: same size and digest (two empty files are equal)."""
    if a is None or b is None or a.size != b.size:
        return False
    return a.size == 0 or (a.digest is not None and a.digest == b.digest)


def compare(before: Mapping[Tuple[str, str], str], after: Mapping[Tuple[str, str], str], view_before: View,
            view_after: View, why: Callable[[str, str, str, Optional[str]], str]) -> List[NameChange]:
    """Every name that loads before and loads other bytes (or nothing) after. why(category, name,
    before path, after path) gives the reason."""
    out = []
    for (cat, name), b in sorted(before.items()):
        a = after.get((cat, name))
        nb = view_before.tree.get(b)
        na = view_after.tree.get(a) if a is not None else None
        if a == b and na is nb:
            continue                    # the very file, untouched
        if a is not None and same_bytes(nb, na):
            continue
        out.append(NameChange(cat, name, b, nb.digest if nb else None, a, na.digest if na else None,
                              why(cat, name, b, a)))
    return out
