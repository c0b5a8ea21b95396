"""Offline checks of the Grafana files: every dashboard target is PromQL over metrics the code exports, uses
only variables it defines, and the provisioned datasource is the one the panels name."""

from __future__ import annotations

import json

import yaml

from grafana_queries import DASHBOARDS, ROOT, all_queries, dashboard_files, panels, substitute, variables

GRAFANA = ROOT / "infra" / "grafana"


def test_three_dashboards_with_unique_uids_and_panel_ids():
    dashes = [json.loads(f.read_text()) for f in dashboard_files()]
    assert {d["uid"] for d in dashes} == {"omnivl-training", "omnivl-data", "omnivl-serving"}
    for d in dashes:
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), d["uid"]
        assert all(p.get("targets") for p in panels(d)), d["uid"]


def test_every_target_names_an_omnivl_metric_and_defined_variables():
    qs = all_queries()  # raises on an undefined variable
    assert len(qs) >= 25
    for q in qs:
        assert "ray_omnivl_" in q.promql, q.name
        assert "$" not in q.promql and "[[" not in q.promql, q.name


def test_undefined_variable_is_an_error():
    import pytest

    with pytest.raises(ValueError, match=r"\$stag"):
        substitute('ray_omnivl_train_loss{stage=~"$stag"}', {"stage"})


def test_provisioning_points_the_dashboards_at_the_provisioned_prometheus():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert [d["type"] for d in ds] == ["prometheus"]
    uid = ds[0]["uid"]
    for f in dashboard_files():
        d = json.loads(f.read_text())
        used = [p["datasource"] for p in panels(d)] + [t["datasource"] for p in panels(d) for t in p["targets"]]
        used += [v["datasource"] for v in variables(d) if v.get("type") == "query"]
        assert {u["uid"] for u in used} == {uid} and {u["type"] for u in used} == {"prometheus"}, f.name
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "omnivl.yaml").read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"] and providers[0]["options"]["path"]
    assert DASHBOARDS.is_dir()
