"""No module of the package imports a heavy library at import time (checked in fresh processes).

Every module is found by ``pkgutil.walk_packages`` (no hand-kept list) and imported in a fresh interpreter; a
meta-path hook notes which module of ours started each heavy import, so a failure names the module that imports
the library, not only the first module that happened to pull it in. A heavy library stays loaded once imported,
so after each offender the check goes on in a new process from the next module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ["torch", "ray", "vllm", "transformers", "deepspeed", "pymupdf", "httpx", "tokenizers"]

# Runs in the child. argv: mode ("list" or "check"), the JSON list of module names (check), the JSON list of
# module names that count as ours besides docrerank.* (test probes). One JSON record per line on stdout.
CHILD = r"""
import importlib, json, pkgutil, sys

HEAVY = set(json.loads(sys.argv[1]))
mode, modules, ours = sys.argv[2], json.loads(sys.argv[3]), set(json.loads(sys.argv[4]))
already = sorted(h for h in HEAVY if h in sys.modules)
importer = {}


def is_ours(name):
    return name == "docrerank" or name.startswith("docrerank.") or name in ours


class Recorder:
    # Never finds anything: it only notes which of our modules was executing when a heavy import began.
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in HEAVY and top not in importer:
            frame = sys._getframe(1)
            while frame is not None and not is_ours(frame.f_globals.get("__name__", "")):
                frame = frame.f_back
            importer[top] = frame.f_globals["__name__"] if frame is not None else None
        return None


sys.meta_path.insert(0, Recorder())
if already:
    print(json.dumps({"startup": already}))
elif mode == "list":
    import docrerank

    errors = []
    names = ["docrerank"] + [m.name for m in pkgutil.walk_packages(docrerank.__path__, "docrerank.", onerror=errors.append)]
    print(json.dumps({"modules": names, "errors": errors}))
else:
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except Exception as e:
            print(json.dumps({"index": i, "module": name, "error": f"{type(e).__name__}: {e}"}), flush=True)
        heavy = sorted(h for h in HEAVY if h in sys.modules)
        if heavy:
            print(json.dumps({"index": i, "module": name, "heavy": {h: importer.get(h) for h in heavy}}))
            sys.exit(0)
    print(json.dumps({"done": True}))
"""


def _child(mode: str, modules: list[str], ours: list[str] = (), path: Path | None = None) -> list[dict]:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(HEAVY), mode, json.dumps(modules), json.dumps(list(ours))],
                         capture_output=True, text=True, timeout=300, env=env)
    if out.returncode != 0:
        raise AssertionError(f"the import check's child failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    startup = [r["startup"] for r in records if "startup" in r]
    assert not startup, f"heavy libraries are loaded before anything is imported (a .pth file?): {startup[0]}"
    return records


def package_modules() -> list[str]:
    """Every module of the package, packages included, as ``pkgutil.walk_packages`` finds them."""
    [rec] = _child("list", [])
    assert not rec["errors"], f"packages that cannot be imported (their modules were not checked): {rec['errors']}"
    return rec["modules"]


def heavy_imports(modules: list[str], ours: list[str] = (), path: Path | None = None) -> tuple[dict, dict]:
    """(module -> {heavy library: the module of ours that imported it}, module -> import error), each module
    imported in a fresh process or after modules that loaded nothing heavy."""
    offenders, errors, start = {}, {}, 0
    while start < len(modules):
        records = _child("check", modules[start:], ours, path)
        nxt = len(modules)
        for r in records:
            if "error" in r:
                errors[r["module"]] = r["error"]
            if "heavy" in r:
                offenders[r["module"]] = r["heavy"]
                nxt = start + r["index"] + 1
        start = nxt
    return offenders, errors


def _explain(offenders: dict, errors: dict) -> str:
    lines = [f"  {m}: " + ", ".join(f"{h} (imported by {by or 'a library it imports'})" for h, by in heavy.items())
             for m, heavy in offenders.items()]
    lines += [f"  {m}: cannot be imported: {e}" for m, e in errors.items()]
    return "modules importing heavy libraries at import time (import them inside the functions that use them):\n" + "\n".join(lines)


def test_discovery_finds_every_package_of_the_library():
    names = package_modules()
    for expected in ["docrerank.core.config", "docrerank.render.run", "docrerank.engines.hf", "docrerank.train.step",
                     "docrerank.eval.run", "docrerank.mine.run", "docrerank.models.tiny"]:
        assert expected in names
    assert len(names) == len(set(names)) > 60


def test_no_module_imports_a_heavy_library():
    offenders, errors = heavy_imports(package_modules())
    assert not offenders and not errors, _explain(offenders, errors)


def test_the_check_names_the_module_that_imports_the_library(tmp_path):
    # Guards the check itself: a heavy import is seen and blamed on the module that makes it, not its importer.
    (tmp_path / "heavy_probe.py").write_text("import httpx\n")
    (tmp_path / "light_probe.py").write_text("import heavy_probe\n")
    (tmp_path / "clean_probe.py").write_text("import json\n")
    offenders, errors = heavy_imports(["clean_probe", "light_probe", "heavy_probe"],
                                      ours=["clean_probe", "light_probe", "heavy_probe"], path=tmp_path)
    assert not errors
    assert offenders == {"light_probe": {"httpx": "heavy_probe"}, "heavy_probe": {"httpx": "heavy_probe"}}
