"""The self-correction detectors held to their measured agreement with a reader.

`tests/data/detector_labels.jsonl`: real completions (base model prompted to check and correct,
training and held-out traces, retry episodes' turns) and a marked minority written by hand,
labelled from the text alone by the rules in docs/traces.md. The figures below are the ones
measured when the set was committed (bench/results/detector_labels.md); a detector change that
loses agreement fails here, and a label must never be edited to make it pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_reasoning.traces import analyze
from rl_reasoning.traces.validation import LABELS, confusions, load_labelled
from tests.timing import assert_scales_linearly

SET = Path(__file__).parent / "data" / "detector_labels.jsonl"

# measured on the whole set (bench/results/detector_labels.md): (precision, recall), rounded down to 0.5 %
MEASURED = {"reflection": (0.975, 0.895), "revision": (0.905, 0.59), "verification": (0.96, 0.90)}
TARGET = (0.90, 0.80)  # the issue's; revision recall (0.593) misses it, see docs/self_correction.md


@pytest.fixture(scope="module")
def items():
    return load_labelled(SET)


@pytest.fixture(scope="module")
def table(items):
    return confusions(items)[0]


def test_the_set_is_big_enough_and_mostly_real(items):
    assert len(items) >= 300
    assert len({i["id"] for i in items}) == len(items)
    for label in LABELS:
        assert sum(i[label] for i in items) >= 50, label
    handwritten = [i for i in items if i.get("handwritten")]
    assert len(handwritten) < len(items) / 3
    assert all(i.get("source") for i in items)


@pytest.mark.parametrize("label", LABELS)
def test_detectors_keep_their_measured_precision_and_recall(table, label):
    precision, recall = MEASURED[label]
    c = table[label]
    assert c.precision >= precision and c.recall >= recall, (label, c)


@pytest.mark.parametrize("label", ["reflection", "verification"])
def test_detectors_meet_the_target_on_the_set(table, label):
    c = table[label]
    assert c.precision >= TARGET[0] and c.recall >= TARGET[1], (label, c)


def test_confusions_count_each_label_against_the_reader():
    items = [
        {"id": "a", "text": "<think>5 + 3 = 8.</think> <answer>8</answer>", "gold": "8",
         "reflection": False, "revision": False, "verification": False},
        {"id": "b", "text": "3 + 5 = 9. Wait, that is wrong. 3 + 5 = 8. The answer is 8.", "gold": "8",
         "reflection": True, "revision": True, "verification": False},
        {"id": "c", "text": "The wait time is 5 minutes, so the answer is 5.", "gold": "5",
         "reflection": True, "revision": False, "verification": True},  # two labels a detector rightly refuses
    ]
    table, misses = confusions(items)
    assert (table["reflection"].tp, table["reflection"].fn, table["reflection"].tn, table["reflection"].fp) == (1, 1, 1, 0)
    assert (table["revision"].tp, table["revision"].tn) == (1, 2) and table["revision"].precision == 1.0
    assert table["verification"].fn == 1 and table["verification"].recall == 0.0
    assert {(m["id"], m["label"]) for m in misses} == {("c", "reflection"), ("c", "verification")}


def test_a_malformed_labelled_line_is_an_error(tmp_path):
    bad = tmp_path / "set.jsonl"
    bad.write_text('{"id": "x", "text": "hi", "reflection": "yes", "revision": false, "verification": false}\n')
    with pytest.raises(ValueError, match="set.jsonl:1: needs a text and true/false"):
        load_labelled(bad)


@pytest.mark.parametrize("unit", ["1 + 1 = 2. ", "1 + 1 = 2 ✓ ", "Check: 1 + 1 = 2. ", "3 + 5 = 8. Hmm, ", "7 - 3 = 4. Wait, "])
def test_detectors_stay_linear_on_texts_of_many_checks_and_equations(unit):
    """Each equation and check looks up what the text stated before it; a scan of the prefix per
    equation took 18-23 s on 2,000 of these units before that was made a lookup."""
    assert_scales_linearly(analyze, lambda n: unit * n, n=100)
