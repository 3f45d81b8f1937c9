"""deploy/: the Grafana dashboard queries only metrics that a hub or the worker really exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import Proc, free_port
from tests.support import scrape

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "streamhub-dashboard.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords,
    label names (in `{…}` or `by (…)`), durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word in KEYWORDS or re.fullmatch(r"\d.*|e\d*", word):
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_the_expression_parser_finds_metrics_only() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, instance) (rate(streamhub_x_bucket{job="a b"}[1m]))) / 8 * y_total'
    assert metric_names(expr) == {"streamhub_x_bucket", "y_total"}
    assert metric_names("max by (state) (streamhub_callback_outbox)") == {"streamhub_callback_outbox"}


def test_the_scrape_config_lists_both_kinds_of_target() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"streamhub-hub", "streamhub-worker"}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    assert len(jobs["streamhub-hub"]["static_configs"][0]["targets"]) == 3


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_every_metric_the_dashboard_queries_is_exposed(
    hub_factory: Callable[..., Proc], worker_factory: Callable[..., Proc]
) -> None:
    hub = hub_factory()
    port = free_port()
    worker_factory(STREAMHUB_WORKER_METRICS_PORT=port)
    exposed = {name for name, _ in scrape(f"{hub.http}/metrics")} | {
        name for name, _ in scrape(f"http://127.0.0.1:{port}/metrics")
    }
    queried = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    assert len(queried) >= 18
    assert queried - exposed == set()
