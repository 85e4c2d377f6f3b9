"""Seeded runs compared with Welch's interval (dropmae.analysis.seed_comparison)."""

import json
import re

import numpy as np
import pytest

from dropmae.analysis.seed_comparison import compare_groups, differences_markdown


def _write(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _track(name, val, unseen):
    return {"step": "track", "name": name, "demo": {"ao": val, "sr50": 0.5}, "demo_unseen": {"ao": unseen}}


def test_difference_and_interval_match_welchs_formula(tmp_path):
    ours, theirs = [0.30, 0.34, 0.29], [0.25, 0.27, 0.30, 0.26]
    results = _write(tmp_path / "results.jsonl",
                     [_track(f"a_s{i}", v, v) for i, v in enumerate(ours)]
                     + [_track(f"b_s{i}", v, 0.1 + v) for i, v in enumerate(theirs)]
                     + [{"step": "pretrain", "name": "a_s9", "last_loss": 0.8}])  # not scored: ignored
    differences = compare_groups(results, "a_s*", "b_s*")
    assert [d.benchmark for d in differences] == ["demo", "demo_unseen"]
    val = differences[0]
    a, b = 100 * np.array(ours), 100 * np.array(theirs)
    assert val.difference == pytest.approx(a.mean() - b.mean())
    # Welch: standard error from each group's own variance, Welch-Satterthwaite degrees of freedom
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    from scipy.stats import t
    half = t.ppf(0.975, dof) * np.sqrt(va + vb)
    assert (val.low, val.high) == pytest.approx((val.difference - half, val.difference + half))
    assert val.runs == ("a_s0", "a_s1", "a_s2") and len(val.baseline_runs) == 4
    assert differences[1].difference == pytest.approx(a.mean() - b.mean() - 10.0)
    assert "| demo | 31.0 (n=3) | 27.0 (n=4) | +4.0 |" in differences_markdown(differences, "a_s*", "b_s*")


def test_a_rerun_replaces_the_earlier_record_of_its_name(tmp_path):
    results = _write(tmp_path / "results.jsonl", [_track("a_s0", 0.1, 0.1), _track("a_s1", 0.2, 0.2),
                                                  _track("b_s0", 0.3, 0.3), _track("b_s1", 0.35, 0.35),
                                                  _track("a_s0", 0.4, 0.4)])
    assert compare_groups(results, "a_*", "b_*")[0].mean == pytest.approx(30.0)


@pytest.mark.parametrize("records, pattern, against, message", [
    ([_track("a_s0", 0.3, 0.3), _track("a_s1", 0.3, 0.3)], "a_*", "rnd_*", "no scored run's name matches 'rnd_*'"),
    ([_track("a_s0", 0.3, 0.3), _track("a_s1", 0.3, 0.3), _track("b_s0", 0.3, 0.3)], "a_*", "b_*",
     "'b_*' has 1 run(s) scored on 'demo'"),
    ([_track("a_s0", 0.3, 0.3), _track("a_s1", 0.3, 0.3), {"step": "segment", "name": "b_s0", "demo": {"jf": 0.5}}],
     "a_*", "b_*", "'a_*' reports ao but 'b_*' reports jf"),
    ([_track("a_s0", 0.3, 0.3), _track("a_s1", 0.3, 0.3), _track("ab_s0", 0.3, 0.3)], "a*", "ab_*",
     "'a*' and 'ab_*' both match ['ab_s0']"),
])
def test_bad_groups_are_named(tmp_path, records, pattern, against, message):
    results = _write(tmp_path / "results.jsonl", records)
    with pytest.raises(ValueError, match=re.escape(message)):
        compare_groups(results, pattern, against)


def test_missing_file_and_broken_line_are_named(tmp_path):
    with pytest.raises(ValueError, match="none.jsonl: no such file"):
        compare_groups(tmp_path / "none.jsonl", "a", "b")
    broken = tmp_path / "results.jsonl"
    broken.write_text(json.dumps(_track("a", 0.1, 0.1)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"results.jsonl, line 2: not valid JSON"):
        compare_groups(broken, "a", "b")
