"""The house's one-way rule: nothing under m3diff/ reaches analysis, training, the app (app.py, webapp/) or the
Space builder.

Every module is read as source (AST), so a lazy import inside a function, an importlib call and a
"module:function" string meant for another process all count, not only what happens to be imported.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ABOVE = ("analysis", "training", "app", "webapp", "hosting", "m3diff_app")
# a module path, or "module:function", naming one of the areas above the core
NAMED = re.compile(rf"^({'|'.join(ABOVE)})(\.[A-Za-z_][\w.]*)?(:[A-Za-z_]\w*)?$")


def references(path: Path) -> list[str]:
    """Every module this file imports or names: import statements, importlib / __import__ calls and
    strings that read as a module or "module:function"."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("import_module", "importlib.import_module", "__import__") and node.args \
                    and isinstance(node.args[0], ast.Constant):
                found.append(str(node.args[0].value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and NAMED.match(node.value) \
                and node.value not in ABOVE:  # a bare word ("app") is a word; "app:f" or "analysis.x" is a name
            found.append(node.value)
    return found


def test_nothing_under_m3diff_reaches_up_the_data_flow():
    files = sorted((ROOT / "m3diff").rglob("*.py"))
    assert len(files) > 20
    bad = {}
    for f in files:
        up = [r for r in references(f) if r.split(".")[0].split(":")[0] in ABOVE]
        if up:
            bad[str(f.relative_to(ROOT))] = up
    assert not bad, bad


def test_the_walk_sees_every_kind_of_reference(tmp_path):
    f = tmp_path / "sample.py"
    f.write_text("import analysis.report\nfrom training import train\n"
                 "def g():\n    import importlib\n    importlib.import_module('app')\n"
                 "    return call('app:explain_maps'), __import__('hosting'), 'app'\n")
    assert sorted(references(f)) == sorted(["analysis.report", "training", "importlib", "app", "app:explain_maps", "hosting"])


def test_each_areas_commands_come_from_entry_points():
    from importlib.metadata import entry_points

    from m3diff.cli import COMMAND_GROUP, build_parser

    modules = {ep.module for ep in entry_points(group=COMMAND_GROUP)}
    assert {"m3diff.commands", "analysis.cli", "training.cli", "webapp.config", "hosting"} <= modules
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"describe", "eval", "train", "app", "space", "synth"} <= set(commands)


def test_importing_m3diff_registers_nothing_until_asked():
    code = ("import m3diff.modeling, m3diff.pipeline\n"
            "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
            "assert 'm3diff' not in CONFIG_MAPPING\n"
            "m3diff.modeling.register_auto_classes(); m3diff.modeling.register_auto_classes()\n"
            "assert 'm3diff' in CONFIG_MAPPING\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


# Libraries whose import costs seconds or pulls torch / a GPU stack: a function may import them when it
# needs them, so that `m3diff --help`, the web process and the data tools start without them.
HEAVY = {"torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate", "captum", "pycocoevalcap",
         "matplotlib", "skimage", "gradio", "gradio_client", "playwright", "tensorboard", "huggingface_hub",
         "spaces", "pandas", "plotly", "scipy", "pydantic", "yaml"}


def inner_imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """Imports inside functions that are neither of a heavy library nor marked ``# lazy: why`` (on the line
    or the one above); in a command module (an ``m3diff.commands`` entry point) a command may also import
    the project's modules when it runs, but not the standard library."""
    from importlib.metadata import entry_points

    commands = {ep.module for ep in entry_points(group="m3diff.commands")}
    module = module or ".".join(path.relative_to(ROOT).with_suffix("").parts)
    lines = path.read_text(encoding="utf-8").splitlines()
    bad = []
    for fn in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            name = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name) or ""
            top = name.split(".")[0]
            marked = any("# lazy" in lines[i] or "lazy:" in lines[i]
                         for i in range(max(node.lineno - 2, 0), node.end_lineno))
            if top in HEAVY or marked or (module in commands and top not in sys.stdlib_module_names):
                continue
            bad.append((node.lineno, name))
    return bad


def test_imports_sit_at_module_top_unless_they_say_why_not():
    # the product; benchmarks/ is left out: the GPU check imports inside each check so that one broken
    # import fails that check and the others still report
    files = [p for area in ("m3diff", "analysis", "training", "webapp", "spaces", "scripts")
             for p in (ROOT / area).rglob("*.py")] + [ROOT / "app.py", ROOT / "hosting.py"]
    bad = {str(f.relative_to(ROOT)): found for f in files if (found := inner_imports(f))}
    assert not bad, bad


def test_the_import_rule_sees_an_unmarked_inner_import(tmp_path):
    f = tmp_path / "sample.py"
    f.write_text("def g():\n    import json\n    from m3diff.images import load_image\n"
                 "    import torch\n    from m3diff.pipeline import DiffCaptioner  # lazy: torch\n")
    assert inner_imports(f, "scripts.sample") == [(2, "json"), (3, "m3diff.images")]
    assert inner_imports(f, "analysis.cli") == [(2, "json")]  # a command may import the project when it runs
