"""ComfyUI's own rules: categories, legacy names, and extra_model_paths.yaml (text in, text out).

Mirrors ComfyUI's folder_paths.py and utils/extra_config.py (see shared docs): a YAML is parsed with
yaml.safe_load, every top-level key is a section, `base_path` is expanded and resolved from the
YAML's folder, `is_default` puts a section's folders first (each inserted at the front, so they end
up reversed), every other key is a category whose value must be a string of lines.
"""
from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from functools import lru_cache

from migrate.core.errors import BadInput

MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})

# category -> (default folders under models/ in search order, extensions or None for any)
CATEGORIES: dict[str, tuple[tuple[str, ...], frozenset | None]] = {
    "checkpoints": (("checkpoints",), MODEL_EXTENSIONS),
    "configs": (("configs",), frozenset({".yaml"})),
    "loras": (("loras",), MODEL_EXTENSIONS),
    "vae": (("vae",), MODEL_EXTENSIONS),
    "text_encoders": (("text_encoders", "clip"), MODEL_EXTENSIONS),
    "diffusion_models": (("unet", "diffusion_models"), MODEL_EXTENSIONS),
    "controlnet": (("controlnet", "t2i_adapter"), MODEL_EXTENSIONS),
    "diffusers": (("diffusers",), None),
    "classifiers": (("classifiers",), frozenset({""})),   # folder_paths: {""}, files without an extension
}
for _name in (
    "clip_vision style_models embeddings vae_approx gligen upscale_models latent_upscale_models "
    "hypernetworks photomaker model_patches audio_encoders background_removal frame_interpolation "
    "geometry_estimation optical_flow detection"
).split():
    CATEGORIES[_name] = ((_name,), MODEL_EXTENSIONS)

LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}
# Folders that belong to a category without being named after it.
FOLDER_CATEGORY = {folder: cat for cat, (folders, _) in CATEGORIES.items() for folder in folders}
BUILTIN_CATEGORIES = dict(CATEGORIES)      # the table above: ComfyUI as of late 2026

# category -> the loader inputs of ComfyUI's /object_info that list its names (node, input), as
# ComfyUI 0.3.75 and 0.33 have them; the first is the one a check by hand looks at. A node a version
# lacks is skipped. verify --comfyui-url also finds every other input whose choices are file names of
# a category (verify.find_loaders): this table only matters for a server that lists none of them. vae_approx files show in VAELoader as the pair's family (`taesd` for taesd_encoder.* and
# taesd_decoder.*), diffusers folders (holding model_index.json) in DiffusersLoader; embeddings
# are in no loader (GET /embeddings lists them, without extension).
LOADERS: dict[str, tuple[tuple[str, str], ...]] = {
    "diffusion_models": (("UNETLoader", "unet_name"),),
    "checkpoints": (("CheckpointLoaderSimple", "ckpt_name"), ("CheckpointLoader", "ckpt_name"),
                    ("ImageOnlyCheckpointLoader", "ckpt_name"), ("unCLIPCheckpointLoader", "ckpt_name")),
    "loras": (("LoraLoader", "lora_name"), ("LoraLoaderModelOnly", "lora_name")),
    "vae": (("VAELoader", "vae_name"),),
    "text_encoders": (("CLIPLoader", "clip_name"), ("DualCLIPLoader", "clip_name1"),
                      ("TripleCLIPLoader", "clip_name1"), ("QuadrupleCLIPLoader", "clip_name1")),
    "clip_vision": (("CLIPVisionLoader", "clip_name"),),
    "controlnet": (("ControlNetLoader", "control_net_name"), ("DiffControlNetLoader", "control_net_name")),
    "upscale_models": (("UpscaleModelLoader", "model_name"),),
    "style_models": (("StyleModelLoader", "style_model_name"),),
    "gligen": (("GLIGENLoader", "gligen_name"),),
    "latent_upscale_models": (("LatentUpscaleModelLoader", "model_name"),),
    "hypernetworks": (("HypernetworkLoader", "hypernetwork_name"),),
    "photomaker": (("PhotoMakerLoader", "photomaker_model_name"),),
    "model_patches": (("ModelPatchLoader", "name"),),
    "audio_encoders": (("AudioEncoderLoader", "audio_encoder_name"),),
    "configs": (("CheckpointLoader", "config_name"),),
    "vae_approx": (("VAELoader", "vae_name"),),
    "diffusers": (("DiffusersLoader", "model_path"),),
    # ComfyUI 0.33's new folders (recorded from its /object_info: fixtures/comfyui-0.33.0)
    "background_removal": (("LoadBackgroundRemovalModel", "bg_removal_name"),),
    "frame_interpolation": (("FrameInterpolationModelLoader", "model_name"),),
    "geometry_estimation": (("LoadMoGeModel", "model_name"), ("LoadDA3Model", "model_name")),
    "optical_flow": (("OpticalFlowLoader", "model_name"),),
    "detection": (("LoadMediaPipeFaceLandmarker", "model_name"),),
}
TAESD = re.compile(r"(taesd|taesdxl|taesd3|taef1)_(encoder|decoder)\.")    # VAELoader's test: startswith

# ComfyUI-Manager's key: it saves every download whose save_path is its own (insightface,
# ultralytics/bbox, sams, ...) under folder_names_and_paths["download_model_base"][0][0], else under
# ComfyUI/models (get_model_dir in its manager_server.py). ComfyUI registers it like a category; no
# loader lists it, so name resolution leaves it out.
DOWNLOAD_BASE = "download_model_base"

INCOMPLETE_SUFFIXES = (".part", ".tmp", ".crdownload", ".aria2", ".incomplete", ".download")
MANAGED_SECTION = "comfy_migrate"
BEGIN_MARK = "# >>> comfy-migrate: managed section, written by `comfy-migrate run`; `comfy-migrate rollback` restores the previous file"
END_MARK = "# <<< comfy-migrate"


def category_of(folder: str) -> tuple[str, bool]:
    """Map a folder name under models/ to (canonical category, is_custom)."""
    if folder in FOLDER_CATEGORY:
        return FOLDER_CATEGORY[folder], False
    return folder, True


def canonical_key(key: str) -> str:
    """A YAML key's category: the legacy `unet`/`clip` mean their new names where this ComfyUI has
    those (an old one still has a `clip` category of its own)."""
    new = LEGACY.get(key)
    return new if new is not None and (new in CATEGORIES or key not in CATEGORIES) else key


def lists_extension(category: str, name: str) -> bool:
    """Whether ComfyUI lists a file of this name in this category."""
    exts = CATEGORIES.get(category, (None, None))[1]
    if exts is None:
        return True
    return posixpath.splitext(name)[1].lower() in exts


@lru_cache(maxsize=None)
def _yaml():
    """PyYAML and our duplicate-checking loader, imported on first use: `scan` never reads a YAML,
    and importing yaml is a large share of the start-up of a short command."""
    import yaml

    class DupCheckLoader(yaml.SafeLoader):
        """safe_load that also reports duplicate top-level keys (ComfyUI silently keeps the last)."""

    def construct_mapping(loader, node, deep=False):
        if node is loader._root:   # type: ignore[attr-defined]
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue        # `<<: *base` merges keys; PyYAML's own flattening handles it below
                key = loader.construct_object(key_node, deep=deep)
                try:
                    dup = key in seen
                except TypeError:   # a list or mapping as a key: PyYAML's own check names it below
                    continue
                if dup:
                    raise BadInput(
                        f"duplicate top-level key {key!r} (ComfyUI silently drops the first)",
                        "merge the two sections into one",
                    )
                seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    DupCheckLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return yaml, DupCheckLoader


class _Parsed:
    """One text read once: its data and, in file order, each top-level key as written (the scalar's
    text, or None for a key that is no plain scalar or is a merge key `<<`) with its 0-based line."""
    __slots__ = ("data", "keys")

    def __init__(self, data: dict, keys: tuple[tuple[str | None, int], ...]) -> None:
        self.data, self.keys = data, keys


_PARSED: dict[str, _Parsed] = {}    # the last few texts parsed: a plan reads one text at several places


def parse_yaml(text: str, where: str = "extra_model_paths.yaml") -> dict[str, dict]:
    """Parse and check a YAML the way ComfyUI will read it. Raises BadInput naming the fix.
    Returns fresh dicts each time (callers pop a section's keys, as ComfyUI does): the top level
    and every section are copied, a section that is an alias of another (`b: *a`) stays one dict
    shared by both, as in ComfyUI; values are shared (strings, and nothing here changes the rest).
    (copy.deepcopy took ~7x as long: 0.46 s for 20,000 sections, and a `run` asks ~13 times.)"""
    copies: dict[int, dict] = {}
    return {k: copies.setdefault(id(v), dict(v)) if isinstance(v, dict) else v
            for k, v in _parsed(text, where).data.items()}


def _parsed(text: str, where: str) -> _Parsed:
    """A text parsed once, whatever `where` (it only names the file in a message): PyYAML's
    pure-Python loader, which ComfyUI uses and whose answers we must give, reads ~9,000 lines/s
    here: a 100,000-line YAML costs ~11 s a parse (issue 15: a plan parsed it ~9 times)."""
    got = _PARSED.get(text)
    if got is None:
        got = _parse_yaml(text, where)
        if len(_PARSED) >= 4:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[text] = got
    return got


def _parse_yaml(text: str, where: str) -> _Parsed:
    if len(text) > 4 * 1024 * 1024:
        raise BadInput(f"{where}: larger than 4 MiB, not an extra_model_paths.yaml", "check the --yaml path")
    yaml, loader_class = _yaml()
    keys: tuple[tuple[str | None, int], ...] = ()
    try:
        loader = loader_class(text)
        try:
            root = loader._root = loader.get_single_node()  # type: ignore[attr-defined]
            if isinstance(root, yaml.MappingNode):
                # before constructing: a merge key `<<` at the top flattens root.value in place
                keys = tuple((k.value if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"
                              else None, k.start_mark.line) for k, _ in root.value)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except BadInput as exc:     # a duplicate key: say in which file
        raise BadInput(f"{where}: {exc}", exc.hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(f"{where}: malformed YAML{line}: {problem}", "fix the file or restore a backup, then run again")
    except RecursionError:
        raise BadInput(f"{where}: malformed YAML: nested too deeply to read (PyYAML, as ComfyUI uses it, fails "
                       "on it too)", "fix the file or restore a backup, then run again") from None
    except Exception as exc:    # PyYAML raises more than YAMLError: a date like 2001-02-30 (ValueError), ...
        first = (str(exc).splitlines() or [""])[0][:200]
        raise BadInput(f"{where}: malformed YAML: {type(exc).__name__}: {first}",
                       "fix the file or restore a backup, then run again") from None
    if data is None:
        return _Parsed({}, ())
    if not isinstance(data, dict):
        raise BadInput(f"{where}: the top level is a {type(data).__name__}, ComfyUI needs sections (a mapping)",
                       "fix the file, then run again")
    for section, conf in data.items():
        if conf is None:
            continue
        if not isinstance(conf, dict):
            raise BadInput(f"{where}: section {section!r} is a {type(conf).__name__}, ComfyUI needs a mapping "
                           "(a list here stops ComfyUI from starting)", "fix the section, then run again")
        for key, value in conf.items():
            if key == "is_default":
                continue
            if not isinstance(value, str) or not value.strip():
                kind = "empty" if value is None or value == "" else f"a {type(value).__name__}"
                raise BadInput(f"{where}: {section}.{key} is {kind}; ComfyUI needs a string "
                               "(several folders on separate lines with `|`)",
                               "fix the value, then run again")
    return _Parsed(data, keys)


def search_folders(
    yaml_texts: Sequence[tuple[str, str]], models_dir: str | None, env: dict[str, str] | None = None,
    output: Sequence[tuple[str, str]] = (),
) -> dict[str, list[str]]:
    """Each category's folders in ComfyUI's search order.

    yaml_texts: (yaml path, text) in the order ComfyUI loads them. models_dir: ComfyUI's own
    models folder (its built-in folders are always searched). output: (category key, folder) that
    main.py adds after the YAMLs (launch.Launch.output_folders: `<output>/loras`, ...), each added
    as a plain folder (last, unless listed already). Pure apart from path arithmetic.
    """
    env = dict(os.environ if env is None else env)
    order: dict[str, _Order] = {}
    if models_dir:
        for cat, (folders, _) in CATEGORIES.items():
            order[cat] = _Order([posixpath.normpath(posixpath.join(models_dir, f)) for f in folders])
    for path, text in yaml_texts:
        data = parse_yaml(text, path)
        yaml_dir = posixpath.dirname(posixpath.abspath(path))
        # As extra_config.load_extra_path_config: base_path and is_default are popped from the parsed
        # section itself, so two sections that are one YAML alias (`b: *a`) share what is left.
        for conf in data.values():
            if conf is None:
                continue
            base = None
            if "base_path" in conf:
                base = resolve_base(str(conf.pop("base_path")), path, env)
            is_default = bool(conf.pop("is_default")) if "is_default" in conf else False
            for key, value in conf.items():
                cat = canonical_key(str(key))
                if cat == DOWNLOAD_BASE:
                    continue        # where ComfyUI-Manager saves downloads, no category of models
                paths = order.get(cat) or order.setdefault(cat, _Order([]))
                for line in str(value).split("\n"):
                    if not line:
                        continue
                    if base:
                        full = posixpath.join(base, line)
                    elif not posixpath.isabs(line):
                        full = posixpath.join(yaml_dir, line)
                    else:
                        full = line
                    paths.add(posixpath.normpath(full), is_default)
    for key, folder in output:
        cat = canonical_key(key)
        (order.get(cat) or order.setdefault(cat, _Order([]))).add(posixpath.normpath(folder), False)
    return {cat: o.folders() for cat, o in order.items()}


class _Order:
    """One category's folders as ComfyUI orders them: a folder is added once; an is_default one goes
    to the front (also when already listed: it moves there), any other to the end. Each add is O(1):
    a YAML of 100,000 lines once took minutes with list.insert(0)/`in` on a list."""

    def __init__(self, folders: list[str]) -> None:
        self.front: list[str | None] = []       # is_default folders, the newest last (shown first)
        self.back: list[str | None] = list(folders)
        self.at: dict[str, tuple[list, int]] = {f: (self.back, i) for i, f in enumerate(self.back)}

    def add(self, folder: str, is_default: bool) -> None:
        where = self.at.get(folder)
        if where is not None:
            if not is_default or (where[0] is self.front and where[1] == len(self.front) - 1) or (
                    not self.front and self._first_back() == folder):
                return          # listed already; or an is_default folder already first
            where[0][where[1]] = None
        target = self.front if is_default else self.back
        self.at[folder] = (target, len(target))
        target.append(folder)

    def _first_back(self) -> str | None:
        return next((f for f in self.back if f is not None), None)

    def folders(self) -> list[str]:
        return [f for f in reversed(self.front) if f is not None] + [f for f in self.back if f is not None]


_VAR = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)     # the pattern of posixpath.expandvars


def _expand(value: str, env: dict[str, str]) -> str:
    """ComfyUI's os.path.expandvars(os.path.expanduser(value)), with `env` instead of os.environ.

    An unset variable stays literally (`$VAR`), which then reads as a folder below the YAML's.
    `~user` is left as it is (ComfyUI would look the user up; we never write one).
    """
    if value == "~" or value.startswith("~/"):
        value = env.get("HOME", "~") + value[1:]

    def sub(m: "re.Match[str]") -> str:
        name = m.group(1)
        name = name[1:-1] if name.startswith("{") else name
        return env.get(name, m.group(0))

    return _VAR.sub(sub, value)


def unset_variables(value: str, env: dict[str, str]) -> list[str]:
    """The $VARIABLES in a base_path that `env` lacks (ComfyUI would keep them as literal text)."""
    names = [m.group(1)[1:-1] if m.group(1).startswith("{") else m.group(1) for m in _VAR.finditer(value)]
    return [n for n in names if n not in env]


def resolve_base(base: str, yaml_path: str, env: dict[str, str]) -> str:
    """A section's base_path as ComfyUI resolves it: expanded, then relative to the YAML's folder."""
    yaml_dir = posixpath.dirname(posixpath.abspath(yaml_path))
    base = _expand(str(base), env)
    if not posixpath.isabs(base):
        base = posixpath.abspath(posixpath.join(yaml_dir, base))
    return posixpath.normpath(base)


def managed_base(text: str, yaml_path: str, env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(base_path as written, as ComfyUI resolves it) of our managed section, or None."""
    env = dict(os.environ if env is None else env)
    conf = parse_yaml(text, yaml_path).get(MANAGED_SECTION)
    if not conf or "base_path" not in conf:
        return None
    raw = str(conf["base_path"])
    return raw, resolve_base(raw, yaml_path, env)


def kept_base_spec(text: str | None, yaml_path: str) -> str:
    """The --base-path form (absolute, relative, env:VAR) of the base_path our managed section has in
    `text`: a later run or attach without --base-path keeps it, so a YAML made portable stays so
    (a volume mounted elsewhere, a worker). "absolute" where there is no such section."""
    if text is None:
        return "absolute"
    conf = parse_yaml(text, yaml_path).get(MANAGED_SECTION)
    raw = str(conf.get("base_path") or "") if isinstance(conf, dict) else ""
    m = re.match(r"\$(?:\{(\w+)\}|(\w+))(?:/|$)", raw, re.ASCII)
    if m:
        return "env:" + (m.group(1) or m.group(2))
    if raw and not raw.startswith(("/", "~", "$")):
        return "relative"
    return "absolute"


def render_section(base_path: str, folders: dict[str, list[str]]) -> str:
    """The managed section's text. folders: category -> folder names relative to base_path."""
    lines = [BEGIN_MARK, f"{MANAGED_SECTION}:", f"  base_path: {_quote(base_path)}", "  is_default: true"]
    for cat in sorted(folders):
        names = folders[cat]
        if len(names) == 1:
            lines.append(f"  {_quote_key(cat)}: {_quote(names[0])}")
        else:
            # is_default inserts each folder at the front: the canonical (first given) goes last.
            lines.append(f"  {_quote_key(cat)}: |")
            lines.extend(f"    {n}" for n in reversed(names))
    lines.append(END_MARK)
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    plain = value and all(c.isalnum() or c in "/._-+@~$" for c in value) and not value[0] in "-~@" \
        and _reads_as_str(value)
    if plain:
        return value
    return "'" + value.replace("'", "''") + "'"


def _reads_as_str(value: str) -> bool:
    """Whether YAML reads this plain scalar back as the same string (not a number, bool or null)."""
    yaml = _yaml()[0]
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False))
    return tag == "tag:yaml.org,2002:str"


def _quote_key(key: str) -> str:
    plain = key.replace("_", "").replace("-", "").isalnum() and _reads_as_str(key)
    return key if plain else _quote(key)


def merge_section(old_text: str | None, section: str, where: str = "extra_model_paths.yaml") -> str:
    """Put the managed section into the user's YAML text, leaving every other byte as it was.

    ComfyUI puts each is_default section's folders in front, in file order: the later section
    wins. Ours goes before the user's first is_default section (or stays where it is, if that is
    earlier; else at the end), so that every is_default section of the user's keeps its precedence.
    """
    text = old_text or ""
    old_data = _parsed(old_text, where).data if old_text is not None else {}    # read, never changed
    if old_text is not None and flow_style(old_text):
        # A flow-style (JSON-like) top level takes no block section after it: its sections are
        # written in block style, the same values (checked below), and ours then placed as usual.
        text = block_style(old_text, old_data)
    lines = text.splitlines(keepends=True)
    begin = [i for i, ln in enumerate(lines) if ln.rstrip("\r\n") == BEGIN_MARK]
    end = [i for i, ln in enumerate(lines) if ln.rstrip("\r\n") == END_MARK]
    at: int | None = None
    moved = False          # our section goes to another place than where it stood
    if begin or end:
        if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
            raise BadInput(f"{where}: the comfy-migrate markers are damaged",
                           "remove the comfy_migrate section and its two marker lines, then run again")
        at = begin[0]
        lines = lines[:begin[0]] + lines[end[0] + 1:]
        text = "".join(lines)
    elif MANAGED_SECTION in old_data:
        raise BadInput(f"{where}: has a {MANAGED_SECTION!r} section not written by comfy-migrate",
                       f"rename that section, then run again")
    first = _first_default_line(text, where)
    if first is not None and (at is None or first < at):
        if at is not None and at > 0 and lines[at - 1].strip() == "" and (at == len(lines) or not lines[at].strip()):
            del lines[at - 1]       # the blank line that set our old place apart goes with it
            text = "".join(lines)   # (before `first`, which is above it: `first` stays that line)
        while first > 0 and lines[first - 1].startswith("#"):      # its comment lines stay with it
            first -= 1
        at, moved = first, True
    if at is None:
        sep = "" if not text or text.endswith("\n") else "\n"
        new = text + sep + ("\n" if text.strip() else "") + section
    else:
        head, tail = "".join(lines[:at]), "".join(lines[at:])
        if head and not head.endswith("\n"):
            head += "\n"
        gap = "\n" if head.strip() and not head.endswith("\n\n") and begin == [] else ""
        # a section replaced where it stood keeps the bytes around it; a new one gets a blank line after
        placed = begin == [] or moved
        new = head + gap + section + ("\n" if tail.strip() and not tail.startswith("\n") and placed else "") + tail
    try:
        result = _parsed(new, where).data   # ComfyUI's reading of what we write: the one other parse
    except BadInput:                        # its line number would be of our text, not the user's file
        raise BadInput(f"{where}: adding the comfy_migrate section after its text would make the file "
                       "unreadable (it ends its document: `...`, or the top level does not take another key)",
                       "write the file's sections in block style (one `key: value` per line), then run again")
    if MANAGED_SECTION not in result:
        raise BadInput(f"{where}: the managed section did not survive merging", "report this as a bug")
    theirs = {k: v for k, v in old_data.items() if k != MANAGED_SECTION}
    got = {k: v for k, v in result.items() if k != MANAGED_SECTION}
    keys = list(result)
    late = [k for k in keys[:keys.index(MANAGED_SECTION)] if _is_default(result[k])]
    if got != theirs or list(got) != list(theirs) or late:
        raise BadInput(f"{where}: cannot place the managed section before the is_default section "
                       f"{(late or [next(iter(theirs), '?')])[0]!r} without changing the file's meaning "
                       "(a flow-style top level?)", "write the file's sections in block style, then run again")
    return new


def flow_style(text: str) -> bool:
    """Is the YAML's top level a flow mapping (`{...}`, JSON-like)? Nothing can follow it as a block."""
    for line in text.splitlines():
        bare = line.strip()
        if bare and not bare.startswith("#") and bare != "---":
            return bare.startswith("{")
    return False


def block_style(text: str, data: dict) -> str:
    """A flow-style YAML's sections in block style (same values), its leading comment lines kept."""
    yaml, _ = _yaml()
    head = []
    for line in text.splitlines(keepends=True):
        if line.strip() and not line.lstrip().startswith("#"):
            break
        head.append(line if line.endswith("\n") else line + "\n")
    return "".join(head) + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True,
                                         width=1 << 30)


def managed_section(text: str, where: str = "extra_model_paths.yaml") -> tuple[str, str] | None:
    """(the text without our marked section, the section's own lines) or None when it has none.
    The blank line merge_section put before the section goes with it. Damaged markers: BadInput."""
    lines = text.splitlines(keepends=True)
    begin = [i for i, ln in enumerate(lines) if ln.rstrip("\r\n") == BEGIN_MARK]
    end = [i for i, ln in enumerate(lines) if ln.rstrip("\r\n") == END_MARK]
    if not begin and not end:
        return None
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        raise BadInput(f"{where}: the comfy-migrate markers are damaged",
                       "remove the comfy_migrate section and its two marker lines by hand")
    b, e = begin[0], end[0]
    section = "".join(lines[b:e + 1])
    if b > 0 and not lines[b - 1].strip():
        b -= 1
    return "".join(lines[:b] + lines[e + 1:]), section


def remove_section(text: str, previous: str | None, where: str = "extra_model_paths.yaml") -> str | None:
    """A YAML edited by the user since a run, with that run's change undone and the edits kept: our
    marked section taken out, and the section of `previous` (the YAML before the run) put back if it
    had one. None when nothing of ComfyUI's would remain (no section at all: ComfyUI cannot start on
    an empty file). Raises BadInput where the result would not be a YAML ComfyUI reads."""
    got = managed_section(text, where)
    if got is None:
        unmarked = without_section(text, where)     # our markers gone: a tool re-dumped the file
        if unmarked is not None:
            text, got = unmarked, (unmarked, "")
    before = managed_section(previous, where) if previous is not None else None
    if before is not None:
        return merge_section(text, before[1], where)       # in our section's place
    rest = text if got is None else got[0]
    return rest if parse_yaml(rest, where) else None


def without_section(text: str, where: str = "extra_model_paths.yaml") -> str | None:
    """`text` without its top-level comfy_migrate section found by content, not by our marker
    comments (a tool that re-dumped the YAML dropped them): the key's lines up to the next top-level
    key (comments just above that key stay with it); a flow-style file is written in block style.
    None when it has no such section; BadInput when the rest would not read as the same sections."""
    parsed = _parsed(text, where)
    if MANAGED_SECTION not in parsed.data:
        return None
    theirs = {k: v for k, v in parsed.data.items() if k != MANAGED_SECTION}
    if flow_style(text):
        rest = block_style(text, theirs) if theirs else ""
    else:
        lines = text.splitlines(keepends=True)
        ours = [line for key, line in parsed.keys if key == MANAGED_SECTION]
        if len(ours) != 1:
            raise BadInput(f"{where}: its {MANAGED_SECTION} section cannot be told apart (written more than once)",
                           f"remove the {MANAGED_SECTION} section by hand")
        b = ours[0]
        e = min((line for _, line in parsed.keys if line > b), default=len(lines))
        while e - 1 > b and lines[e - 1].lstrip().startswith("#"):
            e -= 1
        while b > 0 and not lines[b - 1].strip():
            b -= 1
        rest = "".join(lines[:b] + lines[e:])
    try:
        left = _parsed(rest, where).data if rest.strip() else {}
    except BadInput:
        left = None
    if left != theirs:
        raise BadInput(f"{where}: its {MANAGED_SECTION} section (our marker comments are gone) cannot be taken "
                       "out without changing the other sections", f"remove the {MANAGED_SECTION} section by hand")
    return rest


def _is_default(conf: object) -> bool:
    """ComfyUI's test of a section's is_default: a plain truth test of the value."""
    return isinstance(conf, dict) and bool(conf.get("is_default", False))


def _first_default_line(text: str, where: str) -> int | None:
    """The line (0-based) of the first top-level section ComfyUI reads as is_default, or None.
    From the one parse of `text` (its keys as written, with their lines): linear in the sections."""
    if not text.strip():
        return None
    parsed = _parsed(text, where)
    data = parsed.data
    by_text: dict[str, object] = {}         # a key as written -> the first section whose key reads so
    for k in data:
        by_text.setdefault(str(k), k)
    for key, line in parsed.keys:
        if key is None or key not in by_text:
            continue
        if key != MANAGED_SECTION and _is_default(data[by_text[key]]):
            return line
    return None


# --- where things are (here, not in facts: `scan` then imports no planning code) -----------------

DEFAULT_COMFYUI = ("/workspace/runpod-slim/ComfyUI", "/workspace/ComfyUI")


def find_comfyui(given: str | None) -> str:
    if given:
        path = os.path.abspath(given)
        if not os.path.isdir(path):
            what = "is a file, not a folder" if os.path.lexists(path) else "does not exist"
            raise BadInput(f"ComfyUI folder {path} {what}", "pass --comfyui DIR (the folder holding models/) "
                           "or set COMFYUI_DIR")
        return path
    for cand in DEFAULT_COMFYUI:
        if os.path.isdir(cand):
            return cand
    raise BadInput("no ComfyUI folder found (looked at $COMFYUI_DIR, " + ", ".join(DEFAULT_COMFYUI) + ")",
                   "pass --comfyui DIR or set COMFYUI_DIR")


def models_of_another_install(home: str, models: str | None = None) -> str | None:
    """The other ComfyUI folder (one holding main.py) whose models folder `home`'s models folder (a
    symlink) leads into, or None: migrating through the link would empty that install's models."""
    models = models or os.path.join(home, "models")
    if not os.path.islink(models.rstrip("/")):
        return None
    real, mine = os.path.realpath(models), os.path.realpath(home)
    cur = os.path.dirname(real)
    while True:
        if cur != mine and os.path.isfile(os.path.join(cur, "main.py")):
            return cur
        parent = os.path.dirname(cur)
        if parent == cur:
            return None
        cur = parent


def check_dir(path: str, what: str) -> str:
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        why = "is not a folder" if os.path.lexists(path) else "does not exist"
        raise BadInput(f"{what} {path} {why}", f"check the {what} path")
    if not os.access(path, os.R_OK | os.X_OK):
        raise BadInput(f"{what} {path} is not readable", "fix its permissions")
    return path


# --- the installed ComfyUI's own table ------------------------------------------------------------

def parse_folder_paths(source: str) -> dict[str, tuple[tuple[str, ...], frozenset | None]] | None:
    """The model categories a ComfyUI's own folder_paths.py registers, read with `ast` (never
    imported: it pulls in torch through comfy.cli_args). Returns category -> (folders under
    models/ in search order, extensions or None for any), or None when the file does not have the
    shape we know (`folder_names_and_paths["x"] = ([os.path.join(models_dir, "x"), ...], exts)`).
    Categories outside models/ (custom_nodes) are left out: they are not models."""
    import ast
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    names: dict[str, frozenset] = {}

    def strings(node: ast.AST) -> frozenset | None:
        if isinstance(node, (ast.Set, ast.List, ast.Tuple)):
            vals = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            return frozenset(v.lower() for v in vals) if len(vals) == len(node.elts) else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("set", "frozenset") \
                and not node.keywords and len(node.args) <= 1:
            return strings(node.args[0]) if node.args else frozenset()
        if isinstance(node, ast.Name):
            return names.get(node.id)
        return None

    def folder(node: ast.AST) -> str | None:
        """`os.path.join(models_dir, "a", ...)` -> "a/..."; anything else (another base) -> None."""
        if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "os.path.join" and len(node.args) >= 2
                and isinstance(node.args[0], ast.Name) and node.args[0].id == "models_dir"):
            return None
        parts = [a.value for a in node.args[1:] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        return "/".join(parts) if len(parts) == len(node.args) - 1 else None

    table: dict[str, tuple[tuple[str, ...], frozenset | None]] = {}
    assigns = [n for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign))]
    for node in sorted(assigns, key=lambda n: (n.lineno, n.col_offset)):     # in source order
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            exts = strings(value)
            if exts is not None:
                names[target.id] = exts
            continue
        if not (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                and target.value.id == "folder_names_and_paths" and isinstance(target.slice, ast.Constant)
                and isinstance(target.slice.value, str)):
            continue
        if not (isinstance(value, ast.Tuple) and len(value.elts) == 2 and isinstance(value.elts[0], ast.List)):
            continue
        folders = [folder(f) for f in value.elts[0].elts]
        exts = strings(value.elts[1])
        if not folders or None in folders or exts is None:
            continue
        table[target.slice.value] = (tuple(f for f in folders if f), None if exts == {"folder"} else exts)
    return table or None


def read_version(comfyui: str) -> str | None:
    """`__version__` of <comfyui>/comfyui_version.py (read, not imported), or None."""
    import ast
    try:
        with open(os.path.join(comfyui, "comfyui_version.py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets) \
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return node.value.value
    return None


def installed_categories(comfyui: str) -> tuple[dict | None, str]:
    """(the table of <comfyui>/folder_paths.py or None, a line saying which table applies)."""
    path = os.path.join(comfyui, "folder_paths.py")
    try:
        with open(path, encoding="utf-8") as f:
            table = parse_folder_paths(f.read())
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8"
        return None, f"cannot read {path} ({why}): using comfy-migrate's built-in category table"
    if table is None:
        return None, f"{path} has no category table comfy-migrate can read: using its built-in table"
    version = read_version(comfyui)
    return table, (f"ComfyUI {version or '(unknown version)'}: {len(table)} model categories from {path}")


def use_categories(table: dict | None) -> dict:
    """Make `table` (installed_categories'; None: the built-in one) the categories every rule here
    applies, as ComfyUI's folder_paths is one table per process. Returns the table it replaces."""
    global CATEGORIES, FOLDER_CATEGORY
    old = CATEGORIES
    CATEGORIES = dict(table) if table else dict(BUILTIN_CATEGORIES)
    FOLDER_CATEGORY = {folder: cat for cat, (folders, _) in CATEGORIES.items() for folder in folders}
    return old
