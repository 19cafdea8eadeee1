"""bench/check_claims.py: every measured figure in README.md and docs/ has its source (issue #32)."""

import subprocess
import sys
from pathlib import Path

from tests.bench_scripts import load_bench

REPO = Path(__file__).resolve().parents[1]




def test_every_tagged_figure_in_the_repository_has_its_source():
    run = subprocess.run([sys.executable, str(REPO / "bench" / "check_claims.py")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def fake_repo(tmp_path: Path, results: str, docs: str = "") -> Path:
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "curve.md").write_text("| step | accuracy |\n|---|---|\n| 0 | 31.0% |\n| 60 | 98.5% |\n")
    (tmp_path / "bench" / "step_vs_trl.py").write_text("")
    (tmp_path / "README.md").write_text("# x\n\n## Results so far\n\n" + results + "\n## Quick start\n\n- 42.0 % here is not a claim.\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(docs)
    return tmp_path


def check(root: Path) -> list[str]:
    return load_bench("check_claims").check([root / "README.md", *sorted((root / "docs").glob("*.md"))], root)


def test_a_backed_and_a_marked_figure_pass(tmp_path):
    root = fake_repo(tmp_path, "- **A** ([curve](bench/results/curve.md)): 31.0 % to **98.5 %** in 60 steps.\n"
                               "  Seed 2 ended at 96.5 % in a run whose output was not kept.\n"
                               "- **Speed**: 1.64–2.15× faster (`python bench/step_vs_trl.py`).\n")
    assert check(root) == []


def test_an_unbacked_figure_is_reported(tmp_path):
    root = fake_repo(tmp_path, "- **A** ([curve](bench/results/curve.md)): 31.0 % to 98.5 %, then 42.0 % at step 70.\n")
    problems = check(root)
    assert len(problems) == 1 and problems[0].startswith("README.md:5: 42.0 % is in none of curve.md"), problems
    run = subprocess.run([sys.executable, str(REPO / "bench" / "check_claims.py"), "--root", str(root)], capture_output=True, text=True)
    assert run.returncode == 1 and "42.0 %" in run.stdout


def test_a_results_bullet_without_a_source_and_a_missing_file_are_reported(tmp_path):
    root = fake_repo(tmp_path, "- **B**: 10.7 minutes to step 10.\n- **C** ([gone](bench/results/gone.md)): nothing.\n")
    problems = check(root)
    assert any("README.md:5: a results bullet that links no bench/results file" in p for p in problems), problems
    assert any("README.md:6: links gone.md, which does not exist" in p for p in problems), problems


def test_docs_tables_settings_and_ranges(tmp_path):
    docs = ("Curve ([file](../bench/results/curve.md)) at T 0.7, `lr=0.3`, ≥ 95 % targeted:\n\n"
            "| run | 0 | 60 | training |\n|---|---|---|---|\n| ours | 31.0 | 98.5 | 12.5 min |\n"
            "| lost (output not kept) | 31.0 | 77.7 | 9.9 min |\n\nText 31.0–98.5 % and 55.5 % ([f](../bench/results/curve.md)).\n")
    problems = check(fake_repo(tmp_path, "- **A** ([curve](bench/results/curve.md)): 98.5 %.\n", docs))
    assert problems == [
        "docs/page.md:5: 12.5 min is in none of curve.md (link the file it comes from, or say in its sentence that the output was not kept)",
        "docs/page.md:8: 55.5 % is in none of curve.md (link the file it comes from, or say in its sentence that the output was not kept)",
    ]
