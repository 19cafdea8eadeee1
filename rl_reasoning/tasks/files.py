"""Problems from local files (JSONL, JSON, CSV, Parquet) or Hugging Face datasets, with a column mapping.

Columns: `question_column` (default: the first of question / prompt / problem that exists),
`answer_column` (answer / solution), `tests_column` (tests, optional). Every other column is
kept and passed to the rewards. Answers are normalised by `answer_format`:
    gsm8k: the text after the last `####` ("... #### 1,234" -> "1234");
    math:  the content of the last \\boxed{} in the solution;
    raw:   as is;  auto: gsm8k if `####` is present, math if `\\boxed` is, else raw.
A bad row (a JSONL line that is not UTF-8, not JSON or not an object; a missing mapped column,
an empty question, an answer that cannot be extracted) is a one-line error naming the file, the
line (JSONL) or row, and the column, or, with `on_bad_row: skip`, dropped and counted.
"""

from __future__ import annotations

import json
from pathlib import Path

from rewards.extract import last_boxed

from ..config import DataConfig
from ..errors import UserError
from ..untrusted import is_text

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


def map_rows(numbered, columns: list[str], cfg: DataConfig, where: str, unit: str = "row") -> tuple[list[dict], int]:
    """Rows with the mapped question / answer / tests columns, from (position, record) pairs.

    A record may be a BadRow (a line that could not be read), which counts as a bad row; `unit`
    names positions in errors ("line" for JSONL, else "row")."""
    q_col = _pick(columns, cfg.question_column, QUESTION_COLUMNS, "question", where)
    a_col = _pick(columns, cfg.answer_column, ANSWER_COLUMNS, "answer", where)
    t_col = _pick(columns, cfg.tests_column, ("tests",), "tests", where)
    if q_col is None:
        raise UserError(f"{where}: no question column (looked for {', '.join(QUESTION_COLUMNS)}; set data.question_column)")
    if a_col is None and t_col is None:
        raise UserError(f"{where}: no answer column (looked for {', '.join(ANSWER_COLUMNS)}; set data.answer_column)")
    rows, skipped = [], 0
    for i, record in numbered:
        try:
            if isinstance(record, BadRow):
                raise record
            if not isinstance(record, dict):
                raise BadRow(f"a JSON {type(record).__name__}, not an object with a {q_col!r} column")
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
            at = f"{where}:{i}" if unit == "line" else f"{where}: row {i}"  # path:line, as editors and compilers write it
            raise UserError(f"{at}: {e} (set data.on_bad_row=skip to drop such rows)") from None
    return rows, skipped


def _jsonl_records(path: Path) -> list[tuple[int, object]]:
    """(line number, parsed value or a BadRow saying why the line could not be read); blank lines left out."""
    records = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
                if isinstance(value, dict) and any(isinstance(v, str) and not is_text(v) for v in value.values()):
                    value = BadRow("text with a lone surrogate (a \\udXXX escape that is not half of a pair)")
            except UnicodeDecodeError as e:
                value = BadRow(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            except json.JSONDecodeError as e:
                value = BadRow(f"not valid JSON ({e.msg})")
            except (ValueError, RecursionError):
                value = BadRow("not valid JSON (a number too long, or nesting too deep)")
            records.append((lineno, value))
    return records


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
        lines = _jsonl_records(path)
        if not lines:
            raise UserError(f"{path}: the file has no rows")
        unreadable = next(((i, r) for i, r in lines if isinstance(r, BadRow)), None)
        if unreadable and cfg.on_bad_row != "skip":  # before the columns are guessed from the readable lines
            raise UserError(f"{path}:{unreadable[0]}: {unreadable[1]} (set data.on_bad_row=skip to drop such rows)")
        columns = sorted({k for _, r in lines if isinstance(r, dict) for k in r})
        return map_rows(lines, columns, cfg, str(path), unit="line")
    import datasets

    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - arrow/pandas parse errors vary by format
        raise UserError(f"{path}: cannot read as {kind} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if len(ds) == 0:
        raise UserError(f"{path}: the file has no rows")
    return map_rows(enumerate(ds, 1), ds.column_names, cfg, str(path))


def read_hub_rows(cfg: DataConfig) -> tuple[list[dict], int]:
    if not cfg.name:
        raise UserError("data.name: required for data.source 'hf' (e.g. openai/gsm8k)")
    import datasets

    try:
        ds = datasets.load_dataset(cfg.name, cfg.config_name, split=cfg.split or "train")
    except Exception as e:  # noqa: BLE001 - offline, unknown name, unknown split...
        raise UserError(f"data: cannot load Hugging Face dataset {cfg.name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return map_rows(enumerate(ds, 1), ds.column_names, cfg, f"{cfg.name}[{cfg.split or 'train'}]")
