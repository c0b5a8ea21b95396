"""The PromQL of the dashboards in infra/grafana/dashboards/: read from the JSON, with Grafana's variables
substituted, so tests can run each expression against a real Prometheus."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"
PROMETHEUS_YML = ROOT / "infra" / "prometheus" / "prometheus.yml"
# Grafana's built-in range variables, as Grafana would expand them for a short window on a 1 s scrape.
BUILTINS = {"__rate_interval": "1m", "__interval": "2s", "__range": "15m"}
# A dashboard variable set to "All" matches any value; the tests use `.+` (not Grafana's `.*`), so a filter on a
# misspelled label (absent from every series) matches nothing instead of everything.
ANY = ".+"
LABEL_VALUES = re.compile(r"^label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)$")


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    expr: str          # as written in the dashboard
    promql: str        # with variables substituted: ready for /api/v1/query_range
    legend_labels: tuple[str, ...]  # labels the legend format shows: the result must carry them

    @property
    def name(self) -> str:
        return f"{self.dashboard}: {self.panel}: {self.expr}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(dash: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out += p.get("panels", [])
    return out


def variables(dash: dict) -> list[dict]:
    return dash.get("templating", {}).get("list", [])


def substitute(expr: str, names: set[str]) -> str:
    """`expr` with Grafana's builtins and the dashboard's variables ($x, ${x}, [[x]]) replaced. Raises
    ValueError for a variable the dashboard does not define."""
    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in names:
            return ANY
        raise ValueError(f"undefined variable ${name} in {expr!r}")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def queries(path: Path) -> list[Query]:
    """Every panel target's expression, and every query variable as `group by (label) (metric)`."""
    dash = json.loads(path.read_text())
    names = {v["name"] for v in variables(dash)}
    out = []
    for p in panels(dash):
        for t in p.get("targets", []):
            legend = tuple(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
            out.append(Query(path.stem, p["title"], t["expr"], substitute(t["expr"], names), legend))
    for v in variables(dash):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = LABEL_VALUES.match(q.strip())
            if not m:
                raise ValueError(f"{path.name}: variable {v['name']}: only label_values(metric, label) is supported")
            metric, label = m.groups()
            out.append(Query(path.stem, f"variable {v['name']}", q, f"group by ({label}) ({substitute(metric, names)})",
                             (label,)))
    return out


def all_queries() -> list[Query]:
    return [q for f in dashboard_files() for q in queries(f)]


def config_metric_names() -> list[str]:
    """The OmniVL metric names that infra/prometheus/prometheus.yml mentions (wildcards like ray_data_* aside)."""
    text = PROMETHEUS_YML.read_text()
    return sorted(set(re.findall(r"\bray_omnivl_\w+\b(?!\*)", text)))
