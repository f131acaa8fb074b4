"""The package stands on its own: no import cycles, its data installed with it, nothing read from outside."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "golden_ptq")


def _modules():
    found = {}
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                found[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    return found


def import_graph():
    """module -> the golden_ptq modules it names in an import (at any depth of its code)."""
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_lower_layers_do_not_import_higher_ones():
    """quant math is pure; config, io and parallel know nothing of networks, cells or algorithms."""
    rules = {"golden_ptq.quant_math": ("golden_ptq.",), "golden_ptq.config": ("golden_ptq.io", "golden_ptq.networks",
             "golden_ptq.algorithm", "golden_ptq.quant_cells", "golden_ptq.parallel"),
             "golden_ptq.io": ("golden_ptq.networks", "golden_ptq.algorithm", "golden_ptq.quant_cells"),
             "golden_ptq.parallel": ("golden_ptq.networks", "golden_ptq.algorithm", "golden_ptq.quant_cells",
                                     "golden_ptq.io")}
    for module, targets in import_graph().items():
        for layer, forbidden in rules.items():
            if module == layer or module.startswith(layer + "."):
                bad = [t for t in targets if t.startswith(forbidden) and not t.startswith(layer)]
                assert not bad, f"{module} imports {bad[0]}, a higher layer"


def test_nothing_reads_outside_the_repository():
    for folder in ("golden_ptq", "tests", "samples", "benchmarks"):
        for root, _, names in os.walk(os.path.join(REPO, folder)):
            for name in names:
                if name.endswith(".py") and name != "test_packaging.py":
                    text = open(os.path.join(root, name), encoding="utf-8").read()
                    assert "../shared" not in text and "shared/data" not in text, f"{root}/{name} reads ../shared"


def test_installed_package_finds_its_data(tmp_path):
    """A plain (non-editable) install carries the configs, the text and the compiled kernels: run from
    outside the checkout, with an empty kernel cache that must stay empty (nothing compiled at first use)."""
    source, target = tmp_path / "src", tmp_path / "site"
    shutil.copytree(REPO, source, symlinks=True,  # a copy: building leaves build/ behind
                    ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "golden_ptq_out", "runs"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(source)], capture_output=True, text=True)
    if install.returncode != 0 and "No module named" in install.stderr and "wheel" in install.stderr:
        pytest.skip("optional dependency 'wheel' (needed to build without isolation) is not installed")
    assert install.returncode == 0, install.stderr[-2000:]
    code = ("import os, golden_ptq\n"
            "from golden_ptq.deploy import packaged_quant_config, default_network_config\n"
            "from golden_ptq.eval.corpus import corpus_split\n"
            "assert golden_ptq.__file__.startswith(os.environ['TARGET']), golden_ptq.__file__\n"
            "assert os.path.isfile(packaged_quant_config('a8w8_dynamic'))\n"
            "assert os.path.isfile(default_network_config())\n"
            "assert corpus_split('evaluation').strip()\n"
            "import golden_ptq.cli\n"
            "golden_ptq.cli.build_parser()\n"
            "from golden_ptq.kernels import kernel_info\n"
            "from golden_ptq.kernels.float_prefill import float_prefill_ops\n"
            "info = kernel_info()\n"
            "assert info.available and info.library.startswith(os.environ['TARGET']), info\n"
            "assert float_prefill_ops() is not None\n"
            "assert not os.path.exists(os.environ['XDG_CACHE_HOME']), os.listdir(os.environ['XDG_CACHE_HOME'])\n"
            "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=str(target), TARGET=str(target), XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    installed = {os.path.relpath(os.path.join(root, name), target) for root, _, names in os.walk(target / "golden_ptq")
                 for name in names if name.endswith(".py")}
    in_repo = {os.path.relpath(path, REPO) for path in _modules().values()}
    assert in_repo <= installed, f"not installed: {sorted(in_repo - installed)[:5]}"
