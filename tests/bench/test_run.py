"""bench/run.py's hub variants: `uvicorn:N` is the documented one-port, process-per-core command.

Not a timing test: it checks the command lines the bench starts and how it reports the workers' split.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from streamhub.servers import hub_command
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def bench_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uvicorn_colon_n_runs_n_workers_on_one_port_with_the_production_flags(bench_run: ModuleType) -> None:
    cmd, root = bench_run.hub_variant("uvicorn:2", 8123)
    assert root == ROOT
    assert cmd == hub_command("uvicorn", 8123, python=sys.executable, quiet=True, workers=2)
    assert cmd[cmd.index("--workers") + 1] == "2" and cmd[cmd.index("--port") + 1] == "8123"
    one, _ = bench_run.hub_variant("uvicorn", 8123)
    assert "--workers" not in one


def test_a_tree_and_a_worker_count_combine(bench_run: ModuleType, tmp_path: object) -> None:
    cmd, root = bench_run.hub_variant(f"uvicorn:3@{tmp_path}", 8124)
    assert str(root) == str(tmp_path) and cmd[cmd.index("--workers") + 1] == "3"


@pytest.mark.parametrize("spec", ["daphne:2", "uvicorn:0", "uvicorn:two", "reference:2"])
def test_workers_are_refused_where_they_mean_nothing(bench_run: ModuleType, spec: str) -> None:
    with pytest.raises(SystemExit, match="NAME:N takes uvicorn"):
        bench_run.hub_variant(spec, 8125)


def test_the_split_lists_the_busy_processes_of_the_variant_asked_for(bench_run: ModuleType) -> None:
    result = {"server": "uvicorn:2", "process_cpu_pct": {10: 0.2, 11: 41.5, 12: 38.0, 20: 55.0}}
    # the supervisor (0.2 %) is left out; the busiest first
    assert bench_run.process_split(result, "uvicorn:2", [10, 11, 12]).endswith(": 41.5, 38.0")
    assert "55.0" in bench_run.process_split(result)
    assert bench_run.process_split(result, "uvicorn", [20]) == ""  # one process: nothing to split
