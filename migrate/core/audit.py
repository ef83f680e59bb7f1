"""PURE: is this model file whole, and does ComfyUI see it? Facts in, findings out.

Two kinds of checks:
- content checks over what the shell read of one file: its name, its size, its first bytes (for a
  safetensors file the whole JSON header) and its last bytes. No check needs more: a broken model
  is found without a second full read, and the verdict is cached by (dev, ino, size, mtime).
- tree checks over a scan's records: names another file shadows under ComfyUI's search order,
  extensions ComfyUI does not list in a category, dangling symlinks, interrupted downloads.

Severities: "broken" (ComfyUI cannot load it), "suspect" (probably not what the user thinks it
is), "notice" (worth knowing, harmless). broken and suspect files are kept out of the store by
`plan`/`run` unless --include-suspect, and make `audit` exit 1.

The safetensors rules are those of the safetensors library that ComfyUI loads with: an 8-byte
little-endian header length (at most 100 MB), a UTF-8 JSON object of tensors, each with dtype,
shape and data_offsets; the tensors, sorted by offset, must tile the data section from 0 with no
gap or overlap, each exactly shape x dtype bytes long, and the data section must end exactly at
the end of the file (a shorter file is a truncated download, a longer one is refused too).
"""
from __future__ import annotations

import json
import posixpath
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from migrate.core import comfy
from migrate.core.model import FileRecord, Finding, ScanResult, Status

CHECKS_VERSION = 1               # bump when a check changes: cached verdicts of older checks are redone
HEAD = 16 << 10                  # bytes read from the start of each model file (more for a long header)
TAIL = (64 << 10) + 22           # bytes read from its end (a zip's end record and longest comment)
MAX_HEADER = 100_000_000         # safetensors refuses longer headers

SAFETENSORS = (".safetensors", ".sft")
TORCH = (".ckpt", ".pt", ".pth", ".pt2")        # torch.save: a zip archive, or a legacy pickle
OTHER = (".bin", ".pkl", ".gguf")
SNIFFED = SAFETENSORS + TORCH + OTHER           # files whose content is checked

# Extensions a custom node lists from a core category (ComfyUI-GGUF: unet_gguf, clip_gguf).
CUSTOM_NODE_EXTENSIONS = {"diffusion_models": (".gguf",), "text_encoders": (".gguf",)}
# Files that commonly sit beside models (previews, model cards, metadata of model managers).
COMPANIONS = (".json", ".txt", ".md", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".info",
              ".sha256", ".yaml", ".yml", ".html", ".civitai.info")

# safetensors dtypes and their size in bits
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
              "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64,
              "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "C64": 64}

LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
ZIP_MAGIC = b"PK\x03\x04"
ZIP_END = b"PK\x05\x06"
GGUF_MAGIC = b"GGUF"

FIX_DOWNLOAD = "download it again (check the URL and access token), or delete it"
FIXES = {
    "empty": "download it again, or delete it",
    "lfs-pointer": "fetch the real file (`git lfs pull` in its repository, or the file's download link), "
                   "or delete it",
    "html-page": FIX_DOWNLOAD,
    "error-response": FIX_DOWNLOAD,
    "text": FIX_DOWNLOAD,
    "truncated": "download it again (resume with the tool that fetched it; compare the size on the model page)",
    "trailing-data": "download it again; compare the size on the model page",
    "bad-header": FIX_DOWNLOAD,
    "wrong-format": "rename it to the extension of its real format",
    "unknown-format": "check where it came from; download it again if it does not load",
    "incomplete-download": "finish the download (resume it) or delete the leftover",
    "leftover-temp": "`comfy-migrate run` finishes the interrupted run, `comfy-migrate rollback` undoes it",
    "dangling-symlink": "point the link at the model again, or delete it",
    "unlisted-extension": "rename it to a listed extension if it is a model, or move it out of the folder",
    "shadowed": "ComfyUI loads the other file: delete one of the two, or rename this one",
    "unreadable": "fix its permissions, then audit again",
}


@dataclass(frozen=True)
class Verdict:
    """The content checks' result for one file: findings (path '' until the shell fills it in) and
    a summary for the JSON output (format, tensor count, dtypes, metadata)."""

    findings: Tuple[Finding, ...] = ()
    summary: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"f": [[f.kind, f.severity, f.message] for f in self.findings],
                           "s": dict(self.summary)}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Verdict":
        doc = json.loads(text)
        return cls(tuple(_finding(k, s, m) for k, s, m in doc["f"]), doc["s"])


def _finding(kind: str, severity: str, message: str, path: str = "") -> Finding:
    return Finding(path=path, kind=kind, severity=severity, message=message, fix=FIXES.get(kind, ""))


def _ext(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def sniffed(name: str) -> bool:
    """Whether this file's content is checked (model extensions only: the head of each is read)."""
    return _ext(name) in SNIFFED


# --- what the shell must read ------------------------------------------------------------------------

def head_needed(name: str, size: int, first: bytes) -> int:
    """How many bytes from the start the content checks need, given the first ones (>= 8 read).

    HEAD, or for a safetensors file with a plausible header length, the whole header.
    """
    want = min(size, HEAD)
    if _ext(name) in SAFETENSORS and len(first) >= 8:
        n = struct.unpack("<Q", first[:8])[0]
        if n <= MAX_HEADER and 8 + n <= size:
            want = max(want, 8 + n)
    return want


def tail_needed(name: str, size: int, head: bytes) -> int:
    """How many bytes from the end the checks need: only zip archives are checked at their end."""
    return min(size, TAIL) if head.startswith(ZIP_MAGIC) and _ext(name) in TORCH + (".bin",) else 0


# --- content checks ----------------------------------------------------------------------------------

def check_content(name: str, size: int, head: bytes, tail: bytes = b"") -> Verdict:
    """All content checks of one file. head: its first bytes (see head_needed); tail: its last."""
    ext = _ext(name)
    if size == 0:
        return Verdict((_finding("empty", "broken", "zero bytes"),), {"format": "empty"})
    if ext in SAFETENSORS and size < 8:
        return Verdict((_finding("truncated", "broken", f"only {size} bytes: too short even for a safetensors "
                                 "header length"),), {"format": "unknown"})
    junk = _junk(ext, size, head)
    if junk is not None:
        return Verdict((junk,), {"format": junk.kind})
    if ext in SAFETENSORS:
        starts_like = len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= MAX_HEADER
        other = None if starts_like else _other_format(head, size)   # a cut header is still safetensors
        if other in ("zip", "pickle", "gguf"):
            return Verdict((_finding("wrong-format", "broken",
                                     f"{other} content under a {ext} name: safetensors cannot read it"),),
                           {"format": other})
        return _check_safetensors(size, head)
    if ext == ".gguf":
        if head[:4] != GGUF_MAGIC:
            return Verdict((_finding("bad-header", "broken", "no GGUF magic at the start"),), {"format": "unknown"})
        return Verdict((), {"format": "gguf"})
    if ext in TORCH:
        fmt = _other_format(head, size)
        if fmt == "safetensors":
            return Verdict((_finding("wrong-format", "suspect", f"safetensors content under a {ext} name: "
                                     f"ComfyUI opens {ext} files with torch.load, which cannot read it"),),
                           {"format": fmt})
        if fmt == "zip":
            return _check_zip(size, tail)
        if fmt == "pickle":
            return Verdict((), {"format": "pickle"})
        return Verdict((_finding("unknown-format", "suspect",
                                 "neither a PyTorch zip archive nor a pickle (unknown format)"),), {"format": "unknown"})
    if ext == ".bin" and head.startswith(ZIP_MAGIC):
        return _check_zip(size, tail)
    return Verdict((), {"format": _other_format(head, size) or "unknown"})


def _other_format(head: bytes, size: int) -> Optional[str]:
    """The format the first bytes show: zip, pickle, gguf, safetensors, or None.

    safetensors first: its header length may begin with the bytes of another magic (a length of
    640 starts with 0x80 0x02, a pickle's); the other magics read as lengths far over the limit.
    """
    if len(head) >= 9 and head[8:9] == b"{":
        n = struct.unpack("<Q", head[:8])[0]
        if n <= MAX_HEADER and 8 + n <= size:
            return "safetensors"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 1 < head[1] <= 5:
        return "pickle"
    if head.startswith(GGUF_MAGIC):
        return "gguf"
    return None


def _junk(ext: str, size: int, head: bytes) -> Optional[Finding]:
    """Something that is not a model at all: an LFS pointer, an HTML page, an error message."""
    if head.startswith(LFS_MAGIC):
        fields = dict(line.split(" ", 1) for line in head.decode("ascii", "replace").splitlines() if " " in line)
        real = fields.get("size", "?").strip()
        return _finding("lfs-pointer", "broken", f"a git-LFS pointer ({size} bytes) standing in for a "
                        f"{real}-byte file, not the model")
    start = head[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body", b"<!--")):
        title = _between(head, b"<title>", b"</title>")
        return _finding("html-page", "broken", "an HTML/XML page saved under a model name"
                        + (f" (title: {title})" if title else ""))
    whole = len(head) == size and size <= HEAD
    if not whole:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if start[:1] in (b"{", b"["):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if doc is not None:
            return _finding("error-response", "broken",
                            f"a JSON document of {size} bytes, not a model: {_snippet(text)}")
    if ext not in (".pkl", ".bin") and all(c in "\t\r\n" or c.isprintable() for c in text):
        # every format of these extensions is binary (.pkl may be a protocol-0 pickle, which is
        # text, and .bin is any format at all: both are spared)
        return _finding("text", "broken", f"a text file of {size} bytes, not a model: {_snippet(text)}")
    return None


def _between(data: bytes, a: bytes, b: bytes) -> str:
    low = data.lower()
    i = low.find(a)
    j = low.find(b, i + len(a)) if i >= 0 else -1
    return _snippet(data[i + len(a):j].decode("utf-8", "replace")) if i >= 0 and j > i else ""


def _snippet(text: str, width: int = 80) -> str:
    one = " ".join(text.split())
    one = "".join(c if c.isprintable() else "?" for c in one)
    return one if len(one) <= width else one[:width - 3] + "..."


def _check_safetensors(size: int, head: bytes) -> Verdict:
    def bad(kind: str, msg: str) -> Verdict:
        return Verdict((_finding(kind, "broken", msg),), {"format": "safetensors"})

    n = struct.unpack("<Q", head[:8])[0]
    if n > MAX_HEADER:
        return bad("bad-header", f"header length {n} is over safetensors' limit of {MAX_HEADER} bytes "
                   "(not a safetensors file)")
    if 8 + n > size:
        return bad("truncated", f"the header alone should take {8 + n} bytes but the file has {size}: "
                   "cut short inside the header (or not a safetensors file)")
    raw = head[8:8 + n]
    if len(raw) < n:
        raise ValueError("check_content needs the whole safetensors header (see head_needed)")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return bad("bad-header", "the header is not UTF-8 text")
    except ValueError as exc:
        return bad("bad-header", f"the header is not valid JSON ({exc})")
    if not isinstance(doc, dict):
        return bad("bad-header", "the header is not a JSON object")
    meta = doc.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        return bad("bad-header", "__metadata__ must map strings to strings")
    spans: List[Tuple[int, int, str]] = []
    dtypes: Dict[str, int] = {}
    notices: List[Finding] = []
    for tname, info in doc.items():
        problem = _tensor_problem(info)
        if problem:
            return bad("bad-header", f"tensor {_snippet(tname, 60)!r}: {problem}")
        start, end = info["data_offsets"]
        bits = DTYPE_BITS.get(info["dtype"])
        count = 1
        for d in info["shape"]:
            count *= d
        if bits is None:
            notices.append(_finding("bad-header", "notice", f"tensor {_snippet(tname, 60)!r}: dtype "
                                    f"{_snippet(info['dtype'], 20)} unknown here (a newer safetensors?)"))
        elif count * bits % 8 or count * bits // 8 != end - start:
            return bad("bad-header", f"tensor {_snippet(tname, 60)!r}: shape {info['shape']} of {info['dtype']} "
                       f"needs {count * bits / 8:g} bytes but its offsets span {end - start}")
        spans.append((start, end, tname))
        dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + 1
    expected = 0
    for start, end, tname in sorted(spans):
        if start != expected:
            what = "a gap" if start > expected else "an overlap"
            return bad("bad-header", f"{what} in the data before tensor {_snippet(tname, 60)!r} "
                       f"(offset {start}, expected {expected})")
        expected = end
    summary = {"format": "safetensors", "tensors": len(spans), "dtypes": dict(sorted(dtypes.items())),
               "metadata": meta is not None, "header_bytes": n}
    data = size - 8 - n
    if expected > data:
        return Verdict((_finding("truncated", "broken", f"{expected - data} bytes missing: the tensors end at "
                                 f"byte {8 + n + expected} but the file has {size}"),), summary)
    if expected < data:
        return Verdict((_finding("trailing-data", "broken", f"{data - expected} bytes after the last tensor "
                                 f"(the tensors end at byte {8 + n + expected} of {size}); "
                                 "safetensors refuses the file"),), summary)
    return Verdict(tuple(notices), summary)


def _tensor_problem(info: object) -> str:
    if not isinstance(info, dict):
        return "not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        return "no dtype"
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        return "shape is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
        return "data_offsets is not [start, end]"
    if offsets[1] < offsets[0]:
        return f"data_offsets end {offsets[1]} before start {offsets[0]}"
    return ""


def _check_zip(size: int, tail: bytes) -> Verdict:
    """A zip archive (torch.save) ends with its end-of-central-directory record; a cut one does not."""
    summary = {"format": "zip"}
    base = size - len(tail)
    i = tail.rfind(ZIP_END)
    loose = None
    while i >= 0:
        if i + 22 <= len(tail):
            cd_size, cd_off, comment = struct.unpack("<IIH", tail[i + 12:i + 22])
            pos = base + i
            consistent = cd_off == 0xFFFFFFFF or cd_size == 0xFFFFFFFF or cd_off + cd_size <= pos
            if consistent and i + 22 + comment == len(tail):
                return Verdict((), summary)
            if consistent and loose is None and (cd_off + cd_size == pos or cd_off == 0xFFFFFFFF):
                loose = i + 22 + comment
        i = tail.rfind(ZIP_END, 0, i)
    if loose is not None and loose < len(tail):
        return Verdict((_finding("trailing-data", "broken",
                                 f"{len(tail) - loose} bytes after the zip archive's end record"),), summary)
    return Verdict((_finding("truncated", "broken", "a zip archive (PyTorch format) without its end record: "
                             "cut short"),), summary)


# --- tree checks -------------------------------------------------------------------------------------

def content_findings(scan: ScanResult, verdicts: Mapping[str, Verdict]) -> List[Finding]:
    """Per-file findings of one scan: content verdicts, empty model files, interrupted downloads."""
    out: List[Finding] = []
    names = {r.rel for r in scan.records}
    for r in scan.records:
        v = verdicts.get(r.path)
        if v is not None:
            out.extend(f._replace(path=r.path) for f in v.findings)
        if r.status is Status.EMPTY and (sniffed(r.rel) or _listed(r)):
            out.append(_finding("empty", "broken", "zero bytes", r.path))
        elif r.status is Status.INCOMPLETE:
            out.append(_finding("incomplete-download", "suspect", "an unfinished download", r.path))
        elif r.status is Status.TEMP:
            out.append(_finding("leftover-temp", "suspect", "a temporary file of an interrupted comfy-migrate "
                                "run", r.path))
        if r.status is Status.MIGRATE and r.rel + ".aria2" in names:
            out.append(_finding("incomplete-download", "suspect", "aria2 is still downloading it (its .aria2 "
                                "control file is beside it)", r.path))
    return out


def _listed(r: FileRecord) -> bool:
    return bool(r.category) and not r.custom and comfy.lists_extension(r.category or "", r.name)


def hold_back(scan: ScanResult, findings: Iterable[Finding]) -> ScanResult:
    """The scan with every file that has a broken or suspect finding marked SUSPECT (not migrated)."""
    first: Dict[str, Finding] = {}
    for f in findings:
        if f.blocks:
            first.setdefault(f.path, f)
    records = tuple(
        r._replace(status=Status.SUSPECT, detail=f"held back, {first[r.path].severity}: {first[r.path].kind}: "
                   f"{first[r.path].message} (--include-suspect migrates it anyway)")
        if r.status is Status.MIGRATE and r.path in first else r
        for r in scan.records)
    return scan._replace(records=records)


def tree_findings(
    scan: ScanResult, order: Mapping[str, Sequence[str]], dangling: Iterable[str],
    loaded_path: Callable[[str, str], Optional[str]], same_file: Callable[[str, str], bool],
    same_content: Callable[[str, str], Optional[bool]] = lambda a, b: None,
) -> List[Finding]:
    """Names ComfyUI resolves elsewhere, extensions it does not list, dangling symlinks.

    order: each category's folders in ComfyUI's search order; loaded_path(category, name): the
    file ComfyUI loads for that name (verify.loaded_path); same_file(a, b): one file under two names;
    same_content(a, b): the two files hold the same bytes (by digest; None: cannot tell).
    """
    out: List[Finding] = []
    dangling = set(dangling)
    for r in scan.records:
        if r.path in dangling:
            out.append(_finding("dangling-symlink", "broken", f"symlink to {r.link_target}, which does not exist",
                                r.path))
            continue
        if not r.category or r.custom or r.status not in (Status.MIGRATE, Status.SYMLINK, Status.SUSPECT):
            continue
        cat = r.category
        if not comfy.lists_extension(cat, r.name):
            if r.status is not Status.SYMLINK:
                unlisted = _unlisted(cat, r.name, r.path)
                if unlisted is not None:
                    out.append(unlisted)
            continue
        folder = posixpath.join(r.root, r.folder)
        if posixpath.normpath(folder) not in [posixpath.normpath(f) for f in order.get(cat, ())]:
            continue          # ComfyUI does not search this folder: nothing shadows it
        winner = loaded_path(cat, r.name)
        if winner is not None and not same_file(winner, r.path):
            # Decided by digest: two different models of one size are common (fp8 variants, LoRAs
            # of one rank); the same content twice (e.g. after --mode copy) is harmless.
            twin = same_content(winner, r.path)
            what = {True: " (the same content: the model twice)",
                    False: " (different content: this file's model is never loaded)",
                    None: ""}[twin]
            out.append(_finding("shadowed", "notice" if twin else "suspect",
                                f"ComfyUI loads {winner} for the name {r.name!r} ({cat}) instead{what}", r.path))
    return out


def _unlisted(cat: str, name: str, path: str) -> Optional[Finding]:
    low = name.lower()
    ext = _ext(name)
    if ext in CUSTOM_NODE_EXTENSIONS.get(cat, ()) or low.endswith(COMPANIONS):
        return None
    exts = comfy.CATEGORIES[cat][1] or ()
    base = posixpath.basename(low)
    model_like = any(m in base[:len(base) - len(ext)] for m in exts if m != ".yaml" and len(m) > 3) or \
        any(len(ext) > 3 and m.startswith(ext) for m in exts)
    listed = ", ".join(sorted(e for e in exts if e)) or "only files without an extension"
    return _finding("unlisted-extension", "suspect" if model_like else "notice",
                    f"ComfyUI does not list {ext or 'extension-less'} files in {cat} (it lists {listed})", path)


# --- sidecars as witnesses: the SHA-256 a model manager or downloader wrote beside the model ---------

SIDECAR_SUFFIXES = (".sha256", ".civitai.info", ".metadata.json")
SIDECAR_MAX = 16 << 20
FIXES["sidecar-mismatch"] = ("download it again from where its sidecar says it came from; if you replaced the "
                             "file on purpose, delete or refresh the stale sidecar")


def sidecar_names(base: str) -> List[str]:
    """Names a sidecar of the model file `base` may have: `<stem><suffix>` (Civitai Helper, Lora
    Manager) or `<base><suffix>` (`model.safetensors.sha256`)."""
    stem = base.rsplit(".", 1)[0] if "." in base else base
    out: List[str] = []
    for suffix in SIDECAR_SUFFIXES:
        for n in (stem + suffix, base + suffix):
            if n not in out and n != base:
                out.append(n)
    return out


def _hex64(v: object) -> Optional[str]:
    if isinstance(v, str):
        v = v.strip().lower()
        if v.startswith("0x"):
            v = v[2:]
        if len(v) == 64 and all(c in "0123456789abcdef" for c in v):
            return v
    return None


def sidecar_sha256(sidecar: str, model_base: str, data: bytes) -> List[str]:
    """The SHA-256 digests (lower-case hex) a sidecar names for the model `model_base` (pure); [] when
    it names none. `.sha256`: its first word (sha256sum's line, or the bare hex); `.civitai.info`:
    `files[].hashes.SHA256`, the entry of the model's own name if there is one, else every entry's;
    `.metadata.json`: its `sha256`."""
    try:
        if sidecar.endswith(".sha256"):
            words = data.decode("utf-8", "replace").split()
            got = _hex64(words[0].lstrip("\\")) if words else None
            return [got] if got else []
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(doc, dict):
        return []
    if sidecar.endswith(".metadata.json"):
        got = _hex64(doc.get("sha256"))
        return [got] if got else []
    files = [f for f in doc.get("files") or [] if isinstance(f, dict)] if isinstance(doc.get("files"), list) else []
    own = [f for f in files if f.get("name") == model_base]
    out = []
    for f in own or files:
        hashes = f.get("hashes")
        got = _hex64(hashes.get("SHA256")) if isinstance(hashes, dict) else None
        if got and got not in out:
            out.append(got)
    return out


def sidecar_finding(path: str, witnesses: Sequence[Tuple[str, List[str]]], sha256: str) -> Optional[Finding]:
    """A mismatch between the model's bytes (their SHA-256) and what its sidecars name (pure); None
    when every sidecar that names a digest names this one."""
    for sidecar, named in witnesses:
        if named and sha256 not in named:
            return Finding(path, "sidecar-mismatch", "suspect",
                           f"the download differs from the file its metadata describes: {posixpath.basename(sidecar)} "
                           f"names SHA-256 {named[0][:12]}..., the bytes have {sha256[:12]}... (a damaged or swapped "
                           "model that header checks cannot see)", FIXES["sidecar-mismatch"])
    return None
