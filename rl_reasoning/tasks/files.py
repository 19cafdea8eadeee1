"""Problems from local files (JSONL, JSON, CSV, Parquet) or Hugging Face datasets, with a column mapping.

Columns: `question_column` (default: the first of question / prompt / problem that exists),
`answer_column` (answer / solution), `tests_column` (tests, optional). Every other column is
kept and passed to the rewards. Answers are normalised by `answer_format`:
    gsm8k: the text after the last `####` ("... #### 1,234" -> "1234");
    math:  the content of the last \\boxed{} in the solution;
    raw:   as is;  auto: gsm8k if `####` is present, math if `\\boxed` is, else raw.
A bad row (missing mapped column, empty question, answer that cannot be extracted) is an error
naming the file, row and column, or, with `on_bad_row: skip`, dropped and counted.
"""

from __future__ import annotations

import json
from pathlib import Path

from rewards.extract import last_boxed

from ..config import DataConfig
from ..errors import UserError

QUESTION_COLUMNS = ("question", "prompt", "problem")
ANSWER_COLUMNS = ("answer", "solution")
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class BadRow(ValueError):
    pass


def extract_gold(value, answer_format: str) -> str:
    text = str(value).strip()
    fmt = answer_format
    if fmt == "auto":
        fmt = "gsm8k" if "####" in text else "math" if "\\boxed" in text else "raw"
    if fmt == "gsm8k":
        if "####" not in text:
            raise BadRow("no '#### <answer>' line")
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    elif fmt == "math":
        boxed = last_boxed(text)
        if boxed is None:
            raise BadRow("no \\boxed{} answer")
        text = boxed.strip()
    if not text:
        raise BadRow("empty answer")
    return text


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, where: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise UserError(f"{where}: no column {wanted!r} for the {what} (columns: {', '.join(columns)})")
        return wanted
    return next((c for c in candidates if c in columns), None)


def map_rows(records, columns: list[str], cfg: DataConfig, where: str) -> tuple[list[dict], int]:
    q_col = _pick(columns, cfg.question_column, QUESTION_COLUMNS, "question", where)
    a_col = _pick(columns, cfg.answer_column, ANSWER_COLUMNS, "answer", where)
    t_col = _pick(columns, cfg.tests_column, ("tests",), "tests", where)
    if q_col is None:
        raise UserError(f"{where}: no question column (looked for {', '.join(QUESTION_COLUMNS)}; set data.question_column)")
    if a_col is None and t_col is None:
        raise UserError(f"{where}: no answer column (looked for {', '.join(ANSWER_COLUMNS)}; set data.answer_column)")
    rows, skipped = [], 0
    for i, record in enumerate(records, 1):
        try:
            row = dict(record)
            for col in (q_col, a_col):
                if col is not None and (col not in row or row[col] is None):
                    raise BadRow(f"column {col!r} is missing")
            question = str(row.pop(q_col)).strip()
            if not question:
                raise BadRow(f"column {q_col!r} is empty")
            answer = ""
            if a_col is not None:
                try:
                    answer = extract_gold(row.pop(a_col), cfg.answer_format)
                except BadRow as e:
                    raise BadRow(f"column {a_col!r}: {e}") from None
            if t_col is not None and t_col != "tests":
                row["tests"] = row.pop(t_col)
            rows.append({**row, "question": question, "answer": answer})
        except BadRow as e:
            if cfg.on_bad_row == "skip":
                skipped += 1
                continue
            raise UserError(f"{where}: row {i}: {e} (set data.on_bad_row=skip to drop such rows)") from None
    return rows, skipped


def _jsonl_records(path: Path):
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_file_rows(cfg: DataConfig) -> tuple[list[dict], int]:
    if not cfg.path:
        raise UserError("data.path: required for data.source 'file'")
    path = Path(cfg.path)
    if not path.is_file():
        raise UserError(f"data.path: file not found: {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"data.path: {path.suffix or 'no extension'} is not one of {', '.join(FORMATS)}")
    if path.suffix.lower() == ".jsonl":
        records = list(_jsonl_records(path))
        if not records:
            raise UserError(f"{path}: the file has no rows")
        columns = sorted({k for r in records for k in r})
        return map_rows(records, columns, cfg, str(path))
    import datasets

    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - arrow/pandas parse errors vary by format
        raise UserError(f"{path}: cannot read as {kind} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if len(ds) == 0:
        raise UserError(f"{path}: the file has no rows")
    return map_rows(ds, ds.column_names, cfg, str(path))


def read_hub_rows(cfg: DataConfig) -> tuple[list[dict], int]:
    if not cfg.name:
        raise UserError("data.name: required for data.source 'hf' (e.g. openai/gsm8k)")
    import datasets

    try:
        ds = datasets.load_dataset(cfg.name, cfg.config_name, split=cfg.split or "train")
    except Exception as e:  # noqa: BLE001 - offline, unknown name, unknown split...
        raise UserError(f"data: cannot load Hugging Face dataset {cfg.name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return map_rows(ds, ds.column_names, cfg, f"{cfg.name}[{cfg.split or 'train'}]")
