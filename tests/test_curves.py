"""bench/curves.py: reading `learning.md` tables, the combined table and plot, bad inputs."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LEARNING_MD = """# Learning curve: recipes/x.yaml

machine: AMD EPYC, 2 cores; training wall time: {minutes} min; held-out problems: 200

| step | accuracy | format | tokens | reasoning words | reflection rate |
|---|---|---|---|---|---|
{rows}

## Base model vs last checkpoint

| metric | A | B |
|---|---|---|
| 60 | 99.0% | 1 |
"""


def load_curves():
    spec = importlib.util.spec_from_file_location("curves", REPO / "bench" / "curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(path: Path, accuracies: dict[int, float], minutes: float) -> Path:
    rows = "\n".join(f"| {s} | {a:.1f}% | 100.0% | 20.0 | 5.0 | 0.0% |" for s, a in accuracies.items())
    path.write_text(LEARNING_MD.format(minutes=minutes, rows=rows))
    return path


def test_reads_only_the_first_table_and_the_minutes(tmp_path):
    curves = load_curves()
    points, minutes = curves.read_curve(write_run(tmp_path / "a.md", {0: 45.0, 10: 48.5, 20: 62.0}, 32.6))
    assert points == [(0, 45.0), (10, 48.5), (20, 62.0)]  # the comparison table's "| 60 | 99.0% |" is not a point
    assert minutes == 32.6


def test_table_aligns_steps_and_reports_gains(tmp_path):
    curves = load_curves()
    a = curves.read_curve(write_run(tmp_path / "a.md", {0: 45.0, 10: 48.5, 20: 62.0, 30: 53.5}, 32.6))
    b = curves.read_curve(write_run(tmp_path / "b.md", {0: 45.0, 20: 40.0}, 20.0))
    lines = curves.table({"ds": a, "gspo": b}).splitlines()
    assert lines[0] == "| run | 0 | 10 | 20 | 30 | best − step 0 | last − step 0 | training |"
    assert lines[2] == "| ds | 45.0 | 48.5 | 62.0 | 53.5 | +17.0 | +8.5 | 32.6 min |"
    assert lines[3] == "| gspo | 45.0 |  | 40.0 |  | +0.0 | -5.0 | 20.0 min |"


def test_main_writes_plot_and_table(tmp_path, capsys):
    curves = load_curves()
    run = write_run(tmp_path / "a.md", {0: 45.0, 10: 50.0}, 10.0)
    curves.main(["--out", str(tmp_path / "out" / "cmp"), f"x=1={run}"])  # a label may hold '='
    assert (tmp_path / "out" / "cmp.png").stat().st_size > 1000
    assert (tmp_path / "out" / "cmp.md").read_text().splitlines()[2].startswith("| x=1 | 45.0 | 50.0 |")
    assert "written:" in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [("nolabel.md", "expected LABEL="), ("a=/no/such.md", "no such file")])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, spec, message):
    curves = load_curves()
    with pytest.raises(SystemExit) as exit_info:
        curves.main(["--out", str(tmp_path / "o"), spec])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o.md").exists()


def test_a_file_without_a_curve_is_refused(tmp_path, capsys):
    curves = load_curves()
    (tmp_path / "x.md").write_text("# nothing here\n")
    with pytest.raises(SystemExit) as exit_info:
        curves.read_curve(tmp_path / "x.md")
    assert exit_info.value.code == 2 and "no learning-curve table" in capsys.readouterr().err
