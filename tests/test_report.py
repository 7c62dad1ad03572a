"""The report on fabricated run directories: known numbers give known rows and correlations."""

import csv
import json
import logging
import math

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from lit_robust.study.report import main, make_report
from lit_robust.study.statistics import correlation as pearson

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUNS = {  # name: (test rerr_pgd, test rloss, train rloss, avg_rloss flatness, worst_rloss, avg_loss)
    "digits_at": (0.40, 1.60, 0.30, 1.20, 3.0, 0.10),
    "digits_trades": (0.30, 1.20, 0.60, 0.80, 2.5, 0.20),
    "digits_awp": (0.25, 1.00, 0.70, 0.50, 1.0, 0.05),
    "digits_clip": (0.35, 1.40, 0.50, 0.90, 2.0, 0.15),
}


def fabricate(root, name, values, epochs=5):
    rerr, rloss, rloss_train, avg, worst, avg_loss = values
    run = root / name / "version_0"
    run.mkdir(parents=True)
    metrics = {"test/err": rerr / 2, "test/rerr_pgd": rerr, "test/rloss_pgd": rloss,
               "test/rloss_pgd_train": rloss_train, "test/rerr_pgd_train": rerr / 3, "flatness/avg_rloss": avg,
               "flatness/worst_rloss": worst,
               "flatness/avg_loss": avg_loss, "epoch": epochs - 1}
    (run / "metrics.json").write_text(json.dumps(metrics))
    writer = SummaryWriter(str(run))
    for epoch in range(epochs):
        writer.add_scalar("val/rloss", rloss * (0.5 + 0.1 * epoch), epoch)
        writer.add_scalar("flatness/avg_rloss", avg * (0.5 + 0.1 * epoch), epoch)
    writer.add_scalar("flatness/avg_rloss", avg, epochs - 1)  # the test's measure, at the last epoch's step
    writer.close()
    return str(run)


@pytest.fixture
def runs(tmp_path):
    return [fabricate(tmp_path / "logs", name, values) for name, values in RUNS.items()]


def test_epoch_pairs_take_the_epochs_value_not_the_tests(runs):
    from lit_robust.study.report import epoch_pairs
    from lit_robust.study.runs import load_run

    pairs = epoch_pairs(load_run(runs[0]))
    rloss, avg = RUNS["digits_at"][1], RUNS["digits_at"][3]
    assert len(pairs) == 5
    assert pairs[-1] == pytest.approx((avg * 0.9, rloss * 0.9))


def test_pearson_against_definition():
    x, y = [1.0, 2.0, 3.0, 5.0], [2.0, 1.0, 4.0, 3.0]
    xm, ym = np.mean(x), np.mean(y)
    r = sum((a - xm) * (b - ym) for a, b in zip(x, y)) / math.sqrt(
        sum((a - xm) ** 2 for a in x) * sum((b - ym) ** 2 for b in y))
    assert pearson(x, y, "Pearson") == pytest.approx(r)
    assert math.isnan(pearson([1, 2], [3, 4], "Pearson"))
    assert pearson([1, 2, 3, float("nan")], [1, 2, 3, 7], "Pearson") == pytest.approx(1.0)


def test_table_rows_and_correlations(runs, tmp_path):
    out = tmp_path / "report"
    summary = make_report(runs, str(out))
    rows = list(csv.reader(open(out / "table.csv")))
    assert rows[0][:3] == ["Method", "Err (test)", "RErr PGD (test)"]
    assert [row[0] for row in rows[1:]] == ["digits_awp", "digits_trades", "digits_clip", "digits_at"]
    awp = dict(zip(rows[0], rows[1]))
    assert awp["RErr PGD (test)"] == "0.250" and awp["Avg RLoss"] == "0.500" and awp["Worst RLoss"] == "1.000"
    assert awp["RErr AA (test)"] == ""  # not measured: empty, not zero
    rloss = [v[1] for v in RUNS.values()]
    expected = np.corrcoef([v[3] for v in RUNS.values()], rloss)[0, 1]
    assert summary["pearson"]["test/rloss_pgd vs flatness/avg_rloss"] == pytest.approx(expected)
    gap = [v[1] - v[2] for v in RUNS.values()]
    assert summary["pearson"]["rloss gap vs flatness/avg_rloss"] == pytest.approx(
        np.corrcoef([v[3] for v in RUNS.values()], gap)[0, 1])
    md = (out / "table.md").read_text()
    assert md.count("\n") == len(RUNS) + 2 and "| digits_awp |" in md
    for path in summary["figures"].values():
        with open(path, "rb") as f:
            assert f.read(8) == PNG_MAGIC
    assert list(out.glob("events.out.tfevents.*"))  # the figures in TensorBoard too


def test_command_line(runs, tmp_path, capsys):
    main(runs + ["--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "fig1_rloss_vs_flatness.png").exists()
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "no metrics.json" in capsys.readouterr().err


def test_table_gives_the_rise_of_the_held_out_rloss_after_its_minimum(tmp_path):
    from lit_robust.study.report import COLUMNS, table_rows
    from lit_robust.study.runs import load_run

    run = tmp_path / "at" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test/rerr_pgd": 0.4, "robust_overfitting/best_rloss": 0.9,
                                                  "robust_overfitting/best_epoch": 52.0,
                                                  "robust_overfitting/final_rloss": 1.25}))
    header, row = table_rows([load_run(str(run))])
    titles = [title for title, _ in COLUMNS]
    assert row[1 + titles.index("Rise (held-out RLoss end - min)")] == "0.350"
    assert row[1 + titles.index("Min epoch")] == "52"
    assert row[1 + titles.index("Held-out RLoss min")] == "0.900"


# the runs' settings as LightningCLI writes them (config.yaml): learning rate and weight decay vary; the logger's
# name and the checkpoint a run resumed from are bookkeeping, not hyper-parameters
SETTINGS = {"digits_at": (0.1, 0.0), "digits_trades": (0.01, 0.0), "digits_awp": (0.1, 5e-4),
            "digits_clip": (0.01, 5e-4)}
CONFIG = """seed_everything: 0
trainer:
  logger:
    class_path: pytorch_lightning.loggers.TensorBoardLogger
    init_args: {{save_dir: logs, name: {name}}}
model:
  class_path: lit_robust.modules.PGDAT
  init_args: {{epsilon: 0.2}}
optimizer:
  class_path: torch.optim.SGD
  init_args: {{lr: {lr}, weight_decay: {wd}}}
ckpt_path: {ckpt}
"""


def test_measures_with_intervals_and_granulated_kendall_over_the_recorded_settings(runs, tmp_path, capsys):
    from scipy.stats import kendalltau, spearmanr

    for path, name in zip(runs, RUNS):
        lr, wd = SETTINGS[name]
        ckpt = "null" if name == "digits_at" else f"{path}/checkpoints/last.ckpt"
        (tmp_path / path / "config.yaml").write_text(CONFIG.format(name=name, lr=lr, wd=wd, ckpt=ckpt))
    out = tmp_path / "measures"
    summary = make_report(runs, str(out), resamples=200)
    assert summary["axes"] == ["optimizer.lr", "optimizer.weight_decay"]  # the settings that vary
    table = list(csv.reader(open(out / "measures.csv")))
    rows = {row[0]: dict(zip(table[0], row)) for row in table[1:]}
    avg = rows["flatness/avg_rloss"]
    flatness, rloss = [v[3] for v in RUNS.values()], [v[1] for v in RUNS.values()]
    assert float(avg["Spearman RLoss (test)"]) == pytest.approx(spearmanr(flatness, rloss).statistic, abs=1e-3)
    assert float(avg["Kendall RLoss (test) low"]) <= float(avg["Kendall RLoss (test)"]) <= \
        float(avg["Kendall RLoss (test) high"])
    # along lr the runs of equal weight decay: (at, trades) and (awp, clip); along weight decay those of equal lr
    names = list(RUNS)
    for axis, groups in (("optimizer.lr", [("digits_at", "digits_trades"), ("digits_awp", "digits_clip")]),
                         ("optimizer.weight_decay", [("digits_at", "digits_awp"), ("digits_trades", "digits_clip")])):
        taus = [kendalltau([flatness[names.index(n)] for n in group], [rloss[names.index(n)] for n in group]).statistic
                for group in groups]
        assert float(avg[f"Granulated Kendall RLoss (test) {axis}"]) == pytest.approx(np.mean(taus), abs=1e-3)
        low, high = (float(avg[f"Granulated Kendall RLoss (test) {axis} {part}"]) for part in ("low", "high"))
        assert low == pytest.approx(min(taus), abs=1e-3) and high == pytest.approx(max(taus), abs=1e-3)
    md = (out / "measures.md").read_text()
    assert "## RLoss gap" in md and "| Measure | Models | Pearson | Spearman | Kendall | psi optimizer.lr |" in md
    assert (out / "measures_ranking.png").read_bytes()[:8] == PNG_MAGIC

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out), size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    assert "report/measures_ranking" in events.Tags()["images"]
    assert any(tag.startswith("report/measures") for tag in events.Tags()["tensors"])  # measures.md as text

    main(runs + ["--out", str(tmp_path / "lr"), "--axes", "lr", "--resamples", "50"])
    header = next(csv.reader(open(tmp_path / "lr" / "measures.csv")))
    assert "Granulated Kendall RErr gap optimizer.lr" in header and "Psi RErr gap" in header
    assert not any("weight_decay" in column for column in header)
    with pytest.raises(SystemExit) as exit_:  # an axis the runs do not record: one line, nothing written
        main(runs + ["--out", str(tmp_path / "bad"), "--axes", "width"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("error:") == 1 and "optimizer.lr" in error
    assert not (tmp_path / "bad").exists()


def test_models_measured_perfectly_flat_are_named_in_a_warning(tmp_path):
    # a network collapsed to a constant prediction: no weight perturbation changes its loss, every measure is 0
    values = dict(RUNS, digits_collapsed=(0.90, 2.30, 2.30, 0.0, 0.0, 0.0))
    runs = [fabricate(tmp_path / "logs", name, v) for name, v in values.items()]
    make_report(runs, str(tmp_path / "out"), resamples=20)
    md = (tmp_path / "out" / "measures.md").read_text()
    warnings = [line for line in md.splitlines() if line.startswith("**Warning:**")]
    assert len(warnings) == 1 and "digits_collapsed" in warnings[0] and "digits_at" not in warnings[0]
    make_report(runs[:-1], str(tmp_path / "healthy"), resamples=20)
    assert "Warning" not in (tmp_path / "healthy" / "measures.md").read_text()


def test_runs_with_several_event_files_are_read_whole_without_a_line_per_file(tmp_path, caplog):
    import logging

    from lit_robust.study.runs import read_scalars

    run = fabricate(tmp_path, "digits_at", RUNS["digits_at"])
    writer = SummaryWriter(run)  # the test after fit writes a second event file into the run directory
    writer.add_scalar("test/rloss_pgd", 1.6, 4)
    writer.close()
    with caplog.at_level(logging.INFO):
        scalars = read_scalars(run)
    assert scalars["test/rloss_pgd"] == [(4, pytest.approx(1.6))] and len(scalars["val/rloss"]) == 5
    assert not [r for r in caplog.records if r.name.startswith("tensorboard")]


def test_the_log_names_each_measure_whose_intervals_left_out_constant_draws_with_its_counts(tmp_path, caplog):
    from lit_robust.study.measures_report import write_measure_report
    from lit_robust.study.statistics import MeasuredModel

    targets = [0.5, 0.2, 0.9, 1.0, 0.7]
    # "flatness/tied" has one value for four of the five models: draws of only those are constant; "flatness/
    # varied" differs between all models: no draw of two or more distinct models is constant
    models = [MeasuredModel(f"m{i}", {"flatness/tied": float(i == 4), "flatness/varied": float(i)},
                            {"RLoss (test)": t}, {}) for i, t in enumerate(targets)]
    with caplog.at_level(logging.INFO, logger="lit_robust.study.measures_report"):
        report = write_measure_report(models, str(tmp_path), resamples=300, seed=3)
    tied = next(s for s in report["statistics"] if s.measure == "flatness/tied")
    varied = next(s for s in report["statistics"] if s.measure == "flatness/varied")
    counts = [e.degenerate for e in tied.correlations.values()]
    assert min(counts) > 0
    lines = [r.getMessage() for r in caplog.records if "constant measure or target" in r.getMessage()]
    assert len(lines) == 1
    assert f"flatness/tied ({len(counts)} of {len(counts)}, up to {max(counts)} draws)" in lines[0]
    assert ("flatness/varied" in lines[0]) == any(e.degenerate for e in varied.correlations.values())
