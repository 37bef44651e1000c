import json
import math
import re

import pytest
import torch

from reasonrl.plot import plot_run, plot_runs
from reasonrl.tracking import Tracker, read_metrics


def tracker(run_dir, **kw) -> Tracker:
    return Tracker(run_dir, kw.pop("report_to", []), {"algo": {"name": "grpo"}}, total_steps=10, progress=False, **kw)


def log_steps(run_dir, steps, **kw) -> None:
    with tracker(run_dir, **kw) as t:
        for s in steps:
            t.log(s, {"reward": 0.1 * s, "loss": 1.0 / s})


def test_lines_are_written_and_read_back(tmp_path):
    with tracker(tmp_path) as t:
        t.log(1, {"reward": 0.5, "completions/mean_length": 12})
        t.log(2, {"reward": 0.123456789, "eval/accuracy": torch.tensor(0.75)})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == read_metrics(tmp_path)
    assert read_metrics(tmp_path) == [
        {"step": 1, "reward": 0.5, "completions/mean_length": 12},
        {"step": 2, "reward": 0.123457, "eval/accuracy": 0.75},
    ]


def test_each_log_is_flushed_before_close(tmp_path):
    t = tracker(tmp_path)
    t.log(1, {"reward": 1.0})
    assert read_metrics(tmp_path) == [{"step": 1, "reward": 1.0}]
    t.close()
    t.close()


def test_nan_and_inf_are_written_as_null(tmp_path):
    with tracker(tmp_path) as t:
        t.log(1, {"loss": math.nan, "kl": math.inf, "reward": 0.0})
    assert (tmp_path / "metrics.jsonl").read_text().strip() == '{"step": 1, "loss": null, "kl": null, "reward": 0.0}'


def test_resume_drops_steps_after_the_checkpoint(tmp_path):
    log_steps(tmp_path, range(1, 8))
    log_steps(tmp_path, range(5, 9), resume_step=4)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert not list(tmp_path.glob("*.tmp-*"))


def test_resume_tolerates_a_torn_last_line(tmp_path):
    log_steps(tmp_path, range(1, 4))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "rew')  # crash in the middle of a write
    log_steps(tmp_path, [4], resume_step=3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_fresh_run_replaces_old_metrics(tmp_path):
    log_steps(tmp_path, range(1, 4))
    log_steps(tmp_path, [1])
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


def test_unknown_report_to_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="tensorbord"):
        tracker(tmp_path, report_to=["tensorbord"])


def test_tensorboard_receives_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    log_steps(tmp_path, [1, 2], report_to=["tensorboard"])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_progress_bar_runs_with_live_fields(tmp_path):
    with Tracker(tmp_path, [], {}, total_steps=3, progress=True) as t:
        t.log(1, {"reward": 0.25})
        t.log(2, {"eval/accuracy": 0.5})
        fields = t._progress.tasks[0].fields
        assert (fields["reward"], fields["accuracy"], fields["turns"]) == ("0.250", "0.500", "")
        t.log(3, {"reward": 0.5, "turns/mean": 2.375})
        assert t._progress.tasks[0].fields["turns"] == "turns 2.375"
    assert len(read_metrics(tmp_path)) == 3


def write_metrics(run_dir, rows) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def full_rows() -> list[dict]:
    rows = []
    for s in range(1, 21):
        row = {"step": s, "reward": s / 20, "reward_std": 0.1, "completions/mean_length": 30 - s, "kl": 0.01 * s}
        row["entropy"] = None if s == 3 else 1.0 / s
        if s % 5 == 0:
            row |= {"eval/accuracy": s / 25, "eval/accuracy/level_1": s / 20, "eval/accuracy/level_10": s / 40}
        rows.append(row)
    return rows


def test_plot_run_writes_one_png_per_group_and_an_overview(tmp_path):
    write_metrics(tmp_path, full_rows())
    paths = plot_run(tmp_path)
    names = [p.name for p in paths]
    assert names == ["reward.png", "accuracy.png", "length.png", "kl.png", "entropy.png", "curves.png"]
    for p in paths:
        assert p.parent == tmp_path / "plots"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_plot_run_skips_absent_metrics(tmp_path):
    write_metrics(tmp_path, [{"step": s, "reward": 0.5, "loss": 1.0} for s in range(1, 4)])
    paths = plot_run(tmp_path, out_dir=tmp_path / "figs")
    assert [p.name for p in paths] == ["reward.png", "curves.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_plot_run_errors_clearly_on_missing_or_empty_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("metrics.jsonl")):
        plot_run(tmp_path)
    write_metrics(tmp_path, [])
    with pytest.raises(ValueError, match="empty"):
        plot_run(tmp_path)
    write_metrics(tmp_path, [{"step": 1, "loss": 1.0}])
    with pytest.raises(ValueError, match="none of the plotted metrics"):
        plot_run(tmp_path)


def test_plot_runs_compares_runs_and_skips_runs_without_the_metric(tmp_path):
    write_metrics(tmp_path / "a", full_rows())
    write_metrics(tmp_path / "b", [{"step": 1, "loss": 1.0}])
    out = plot_runs([tmp_path / "a", tmp_path / "b"], ["grpo", "sft"], "eval/accuracy", tmp_path / "cmp" / "acc.png")
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="none of the runs"):
        plot_runs([tmp_path / "b"], ["sft"], "eval/accuracy", tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels"):
        plot_runs([tmp_path / "a"], [], "reward", tmp_path / "x.png")


@pytest.mark.parametrize("backend", ["wandb", "trackio"])
def test_missing_backend_says_how_to_install_it(tmp_path, monkeypatch, backend):
    monkeypatch.setitem(__import__("sys").modules, backend, None)  # makes `import backend` fail
    with pytest.raises(ImportError, match=f"pip install {backend}"):
        tracker(tmp_path, report_to=[backend])


def test_regenerated_reports_keep_their_hand_written_notes(tmp_path):
    from reasonrl.plot import write_keeping_notes

    page, marker = tmp_path / "result.md", "<!-- notes: kept -->"
    write_keeping_notes(page, "# numbers v1", marker)
    assert page.read_text() == "# numbers v1\n<!-- notes: kept -->\n"  # a fresh page gets the marker
    page.write_text(page.read_text() + "hand-written analysis\n")
    write_keeping_notes(page, "# numbers v2", marker)
    assert page.read_text() == "# numbers v2\n<!-- notes: kept -->\nhand-written analysis\n"
