"""Imports: vdcli's modules are layers, each importing only the ones below it, each importable alone.

The import graph is read from the source with ``ast``: module A depends on module B when A's
file holds an ``import vdcli.B`` or ``from vdcli.B import ...`` (``from vdcli import B`` when B is
a module) anywhere: at the top, or inside a function. A function-level import that closes a
circle is still a circle (it only defers the failure to the call), so it counts; a function-level
import kept to make ``vd --help`` fast points downward, from the CLI into the library, and closes
none. A package's ``__init__`` is a module like the others (``vdcli.cli`` imports its command
modules); importing a package's child does not count as depending on the package.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vdcli"


def modules() -> dict[str, Path]:
    """{dotted name: file} of every vdcli module, packages by their ``__init__``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The vdcli modules ``path`` imports, wherever in the file the import statement stands."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.split(".")[0] == "vdcli"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "vdcli":
            for alias in node.names:  # `from vdcli import images` imports the module vdcli.images
                child = f"{node.module}.{alias.name}"
                out.add(child if child in known else node.module)
    return {m for m in out if m in known}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): each a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def topological_order(graph: dict[str, set[str]]) -> list[str]:
    """Every module after all it imports (a circle's modules in name order, wherever it stands)."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(v: str) -> None:
        if v in seen:
            return
        seen.add(v)
        for w in sorted(graph[v]):
            visit(w)
        done.append(v)

    for v in sorted(graph):
        visit(v)
    return done


def test_the_graph_reader_sees_imports_at_the_top_and_inside_functions(tmp_path):
    known = {"vdcli.a": None, "vdcli.b": None, "vdcli.c": None, "vdcli": None}
    source = tmp_path / "x.py"
    source.write_text("import torch\nfrom vdcli.a import f\nfrom vdcli import b\n\ndef g():\n    import vdcli.c\n")
    assert imports_of(source, known) == {"vdcli.a", "vdcli.b", "vdcli.c"}
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_vdcli_modules_import_each_other_round_a_circle():
    graph = import_graph()
    edges = sorted((a, b) for component in circles(graph) for a in component for b in graph[a] if b in component)
    assert not edges, "import circles: " + "; ".join(f"{a} -> {b}" for a, b in edges)


# Run in a fresh interpreter: import the third-party libraries vdcli uses (torch takes seconds
# here, vdcli's own modules milliseconds), then fork once per module, so that each vdcli module is
# the first of vdcli imported in its own process, in the order given on stdin. __main__ runs the
# CLI: it is imported with --version and exits 0.
IMPORT_EACH = """
import importlib, json, os, sys, traceback
for lib in ("torch", "torch.nn.functional", "PIL.Image", "pydantic", "typer", "yaml", "safetensors.torch", "tokenizers"):
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
failed = {}
for name in sys.stdin.read().split():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        sys.argv = ["vd", "--version"]
        try:
            importlib.import_module(name)
            code = 0
        except SystemExit as e:
            code = 0 if e.code in (0, None) else 1
        except BaseException:
            os.write(write, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        why = pipe.read().decode()
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]):
        failed[name] = why or "exited with an error"
print("FAILED " + json.dumps(failed))
"""


def test_every_vdcli_module_imports_alone_in_a_fresh_interpreter():
    """Lowest layer first, so the first failure is the module at fault, not one that imports it."""
    order = topological_order(import_graph())
    assert order.index("vdcli.errors") < order.index("vdcli.data") < order.index("vdcli.tasks.ldm")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", IMPORT_EACH], input="\n".join(order), env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    failed = json.loads(run.stdout.rsplit("FAILED ", 1)[1])
    assert not failed, "\n".join(f"import {name}: {why}" for name, why in failed.items())
