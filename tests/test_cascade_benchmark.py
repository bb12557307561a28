"""benchmarks/cascade.py's pieces on synthetic members: the configurations it scores, the compute it counts,
the target it checks; and its skip without the shared real data."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("cascade_bench", BENCH / "cascade.py")
cascade = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(cascade)


def _members(n=400, seed=0):
    """A baseline sure and right on 60% of the rows, unsure elsewhere; a probe right 80% of the time everywhere."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    hard = rng.random(n) < 0.4
    base = np.where(hard, 0.5 + rng.normal(0, 0.02, n), 0.85)
    probe = np.where(rng.random(n) < 0.8, 0.7, 0.3)
    members = {}
    for name, p_true in (("feature baseline", base), ("probe", probe)):
        p_a = np.where(labels == 0, p_true, 1 - p_true)
        members[name] = np.stack([p_a, 1 - p_a], axis=1)
    return members, labels


def test_cascades_count_the_probe_rows_and_meet_the_target_on_members_that_call_for_one():
    members, labels = _members()
    ids = np.array([f"r{i:03d}" for i in range(len(labels))])
    folds = np.arange(len(labels)) % 4
    configs = cascade.configurations(members, labels, folds, ids, [0.2, 0.4], "log_odds")
    assert list(configs) == ["feature baseline", "probe", "full blend", "cascade 0.2", "cascade 0.4"]
    assert [share for _, share in configs.values()] == [0.0, 1.0, 1.0, 0.2, 0.4]
    rows = cascade.table(configs, labels, base_s=1.0, llm_s_per_row=0.5)
    by = {r["config"]: r for r in rows}
    assert by["probe"]["seconds"] == 0.5 * 400 and by["cascade 0.2"]["seconds"] == 1.0 + 0.5 * 80
    assert by["cascade 0.4"]["accuracy"] > by["feature baseline"]["accuracy"]
    assert by["full blend"]["vs_full"] == 0 and by["full blend"]["vs_full_ci"] == [0.0, 0.0]
    hit = cascade.target(rows)
    assert hit is not None and hit["llm_share"] <= 0.5
    assert all(r["accuracy"] < by["full blend"]["accuracy_ci"][0] for r in rows
               if r["config"].startswith("cascade") and r["llm_rows"] < hit["llm_rows"])
    assert "cascade 0.2" in cascade.to_text(rows, "title")


def test_without_the_shared_data_it_skips_with_its_reason(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "cascade.py"), "--set", f"data.train_path={tmp_path / 'x.csv'}",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "is absent" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"benchmark": "cascade", "skipped": True}


def test_any_two_members_cascade_in_their_order_and_the_second_alone_pays_no_first_pass():
    members, labels = _members()
    renamed = {"small LLM (4 layers)": members["feature baseline"], "large LLM (all layers)": members["probe"]}
    ids = np.array([f"r{i:03d}" for i in range(len(labels))])
    configs = cascade.configurations(renamed, labels, np.arange(len(labels)) % 4, ids, [0.3], "log_odds")
    assert list(configs) == [*renamed, "full blend", "cascade 0.3"]
    by = {r["config"]: r for r in cascade.table(configs, labels, base_s=20.0, llm_s_per_row=0.5)}
    assert by["large LLM (all layers)"]["seconds"] == 0.5 * 400 and by["small LLM (4 layers)"]["seconds"] == 20.0
    assert by["cascade 0.3"]["seconds"] == 20.0 + 0.5 * 120
    assert "large LLM (all layers)" in cascade.to_text(list(by.values()), "title")
