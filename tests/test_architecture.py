"""The layering rules of docs/architecture.md, checked on every import statement of every module (those inside
functions and `if TYPE_CHECKING:` blocks included): core/ knows nothing of the ranker, common/ blocks are pure,
torchrec / fbgemm-gpu are imported only where the large tables and their ids are handled, and no modules import one
another in a cycle."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The modules that handle the large tables and their ids (relative to the repository root; folders end in /).
TORCHREC_ALLOWED = (
    "common/batch.py",  # the batch's sparse ids (KeyedJaggedTensor), when torchrec is installed
    "common/sparse_embeddings.py",  # the tables
    "core/distributed.py",  # DistributedModelParallel and the planner
    "core/embedding_autograd.py",  # fbgemm's dense lookup backward on CPU
    "core/optimizers.py",  # the tables' fused optimizer
    "core/sparse_optimizers.py",  # the data-parallel tables' optimizer
    "core/table_placement.py",  # planner constraints
    "core/train_pipeline.py",  # torchrec's train pipeline on CUDA
    "projects/home/recap/data/loader.py",  # sparse ids into a KeyedJaggedTensor
    "projects/home/recap/model/multi_task.py",  # the sparse lookup's output joins the dense input
    "projects/home/recap/model/synthetic_batch.py",  # random sparse ids for benchmarks
    "projects/home/recap/serving/build.py",  # the tables gathered from their shards
    "projects/home/recap/serving/tracing.py",  # the sparse ids of the export-time check's batch
    "projects/home/recap/gpu_check/",  # the sparse_* stages
)


def imported_modules(path: Path) -> list[str]:
    """Every module an import statement of this file names (absolute imports; relative ones resolve inside)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_the_checks_see_imports():
    # A check that finds nothing to check passes for the wrong reason.
    assert "torchrec" in {_top(m) for m in imported_modules(REPO / "common/sparse_embeddings.py")}
    assert len(_files("core")) > 10 and len(_files("common")) > 10


@pytest.mark.parametrize("path", _files("core"), ids=lambda p: str(p.relative_to(REPO)))
def test_core_knows_nothing_of_the_ranker(path):
    assert "projects" not in {_top(m) for m in imported_modules(path)}


@pytest.mark.parametrize("path", _files("common"), ids=lambda p: str(p.relative_to(REPO)))
def test_common_blocks_are_pure(path):
    found = {_top(m) for m in imported_modules(path)} & {"core", "projects", "pydantic", "yaml", "pyarrow"}
    assert not found, f"{path.relative_to(REPO)} imports {sorted(found)}"


def test_only_the_sparse_lookup_imports_torchrec():
    offenders = []
    for folder in ("core", "common", "projects"):
        for path in _files(folder):
            relative = path.relative_to(REPO).as_posix()
            if relative.startswith(TORCHREC_ALLOWED):
                continue
            if {_top(m) for m in imported_modules(path)} & {"torchrec", "fbgemm_gpu"}:
                offenders.append(relative)
    assert not offenders, f"torchrec/fbgemm_gpu imported outside the sparse lookup: {offenders}"


def _module_names() -> dict[str, Path]:
    """{dotted module name: file} of every module of core/, common/, projects/ and tools/ (a package by its name)."""
    out = {}
    for folder in ("core", "common", "projects", "tools"):
        for path in _files(folder):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}, every import statement counted (`from package import module`
    included), those inside functions and `if TYPE_CHECKING:` blocks too."""
    modules = _module_names()
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another, directly or through others (strongly connected components
    of more than one module), each sorted."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in order:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], order[other])
        if low[module] == order[module]:
            group = stack[stack.index(module):]
            del stack[stack.index(module):]
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return cycles


def test_the_cycle_check_finds_cycles():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "projects.home.recap.data.epoch_stream" in graph["projects.home.recap.data.loader"]


def test_no_module_imports_itself_through_others():
    # Type-only imports count: a type that two modules share lives in a module both import (data/mode.py).
    assert import_cycles(import_graph()) == []
