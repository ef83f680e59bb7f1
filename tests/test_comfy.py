"""ComfyUI's rules as migrate.core.comfy encodes them: categories, legacy names, reading and writing
extra_model_paths.yaml (pure: text in, text out). Expected values come from
shared/docs/comfyui-model-paths.md."""
from __future__ import annotations

import pytest
import yaml

from migrate.core import comfy
from migrate.core.errors import BadInput, ExitCode

BUILTIN = {
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "vae_approx", "gligen", "upscale_models", "latent_upscale_models",
    "hypernetworks", "photomaker", "model_patches", "audio_encoders", "background_removal",
    "frame_interpolation", "geometry_estimation", "optical_flow", "detection", "controlnet", "diffusers",
    "classifiers",
}


def test_every_documented_category_is_known_and_not_custom():
    assert set(comfy.CATEGORIES) == BUILTIN
    for cat in BUILTIN:
        assert comfy.category_of(cat) == (cat, False)


@pytest.mark.parametrize("folder, category", [
    ("unet", "diffusion_models"), ("clip", "text_encoders"), ("t2i_adapter", "controlnet"),
])
def test_legacy_and_alias_folders_map_to_their_category(folder, category):
    assert comfy.category_of(folder) == (category, False)


def test_search_order_puts_legacy_unet_first_and_text_encoders_before_clip():
    assert comfy.CATEGORIES["diffusion_models"][0] == ("unet", "diffusion_models")
    assert comfy.CATEGORIES["text_encoders"][0] == ("text_encoders", "clip")
    assert comfy.canonical_key("unet") == "diffusion_models"
    assert comfy.canonical_key("clip") == "text_encoders"
    assert comfy.canonical_key("loras") == "loras"


@pytest.mark.parametrize("folder", ["insightface", "ultralytics", "sams", "LLM", "ipadapter",
                                    "facerestore_models", "Loras"])
def test_unknown_folders_are_custom_node_categories(folder):
    assert comfy.category_of(folder) == (folder, True)


@pytest.mark.parametrize("category, name, listed", [
    ("checkpoints", "a.safetensors", True), ("checkpoints", "A.SafeTensors", True),
    ("loras", "x/y.sft", True), ("vae", "v.pt2", True), ("checkpoints", "notes.txt", False),
    ("configs", "v1.yaml", True), ("configs", "v1.safetensors", False),
    ("diffusers", "unet/config.json", True), ("classifiers", "anything.onnx", False),
    ("classifiers", "no_extension", True),     # folder_paths.py registers classifiers with {""}
])
def test_lists_extension(category, name, listed):
    assert comfy.lists_extension(category, name) is listed


def test_incomplete_suffixes_are_the_documented_ones():
    assert set(comfy.INCOMPLETE_SUFFIXES) == {".part", ".tmp", ".crdownload", ".aria2", ".incomplete",
                                              ".download"}


# --- parse_yaml --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("a: [\n", "malformed YAML"),
    ("sec:\n  checkpoints:\n    - a\n    - b\n", "is a list"),
    ("sec:\n  checkpoints:\n", "is empty"),
    ("sec:\n  checkpoints: 12\n", "is a int"),
    ("- a\n- b\n", "top level is a list"),
    ("sec:\n  - checkpoints\n", "section 'sec' is a list"),
    ("a:\n  loras: x\na:\n  vae: y\n", "duplicate top-level key"),
    ('sec:\n  checkpoints: "C:\\models"\n', "malformed YAML"),
])
def test_parse_yaml_refuses_what_stops_comfyui(text, words):
    with pytest.raises(BadInput) as info:
        comfy.parse_yaml(text, "/c/extra_model_paths.yaml")
    msg = str(info.value)
    assert words in msg
    assert msg.startswith("/c/extra_model_paths.yaml: ")
    assert "\n" not in msg
    assert info.value.exit_code == ExitCode.BAD_INPUT == 3
    assert info.value.hint


@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("# only a comment\n", {}),
    ("empty_section:\nsec:\n  base_path: /x\n  is_default: true\n  loras: |\n    a\n    b\n",
     {"empty_section": None, "sec": {"base_path": "/x", "is_default": True, "loras": "a\nb\n"}}),
])
def test_parse_yaml_accepts_what_comfyui_reads(text, expected):
    assert comfy.parse_yaml(text) == expected


# --- search_folders ----------------------------------------------------------------------------------

def test_search_folders_builtin_then_appended_with_legacy_keys_mapped():
    text = "other:\n  base_path: /opt/o\n  unet: u\n  clip: |\n    c1\n    c2/\n  lora: ./l\n"
    order = comfy.search_folders([("/c/extra_model_paths.yaml", text)], "/c/models", env={})
    assert order["diffusion_models"] == ["/c/models/unet", "/c/models/diffusion_models", "/opt/o/u"]
    assert order["text_encoders"] == ["/c/models/text_encoders", "/c/models/clip", "/opt/o/c1", "/opt/o/c2"]
    assert order["lora"] == ["/opt/o/l"]          # a typo creates an unused category
    assert order["loras"] == ["/c/models/loras"]


def test_search_folders_is_default_inserts_each_folder_at_the_front():
    text = "mine:\n  base_path: /store\n  is_default: true\n  loras: |\n    first\n    last\n"
    order = comfy.search_folders([("/c/extra_model_paths.yaml", text)], "/c/models", env={})
    assert order["loras"] == ["/store/last", "/store/first", "/c/models/loras"]


def test_search_folders_base_path_expansion_and_relative_paths():
    text = ("a:\n  base_path: ~/m\n  vae: v\n"
            "b:\n  base_path: $VOL/x\n  vae: v\n"
            "c:\n  base_path: ../rel\n  vae: v\n"
            "d:\n  vae: plain\n"
            "e:\n  is_default: 'false'\n  vae: /abs/e\n")
    order = comfy.search_folders([("/c/y/extra.yaml", text)], None, env={"HOME": "/h", "VOL": "/vol"})
    assert order["vae"] == ["/abs/e", "/h/m/v", "/vol/x/v", "/c/rel/v", "/c/y/plain"]


# --- render_section / merge_section ------------------------------------------------------------------

def test_render_section_is_what_comfyui_reads_with_canonical_folder_searched_first():
    text = comfy.render_section("/workspace/models", {
        "loras": ["loras"], "diffusion_models": ["diffusion_models", "unet"], "insightface": ["insightface"],
    })
    data = yaml.safe_load(text)
    assert data == {"comfy_migrate": {
        "base_path": "/workspace/models", "is_default": True, "loras": "loras",
        "diffusion_models": "unet\ndiffusion_models\n", "insightface": "insightface"}}
    order = comfy.search_folders([("/c/extra_model_paths.yaml", text)], "/c/models", env={})
    assert order["diffusion_models"][:2] == ["/workspace/models/diffusion_models", "/workspace/models/unet"]
    assert order["loras"] == ["/workspace/models/loras", "/c/models/loras"]


@pytest.mark.parametrize("base", ["/work space/models", "/a#b/models", "${VOL}/models", "/x/it's"])
def test_render_section_quotes_base_paths(base):
    assert yaml.safe_load(comfy.render_section(base, {"vae": ["vae"]}))["comfy_migrate"]["base_path"] == base


@pytest.mark.parametrize("folder", ["2024", "1.5", "0x1F", ".inf", "1_000", "true", "On", "null", "~"])
def test_render_section_keeps_number_and_bool_like_folder_names_strings(folder):
    # A custom-node folder named like a YAML number or bool must stay a string key and value:
    # ComfyUI calls .split() on every value and crashes at start-up on anything else.
    text = comfy.render_section("/store", {folder: [folder]})
    section = yaml.safe_load(text)["comfy_migrate"]
    assert section[folder] == folder
    comfy.parse_yaml(text)


USER = "# my own paths\nother_ui:\n  base_path: /opt/other\n  checkpoints: models/Stable-diffusion\n"


def test_merge_section_appends_and_keeps_every_user_byte():
    section = comfy.render_section("/store", {"loras": ["loras"]})
    new = comfy.merge_section(USER, section)
    assert new.startswith(USER)
    assert new.endswith(section)
    assert set(yaml.safe_load(new)) == {"other_ui", "comfy_migrate"}


def test_merge_section_without_trailing_newline_and_from_nothing():
    section = comfy.render_section("/store", {"loras": ["loras"]})
    assert comfy.merge_section(None, section) == section
    assert comfy.merge_section(USER.rstrip("\n"), section).startswith(USER)


def test_merge_section_replaces_its_own_section_in_place():
    old = comfy.merge_section(USER + "tail:\n  vae: v\n", comfy.render_section("/store", {"loras": ["loras"]}))
    new_section = comfy.render_section("/store2", {"vae": ["vae"]})
    new = comfy.merge_section(old, new_section)
    assert new == USER + "tail:\n  vae: v\n\n" + new_section
    assert comfy.merge_section(new, new_section) == new     # idempotent


@pytest.mark.parametrize("text, words", [
    ("a: [\n", "malformed YAML"),
    ("comfy_migrate:\n  vae: v\n", "not written by comfy-migrate"),
    (comfy.BEGIN_MARK + "\ncomfy_migrate:\n  vae: v\n", "markers are damaged"),
])
def test_merge_section_refuses_bad_input(text, words):
    with pytest.raises(BadInput, match=words):
        comfy.merge_section(text, comfy.render_section("/s", {"vae": ["vae"]}))


# --- issue 13: YAML ComfyUI accepts, YAML it (or PyYAML) cannot read, our section's place ----------

def test_parse_yaml_accepts_merge_keys():
    text = "base: &b\n  base_path: /x\n  loras: l\nother:\n  <<: *b\n  vae: v\n"
    assert comfy.parse_yaml(text, "/c/y.yaml") == {"base": {"base_path": "/x", "loras": "l"},
                                                   "other": {"base_path": "/x", "loras": "l", "vae": "v"}}
    assert comfy.search_folders([("/c/y.yaml", text)], None)["vae"] == ["/x/v"]


def test_search_folders_shares_an_aliased_section_as_comfyui_does():
    # ComfyUI pops base_path from the parsed dict: the alias `b: *a` is the same dict, without it
    text = "a: &a\n  base_path: /x\n  loras: l\nb: *a\n"
    assert comfy.search_folders([("/c/y.yaml", text)], None)["loras"] == ["/x/l", "/c/l"]


@pytest.mark.parametrize("text, words", [
    ("[" * 3000 + "]" * 3000, "nested too deeply"),
    ("? [a, b]\n: x\n", "unhashable key"),
    ("a:\n  ? {x: 1}\n  : y\n", "unhashable key"),
    ("a: 2001-02-30\n", "ValueError"),
])
def test_parse_yaml_turns_every_pyyaml_failure_into_one_line(text, words):
    with pytest.raises(BadInput) as info:
        comfy.parse_yaml(text, "/c/extra_model_paths.yaml")
    assert words in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 3


def test_merge_section_goes_before_the_users_first_is_default_section():
    user = ("plain:\n  loras: p\n\n# my defaults\nmine:\n  base_path: /d\n  is_default: true\n  loras: l\n"
            "later:\n  is_default: 'false'\n  vae: v\n")
    sec = comfy.render_section("/store", {"loras": ["loras"], "vae": ["vae"]})
    new = comfy.merge_section(user, sec)
    assert new == "plain:\n  loras: p\n\n" + sec + "\n# my defaults\nmine:\n  base_path: /d\n  is_default: " \
        "true\n  loras: l\nlater:\n  is_default: 'false'\n  vae: v\n"
    order = comfy.search_folders([("/c/e.yaml", new)], "/c/models")
    assert order["loras"] == ["/d/l", "/store/loras", "/c/models/loras", "/c/p"]
    assert order["vae"] == ["/c/v", "/store/vae", "/c/models/vae"]      # "false" is true to ComfyUI
    # a section of ours from an older version, at the end, moves up; then stays where it is
    old = user + "\n" + sec
    assert comfy.merge_section(old, sec) == new
    assert comfy.merge_section(new, sec) == new


def _naive_order(initial, adds):
    """ComfyUI's own list operations (extra_config + folder_paths.add_model_folder_path)."""
    paths = list(initial)
    for full, is_default in adds:
        if full in paths:
            if is_default and paths[0] != full:
                paths.remove(full)
                paths.insert(0, full)
        elif is_default:
            paths.insert(0, full)
        else:
            paths.append(full)
    return paths


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(initial=st.lists(st.sampled_from("abcdef"), unique=True, max_size=3),
       adds=st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=25))
def test_the_constant_time_search_order_equals_comfyuis_list_operations(initial, adds):
    # search_folders once used list.insert(0)/`in` per folder: a 100,000-line YAML took ~100 s to plan
    order = comfy._Order(list(initial))
    for full, is_default in adds:
        order.add(full, is_default)
    assert order.folders() == _naive_order(initial, adds)


# --- issue 15: the is_default line from the one parse, not a second composer pass ------------------

def _first_default_line_by_composing(text: str):
    """The definition before issue 15: a second pass of PyYAML's composer over the text."""
    if not text.strip():
        return None
    data = comfy.parse_yaml(text)
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None or not hasattr(root, "value") or not isinstance(root.value, list):
        return None
    for key_node, _ in root.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key is None or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        match = [k for k in data if str(k) == key]
        if match and key != comfy.MANAGED_SECTION and comfy._is_default(data[match[0]]):
            return key_node.start_mark.line
    return None


# keys as written: plain, quoted, read as a number, bool or null, ours, anchored, explicit (`? k`);
# "{i}" makes most unique, the rest meet (1 and '1' are two keys that print alike; a and 'a' are one)
_KEYS = st.sampled_from(["a{i}", "'a{i}'", '"b{i}"', "{i}", "'{i}'", "{i}.5", "x y{i}", "&k{i} k{i}", "? c{i}",
                         "1", "'1'", "a", "'a'", "true", "null", "~", "comfy_migrate"])
_DEFAULTS = st.sampled_from(["", "  is_default: true\n", "  is_default: false\n", "  is_default: 'false'\n",
                             "  is_default: 0\n", "  is_default: []\n", "  is_default: [1]\n",
                             "  is_default: {}\n", "  is_default: yes\n"])


@st.composite
def _section_texts(draw):
    """Top-level sections in block and flow style, empty ones, one anchored (`&s`) and later ones
    that alias it (`*s`) or merge it (`<<: *s`), comments between, an empty mapping merged at the top."""
    out, anchored = [], False
    if draw(st.booleans()):
        out.append("none: &none {}\n<<: *none\n")
    for i in range(draw(st.integers(0, 6))):
        key = draw(_KEYS).format(i=i)
        explicit = key.startswith("? ")
        colon = "\n:" if explicit else ":"
        if draw(st.booleans()):
            out.append("# a comment\n")
        style = draw(st.sampled_from(["block", "block", "flow", "alias", "merge", "empty"]))
        if style in ("alias", "merge") and not anchored:
            style = "block"
        if style == "alias":
            out.append(f"{key}{colon} *s\n")
        elif style == "merge":
            out.append(f"{key}{colon}\n  <<: *s\n{draw(_DEFAULTS)}")
        elif style == "empty":
            out.append(f"{key}{colon}\n")
        else:
            anchor = "" if anchored or not draw(st.booleans()) else " &s"
            anchored = anchored or bool(anchor)
            if style == "flow":
                flag = draw(st.sampled_from(["", ", is_default: true", ", is_default: ''"]))
                out.append(f"{key}{colon}{anchor} {{vae: v{flag}}}\n")
            else:
                out.append(f"{key}{colon}{anchor}\n  base_path: /b{i}\n" + draw(_DEFAULTS) + "  loras: l\n")
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(_section_texts())
def test_first_default_line_from_the_one_parse_is_the_composers(text):
    try:
        expected = _first_default_line_by_composing(text)
    except BadInput:
        with pytest.raises(BadInput):
            comfy._first_default_line(text, "y.yaml")
        return
    assert comfy._first_default_line(text, "y.yaml") == expected
