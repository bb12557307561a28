"""Read every supported preference layout into ONE canonical frame; validate; prompt-grouped folds.

The canonical frame
===================
A pandas DataFrame, one row per pair, columns in this order (``CANONICAL_COLUMNS``):

============  ====================  ==========================================================
column        type                  meaning
============  ====================  ==========================================================
id            str, unique           the file's id; files without ids get ``<file stem>-<row>``
prompt        list[str | None]      the user turns of the conversation, oldest first
response_a    list[str | None]      ``response_a[i]`` answers ``prompt[i]``
response_b    list[str | None]      ``response_b[i]`` answers ``prompt[i]``
label         int64                 0 = a wins, 1 = b wins, 2 = tie, -1 = unlabeled (test rows)
language      str                   the file's language column, ``"unknown"`` if absent
model_a       str                   ``""`` if absent
model_b       str                   ``""`` if absent
source        str                   ``"<layout>:<file name>"``
============  ====================  ==========================================================

The three turn lists of a row always have the same length (at least 1). ``None`` is a null turn
(the LMSYS files have them); it is kept and counted in the :class:`ValidationReport`, as are empty
responses, identical responses and multi-turn rows. Nothing is dropped silently.

Layouts (``layout="auto"`` picks one from the column names)
-----------------------------------------------------------
- ``wsdm``: WSDM Cup 2025 ``train.parquet`` (id, prompt, response_a, response_b, winner, model_a,
  model_b, language; plain strings, winner in {model_a, model_b}) and ``test.parquet`` (id, prompt,
  response_a, response_b, scored; no winner -> label -1). One turn per row.
- ``lmsys``: LMSYS Chatbot Arena ``train.csv`` / ``test.csv``: prompt and responses are JSON-encoded
  lists of turns (``null`` allowed), winners one-hot in winner_model_a / winner_model_b / winner_tie.
  A test file (no winner columns) is recognised by its JSON-list cells.
- ``chosen_rejected``: columns chosen + rejected (+ optional prompt, id). Without a prompt column
  the cells are hh-rlhf dialogues (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``): the shared prefix
  gives the earlier turns (same answer in a and b), the differing last assistant turn is the pair.
- ``oasst``: OpenAssistant message trees (message_id, parent_id, role, text, rank): every two
  sibling assistant replies with different ranks make a pair (lower rank = chosen); the prompt is
  the whole conversation path.
- ``columns``: any file with a ``column_map`` from canonical names to the file's columns. Keys:
  id, prompt, language, model_a, model_b, and either response_a + response_b (+ winner, whose values
  ``winner_a`` / ``winner_b`` / ``winner_tie`` name; default model_a / a, model_b / b, tie) or
  chosen + rejected. Built-in maps (``PRESETS``) are auto-detected: ``llmbar``
  (input, output_1, output_2, label 1/2) and ``kudge`` (instruction, chosen_response,
  rejected_response; its ``winner`` column is the authors' display position, not a preference,
  so it is ignored; language from ``subset``).
- ``canonical``: a parquet written by :func:`write_canonical`.

Files: .csv, .parquet/.pq, .json (a list of records), .jsonl/.ndjson; each optionally ``.gz``.

Chosen/rejected positions
-------------------------
Rows from chosen/rejected data have no A/B order. The chosen response goes to A on exactly half of
the rows: rows are ranked by a hash of ``(seed, id)`` and alternate A, B, A, ... in that order. So
the position is deterministic, balanced, and unrelated to file order or content.

Tie policy (``ties=``)
----------------------
``keep``: label 2. ``drop``: tie rows removed (the report counts them). ``split``: each tie row
becomes two rows, ``<id>#a`` labelled 0 and ``<id>#b`` labelled 1 (a 50/50 target for a
binary model); both copies share the prompt, so prompt-grouped folds keep them together.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import re
import typing
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import Layout, Ties
from .errors import ConfigError, DataError, closest

log = logging.getLogger(__name__)

CANONICAL_COLUMNS = ["id", "prompt", "response_a", "response_b", "label", "language", "model_a", "model_b", "source"]
TURN_COLUMNS = ("prompt", "response_a", "response_b")
UNLABELED = -1
TIE = 2
LABEL_NAMES = {0: "a", 1: "b", 2: "tie", -1: "unlabeled"}
LAYOUTS = typing.get_args(Layout)
TIE_POLICIES = typing.get_args(Ties)
EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "json", ".jsonl": "jsonl",
              ".ndjson": "jsonl"}
SHOW_IDS = 5

REQUIRED_COLUMNS = {
    "canonical": ["id", "prompt", "response_a", "response_b", "label", "source"],
    "lmsys": ["id", "prompt", "response_a", "response_b", "winner_model_a", "winner_model_b", "winner_tie"],
    "wsdm": ["id", "prompt", "response_a", "response_b"],
    "oasst": ["message_id", "parent_id", "role", "text", "rank"],
    "chosen_rejected": ["chosen", "rejected"],
}
DEFAULT_WINNER_VALUES = {"winner_a": ("model_a", "a", "response_a"), "winner_b": ("model_b", "b", "response_b"),
                         "winner_tie": ("tie", "tie (bothbad)", "winner_tie")}
# winner names -> labels (model_a -> 0, a -> 0, ..., tie -> 2)
WINNER_LABELS = {name: label for label, key in enumerate(DEFAULT_WINNER_VALUES) for name in DEFAULT_WINNER_VALUES[key]}
COLUMN_MAP_KEYS = ("id", "prompt", "response_a", "response_b", "winner", "chosen", "rejected", "language",
                   "model_a", "model_b", *DEFAULT_WINNER_VALUES)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named column map recognised automatically when its columns are all present."""

    column_map: dict
    language: Callable[[str], str] | None = None  # maps the mapped language cell to a language name


PRESETS = {
    "llmbar": Preset({"prompt": "input", "response_a": "output_1", "response_b": "output_2", "winner": "label",
                      "winner_a": "1", "winner_b": "2"}),
    "kudge": Preset({"prompt": "instruction", "chosen": "chosen_response", "rejected": "rejected_response",
                     "language": "subset"}, language=lambda subset: subset.split("-")[0]),
}


# ---- errors --------------------------------------------------------------------------------------
def _fail(path: Any, problem: str, fix: str, column: str | None = None, ids: Iterable[Any] = ()) -> DataError:
    """Build a DataError naming the file, the column, the first offending ids and the fix."""
    ids = [str(i) for i in ids]
    where = f"{path}" + (f", column '{column}'" if column else "")
    shown = ""
    if ids:
        more = f" and {len(ids) - SHOW_IDS} more" if len(ids) > SHOW_IDS else ""
        shown = f" (ids: {', '.join(ids[:SHOW_IDS])}{more}; {len(ids)} row{'s' if len(ids) > 1 else ''})"
    return DataError(f"{where}: {problem}{shown}. Fix: {fix}")


def _close(name: str, found: Iterable[str]) -> str:
    match = closest(name, found)
    return f" (did you mean '{match}'?)" if match else ""


# ---- raw tables ----------------------------------------------------------------------------------
def file_kind(path: str | Path) -> str:
    """csv, parquet, json or jsonl from the file name (``.gz`` allowed); DataError otherwise."""
    name = Path(path).name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    kind = EXTENSIONS.get(os.path.splitext(base)[1])
    if kind is None:
        supported = ", ".join(sorted(EXTENSIONS))
        raise _fail(path, f"unsupported file extension '{Path(path).suffix}'",
                    f"save it as one of {supported} (optionally gzipped, e.g. .jsonl.gz)")
    return kind


def read_labels(path: str | Path) -> pd.DataFrame:
    """``id``, ``label`` (0 = a, 1 = b, 2 = tie) and ``language`` when present, from a labels file with a
    ``label`` column or a ``winner`` column (model_a / model_b / tie), any format :func:`read_table` reads."""
    labels = read_table(path)
    if "label" not in labels.columns and "winner" in labels.columns:
        labels["label"] = labels["winner"].astype(str).map(WINNER_LABELS)
    label = pd.to_numeric(labels["label"], errors="coerce") if "label" in labels.columns else None
    if "id" not in labels.columns or label is None or label.isna().any() or not label.isin([0, 1, 2]).all():
        raise _fail(path, f"needs an id column and a label column (0 = a, 1 = b, 2 = tie) or a winner column "
                          f"({', '.join(WINNER_LABELS)}); got columns {list(labels.columns)}",
                    "write one label per row, or the winner names above")
    labels["label"], labels["id"] = label.astype("int64"), labels["id"].astype(str)
    duplicated = labels["id"][labels["id"].duplicated()].unique()
    if len(duplicated):
        raise _fail(path, f"{len(duplicated)} ids occur more than once", "keep one label per id", "id", duplicated)
    return labels[[c for c in ("id", "label", "language") if c in labels.columns]]


def join_labels(frame: pd.DataFrame, pairs_path: str | Path, labels_path: str | Path) -> pd.DataFrame:
    """``frame`` (the pairs of ``pairs_path``) with the labels of a labels file joined on id (Kaggle's test
    file and its solution kept apart, as the demo's test.parquet and test_labels.parquet are). Rows the file
    does not label keep the pairs file's own label (-1 when it has none); a labelled id that is not a row,
    or a label that contradicts the pairs file's own, is an error. The file's language fills rows whose language is unknown."""
    labels = read_labels(labels_path).set_index("id")
    ids = frame["id"].astype(str)
    stray = labels.index[~labels.index.isin(ids)]
    if len(stray):
        raise _fail(labels_path, f"{len(stray)} labelled ids are not rows of {pairs_path}",
                    "pass the pairs file these labels belong to (--data), or remove those rows", "id", stray)
    joined = ids.map(labels["label"])
    clash = (frame["label"] >= 0) & joined.notna() & (frame["label"] != joined)
    if clash.any():
        raise _fail(labels_path, f"labels contradict those of {pairs_path}",
                    "check that both files describe the same rows (A/B not swapped in one of them)", "label",
                    ids[clash])
    out = frame.copy()
    out["label"] = joined.fillna(frame["label"]).astype("int64").to_numpy()
    if "language" in labels.columns:
        unknown = (out["language"] == "unknown").to_numpy()
        out.loc[unknown, "language"] = ids[unknown].map(labels["language"]).fillna("unknown").astype(str).to_numpy()
    return out


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a file into a raw DataFrame. CSV cells stay strings ("NA" or "null" are text, not missing)."""
    path = Path(path)
    kind = file_kind(path)
    if not path.is_file():
        raise _fail(path, "file does not exist", "check the path (relative paths start in the current folder)")
    if path.stat().st_size == 0:
        raise _fail(path, "file is empty (0 bytes)", "re-download or re-export the file")
    try:
        table = _read_kind(path, kind)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise _fail(path, f"is not UTF-8 text ({_first_bad_byte(path, exc)}; Latin-1 or Windows-1252 files, or "
                          "encoded UTF-16 surrogates, look like this)",
                    "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`, or "
                    "'Save as CSV UTF-8' in a spreadsheet)") from exc
    except RecursionError as exc:
        raise _fail(path, "holds values nested too deeply to read",
                    "turns must be flat lists of strings; fix or drop the nested values") from exc
    except (ValueError, TypeError, OSError, EOFError, zlib.error) as exc:
        raise _fail(path, f"cannot be read as {kind}: {exc}".rstrip("."),
                    f"check that the file really is {kind} and not truncated") from exc
    if table.shape[1] == 0 or len(table) == 0:
        raise _fail(path, f"has no rows (columns found: {list(table.columns)})", "export the file again with its rows")
    return table


def _first_bad_byte(path: Path, exc: UnicodeDecodeError) -> str:
    """``line N: found byte b'..'`` for the first byte of the file that is not UTF-8 (the reader's own
    exception may see only a chunk of the file)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as whole:
        line = raw.count(b"\n", 0, whole.start) + 1
        return f"line {line}: found byte {raw[whole.start:whole.start + 1]!r}"
    return f"found byte {exc.object[exc.start:exc.start + 1]!r}"


def _read_kind(path: Path, kind: str) -> pd.DataFrame:
    if kind == "csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    if kind == "parquet":
        return _read_parquet(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    if kind == "json":
        try:
            data = loads_json(text)
        except json.JSONDecodeError as exc:
            if "Extra data" not in str(exc):
                raise
            kind = "jsonl"  # a .json file holding JSON lines
        else:
            if isinstance(data, dict):
                return pd.DataFrame(data)
            return _records_frame(data if isinstance(data, list) else [data], path, "item")
    return _records_frame(_json_lines(text, path), path, "line")


def _read_parquet(path: Path) -> pd.DataFrame:
    """The parquet file as a frame; text that is not UTF-8 (pyarrow stores and loads it unchecked, and it
    then fails wherever it is read) is a DataError naming the column and rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for name in table.column_names:
        column = table[name]
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            bad = [f"row {i}" for i in range(len(column)) if not _valid_arrow(column.slice(i, 1))]
            raise _fail(path, f"cells are not valid UTF-8 text ({exc})", "re-write these cells as UTF-8 text",
                        column=str(name), ids=bad) from exc
    return table.to_pandas()


def _valid_arrow(cells: Any) -> bool:
    import pyarrow as pa

    try:
        cells.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def loads_json(text: str) -> Any:
    """``json.loads`` that reports over-deep nesting as a ``json.JSONDecodeError``, not a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise json.JSONDecodeError("nested too deeply (Python's JSON parser recurses per level)", text, 0) from exc


def _json_lines(text: str, path: Path) -> list[Any]:
    records, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(loads_json(line))
        except json.JSONDecodeError as exc:
            bad.append((number, exc.msg))
    if bad:
        raise _fail(path, f"lines are not valid JSON (line {bad[0][0]}: {bad[0][1]})",
                    "fix or drop these lines (one JSON object per line)", ids=[f"line {n}" for n, _ in bad])
    return records


def _records_frame(records: list[Any], path: Path, unit: str) -> pd.DataFrame:
    bad = [i for i, r in enumerate(records, start=1) if not isinstance(r, dict)]
    if bad:
        kinds = sorted({type(records[i - 1]).__name__ for i in bad})
        raise _fail(path, f"records must be JSON objects, found {', '.join(kinds)}",
                    "write one object per record, e.g. {\"id\": 1, \"prompt\": \"...\"}",
                    ids=[f"{unit} {i}" for i in bad])
    try:
        return pd.DataFrame.from_records(records)
    except UnicodeEncodeError:  # a lone surrogate (escape \ud800): arrow strings refuse it, _clean_parts replaces it
        return pd.DataFrame(records, dtype=object)


# ---- layout detection ----------------------------------------------------------------------------
def detect_layout(table: pd.DataFrame, path: Any = "<frame>") -> str:
    """The layout name (or ``columns:<preset>``) whose columns the table has; DataError when none fits."""
    cols = set(map(str, table.columns))
    if set(REQUIRED_COLUMNS["canonical"]) <= cols and _looks_canonical(table):
        return "canonical"
    for layout in ("lmsys", "oasst", "chosen_rejected"):
        if set(REQUIRED_COLUMNS[layout]) <= cols:
            return layout
    for name, preset in PRESETS.items():
        if set(_mapped_columns(preset.column_map)) <= cols:
            return f"columns:{name}"
    if set(REQUIRED_COLUMNS["wsdm"]) <= cols:
        return _prompt_layout(table, path)
    raise _layout_error(path, cols)


def _looks_canonical(table: pd.DataFrame) -> bool:
    first = table["prompt"].iloc[0]
    return isinstance(first, (list, np.ndarray))


def _prompt_layout(table: pd.DataFrame, path: Any) -> str:
    """lmsys when every text prompt cell is a JSON list of turns, wsdm when none is; a file with both is
    a DataError naming the rows of the smaller kind (a guess from some rows would misread the others)."""
    cells = table["prompt"].tolist()
    is_list = np.array([isinstance(c, str) and _is_turn_list(c) for c in cells])
    is_text = np.array([isinstance(c, str) for c in cells]) & ~is_list
    if not is_list.any() or not is_text.any():
        return "lmsys" if is_list.any() else "wsdm"
    n_list, n_text = int(is_list.sum()), int(is_text.sum())
    odd = is_text if n_text <= n_list else is_list
    ids = np.asarray(_row_ids(table, path), dtype=object)[odd]
    rows = {True: "rows", False: "row"}
    raise _fail(path, f"prompt cells are JSON lists of turns in {n_list} {rows[n_list > 1]} (the LMSYS layout) but "
                      f"plain text in {n_text} {rows[n_text > 1]} (the WSDM layout)",
                "write every prompt in one layout (LMSYS: a JSON list of turns such as [\"Hi there\"]; WSDM: plain "
                "text), or pass --layout lmsys or --layout wsdm (data.layout)", column="prompt", ids=ids)


def _is_turn_list(cell: str) -> bool:
    if not cell.lstrip().startswith("["):
        return False
    try:
        turns = loads_json(cell)
    except json.JSONDecodeError:
        return False
    return isinstance(turns, list) and all(t is None or isinstance(t, str) for t in turns)


def _mapped_columns(column_map: dict) -> list[str]:
    return [str(v) for k, v in column_map.items() if k not in DEFAULT_WINNER_VALUES]


def _layout_error(path: Any, cols: set[str]) -> DataError:
    options = {**{k: v for k, v in REQUIRED_COLUMNS.items() if k != "canonical"},
               **{f"columns:{n}": _mapped_columns(p.column_map) for n, p in PRESETS.items()}}
    best = max(options, key=lambda k: sum(c in cols for c in options[k]) / len(options[k]))
    missing = [f"'{c}'{_close(c, cols - set(options[best]))}" for c in options[best] if c not in cols]
    expected = "; ".join(f"{k}: {', '.join(v)}" for k, v in options.items())
    return _fail(path, f"cannot tell the layout from the columns. Found columns: {', '.join(sorted(cols))}. "
                       f"Closest layout '{best}' is missing {', '.join(missing)}. Expected one of: {expected}",
                 "rename the columns to one of these layouts, or pass layout='columns' with a column_map "
                 "(CLI: --layout columns --map prompt=COL --map response_a=COL ...)")


def _require(table: pd.DataFrame, columns: Iterable[str], path: Any, layout: str) -> None:
    cols = set(map(str, table.columns))
    missing = [c for c in columns if c not in cols]
    if missing:
        names = ", ".join(f"'{c}'{_close(c, cols - set(columns))}" for c in missing)
        raise _fail(path, f"layout '{layout}' needs column {names}, which is missing. "
                          f"Found columns: {', '.join(sorted(cols))}",
                    "rename the column in the file, or choose another layout (layout='auto' detects it)",
                    column=missing[0])


# ---- cell helpers --------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _row_ids(table: pd.DataFrame, path: Any, column: str = "id") -> list[str]:
    if column not in table.columns:
        return [f"{Path(str(path)).name.split('.')[0]}-{i}" for i in range(len(table))]
    values = table[column].tolist()
    bad = [i for i, v in enumerate(values) if _is_missing(v) or str(v).strip() == ""]
    if bad:
        raise _fail(path, "ids are missing", "give every row an id (or drop the id column to use row numbers)",
                    column=column, ids=[f"row {i}" for i in bad])
    ids = [_id_text(v) for v in values]
    bad = [i for i, v in enumerate(ids) if v is None]
    if bad:
        raise _fail(path, "ids must be text or whole numbers, found fractional or infinite numbers "
                          f"such as {values[bad[0]]!r}", "store the ids as text or integers",
                    column=column, ids=[f"row {i}" for i in bad])
    return ids


def _id_text(value: Any) -> str | None:
    """An id as text: whole floats lose their ``.0`` (a parquet float column of ids), other floats are None."""
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if np.isfinite(value) and float(value).is_integer() else None
    return str(value)


_SURROGATE = re.compile("[\ud800-\udfff]")
SIDE_TEXT_COLUMNS = ("language", "model_a", "model_b")


def clean_text(text: str) -> str:
    """``text`` with its UTF-16 surrogates resolved: a split pair becomes its one character, a lone half
    (a JSON escape such as ``\\ud800`` with no partner) becomes U+FFFD. Tokenizers and every UTF-8 writer
    (parquet, csv) refuse lone halves; readers and the encoder share this rule."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _clean_parts(parts: dict, path: Any) -> int:
    """Apply :func:`clean_text` to every text cell of the parts in place; the number of rows it changed.

    An id with a surrogate is refused (replacing a character would change the id a submission needs)."""
    bad = [f"row {i}" for i, rid in enumerate(parts["id"]) if _SURROGATE.search(rid)]
    if bad:
        raise _fail(path, "ids hold lone UTF-16 surrogates (an escape such as \\ud800 without its partner)",
                    "fix these ids in the file", column="id", ids=bad)
    changed: set[int] = set()
    for column in TURN_COLUMNS:
        for row, turns in enumerate(parts[column]):
            clean = [t if t is None else clean_text(t) for t in turns]
            if clean != turns:
                parts[column][row] = clean
                changed.add(row)
    for column in SIDE_TEXT_COLUMNS:
        clean = [clean_text(v) for v in parts[column]]
        changed.update(row for row, (a, b) in enumerate(zip(clean, parts[column], strict=True)) if a != b)
        parts[column] = clean
    if changed:
        rows = sorted(changed)
        log.warning("%s: %d row(s) held lone UTF-16 surrogates, replaced by U+FFFD (ids: %s)", path, len(rows),
                    ", ".join(parts["id"][r] for r in rows[:SHOW_IDS]))
    return len(changed)


def _text_cells(table: pd.DataFrame, column: str, path: Any, ids: list[str]) -> list[str | None]:
    """The column's cells as str or None (null); any other type is a DataError."""
    values = [None if _is_missing(v) else v for v in table[column].tolist()]
    bad = [ids[i] for i, v in enumerate(values) if v is not None and not isinstance(v, str)]
    if bad:
        kinds = sorted({type(v).__name__ for v in values if v is not None and not isinstance(v, str)})
        raise _fail(path, f"cells must be text, found {', '.join(kinds)}",
                    "store this column as strings (e.g. quote the values or cast the column to str)",
                    column=column, ids=bad)
    return values


def _optional_strings(table: pd.DataFrame, column: str | None, default: str, path: Any, ids: list[str]) -> list[str]:
    if not column or column not in table.columns:
        return [default] * len(table)
    return [default if v is None or v == "" else v for v in _text_cells(table, column, path, ids)]


def _json_turns(table: pd.DataFrame, column: str, path: Any, ids: list[str]) -> list[list[str | None]]:
    """Parse JSON-encoded lists of turns; unparseable cells and non-lists of strings are DataErrors."""
    out, unparseable, wrong = [], [], []
    reasons = set()
    for rid, cell in zip(ids, table[column].tolist(), strict=True):
        try:
            turns = loads_json(cell) if isinstance(cell, str) else cell
        except json.JSONDecodeError as exc:
            unparseable.append(rid)
            reasons.add(exc.msg)
            continue
        if isinstance(turns, np.ndarray):
            turns = turns.tolist()
        if not isinstance(turns, list) or not all(t is None or isinstance(t, str) for t in turns):
            wrong.append(rid)
            continue
        out.append(turns)
    if unparseable:
        raise _fail(path, "cells are not valid JSON (expected a JSON list of turns such as [\"hi\", null]; "
                          f"{'; '.join(sorted(reasons)[:2])})",
                    "re-export the file without altering these cells, or drop these rows", column=column,
                    ids=unparseable)
    if wrong:
        raise _fail(path, "cells must be JSON lists of strings or null, e.g. [\"hi\", null]",
                    "fix these cells, or read the file with layout='wsdm' if cells are plain text",
                    column=column, ids=wrong)
    return out


def _winner_labels(values: list[Any], path: Any, column: str, ids: list[str], vocab: dict) -> np.ndarray:
    lookup = {str(v).strip().lower(): label for key, label in (("winner_a", 0), ("winner_b", 1), ("winner_tie", 2))
              for v in ([vocab[key]] if isinstance(vocab[key], str) else vocab[key])}
    labels = np.array([lookup.get(str(v).strip().lower(), -9) for v in values], dtype=np.int64)
    bad = np.flatnonzero(labels == -9)
    if len(bad):
        seen = sorted({str(values[i]) for i in bad})[:SHOW_IDS]
        raise _fail(path, f"unknown winner values {seen}; allowed: {sorted(lookup)}",
                    "fix these cells, or map the values with column_map winner_a / winner_b / winner_tie",
                    column=column, ids=[ids[i] for i in bad])
    return labels


# ---- chosen/rejected -----------------------------------------------------------------------------
def chosen_in_a(ids: list[str], seed: int = 0) -> np.ndarray:
    """Bool per row: True where the chosen response goes to position A (exactly half, by id hash)."""
    keys = [hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest() for i in ids]
    order = sorted(range(len(ids)), key=keys.__getitem__)
    in_a = np.zeros(len(ids), dtype=bool)
    in_a[order[::2]] = True
    return in_a


_ROLE = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_ASSISTANT = "\n\nAssistant:"


def split_dialogues(chosen: str, rejected: str) -> tuple[list, list, list]:
    """hh-rlhf dialogues -> (prompt turns, chosen answers, rejected answers); the shared prefix is history."""
    cut = os.path.commonprefix([chosen, rejected]).rfind(_ASSISTANT)
    if cut < 0:
        return [None], [chosen.strip()], [rejected.strip()]
    prompts, answers = _dialogue_turns(chosen[:cut])
    if not prompts or answers[-1] is not None:
        prompts.append(None)
        answers.append(None)
    tail_c, tail_r = chosen[cut + len(_ASSISTANT):].strip(), rejected[cut + len(_ASSISTANT):].strip()
    return prompts, answers[:-1] + [tail_c], answers[:-1] + [tail_r]


def _dialogue_turns(text: str) -> tuple[list, list]:
    parts = _ROLE.split(text)
    lead = [("Human", parts[0])] if parts[0].strip() else []
    return _turns_from_messages(lead + list(zip(parts[1::2], parts[2::2], strict=True)))


def _turns_from_messages(messages: list[tuple[str, str]]) -> tuple[list, list]:
    """(role, text) messages -> (user turns, answers); an answer with no user turn gets a None prompt."""
    prompts: list = []
    answers: list = []
    for role, body in messages:
        body = body.strip()
        if role == "Human":
            prompts.append(body)
            answers.append(None)
        elif prompts and answers[-1] is None:
            answers[-1] = body
        else:
            prompts.append(None)
            answers.append(body)
    return prompts, answers


def _place_chosen(ids: list[str], prompts: list, chosen: list, rejected: list, seed: int) -> dict:
    in_a = chosen_in_a(ids, seed)
    return {"id": ids, "prompt": prompts,
            "response_a": [c if a else r for c, r, a in zip(chosen, rejected, in_a, strict=True)],
            "response_b": [r if a else c for c, r, a in zip(chosen, rejected, in_a, strict=True)],
            "label": np.where(in_a, 0, 1).astype(np.int64)}


# ---- layout readers: each returns a dict of canonical columns ------------------------------------
def _read_wsdm(table: pd.DataFrame, path: Any, cmap: dict | None = None) -> dict:
    cmap = cmap or {}
    col = {k: cmap.get(k, k) for k in ("id", "prompt", "response_a", "response_b", "winner", "language",
                                       "model_a", "model_b")}
    _require(table, [col["prompt"], col["response_a"], col["response_b"]], path, "columns" if cmap else "wsdm")
    ids = _row_ids(table, path, col["id"])
    parts = {k: [[t] for t in _text_cells(table, col[k], path, ids)] for k in TURN_COLUMNS}
    if col["winner"] in table.columns:
        vocab = {k: cmap.get(k, v) for k, v in DEFAULT_WINNER_VALUES.items()}
        labels = _winner_labels(table[col["winner"]].tolist(), path, col["winner"], ids, vocab)
    else:
        labels = np.full(len(ids), UNLABELED, dtype=np.int64)
    return {"id": ids, **parts, "label": labels, **_side_columns(table, col, path, ids)}


def _side_columns(table: pd.DataFrame, col: dict, path: Any, ids: list[str]) -> dict:
    return {"language": _optional_strings(table, col.get("language"), "unknown", path, ids),
            "model_a": _optional_strings(table, col.get("model_a"), "", path, ids),
            "model_b": _optional_strings(table, col.get("model_b"), "", path, ids)}


def _read_lmsys(table: pd.DataFrame, path: Any) -> dict:
    ids = _row_ids(table, path)
    parts = {k: _json_turns(table, k, path, ids) for k in TURN_COLUMNS}
    winners = ["winner_model_a", "winner_model_b", "winner_tie"]
    if all(w in table.columns for w in winners):
        labels = _one_hot_labels(table[winners], path, ids)
    else:
        labels = np.full(len(ids), UNLABELED, dtype=np.int64)
    return {"id": ids, **parts, "label": labels, **_side_columns(table, {"model_a": "model_a", "model_b": "model_b",
                                                                         "language": "language"}, path, ids)}


def _one_hot_labels(winners: pd.DataFrame, path: Any, ids: list[str]) -> np.ndarray:
    values = winners.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    ok = np.isin(values, (0, 1)).all(axis=1) & (np.nan_to_num(values).sum(axis=1) == 1)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        example = dict(zip(winners.columns, winners.iloc[bad[0]].tolist(), strict=True))
        raise _fail(path, f"winner columns must be one-hot 0/1 with exactly one 1 per row, e.g. row {ids[bad[0]]} has "
                          f"{example}", "fix these rows or drop them", column="winner_model_a", ids=[ids[i] for i in bad])
    return values.argmax(axis=1).astype(np.int64)


def _read_chosen_rejected(table: pd.DataFrame, path: Any, cmap: dict | None = None, seed: int = 0) -> dict:
    cmap = cmap or {}
    col = {k: cmap.get(k, k) for k in ("id", "prompt", "chosen", "rejected", "language", "model_a", "model_b")}
    _require(table, [col["chosen"], col["rejected"]], path, "columns" if cmap else "chosen_rejected")
    ids = _row_ids(table, path, col["id"])
    chosen = _text_cells(table, col["chosen"], path, ids)
    rejected = _text_cells(table, col["rejected"], path, ids)
    if col["prompt"] in table.columns:
        prompts = [[p] for p in _text_cells(table, col["prompt"], path, ids)]
        chosen, rejected = [[c] for c in chosen], [[r] for r in rejected]
    else:
        split = [split_dialogues(c or "", r or "") for c, r in zip(chosen, rejected, strict=True)]
        prompts, chosen, rejected = ([s[k] for s in split] for k in range(3))
    side = _side_columns(table, {"language": col["language"]}, path, ids)
    return {**_place_chosen(ids, prompts, chosen, rejected, seed), **side}


def _read_oasst(table: pd.DataFrame, path: Any, seed: int = 0) -> dict:
    rows = table[["message_id", "parent_id", "role", "text", "rank"] + (["lang"] if "lang" in table else [])]
    messages = {r["message_id"]: r for r in rows.to_dict("records")}
    siblings: dict[str, list] = {}
    for m in messages.values():
        if m["role"] == "assistant" and not _is_missing(m["rank"]) and not _is_missing(m["parent_id"]):
            siblings.setdefault(m["parent_id"], []).append(m)
    ids, prompts, chosen, rejected, langs = [], [], [], [], []
    for parent_id, group in siblings.items():
        history = _oasst_history(messages, parent_id)
        group = sorted(group, key=lambda m: m["rank"])
        for i, better in enumerate(group):
            for worse in group[i + 1:]:
                if better["rank"] == worse["rank"]:
                    continue
                ids.append(f"{better['message_id']}>{worse['message_id']}")
                prompts.append(history[0])
                chosen.append(history[1] + [better["text"]])
                rejected.append(history[1] + [worse["text"]])
                langs.append(messages.get(parent_id, {}).get("lang") or "unknown")
    if not ids:
        raise _fail(path, "no sibling assistant replies with different ranks", "use a file with ranked replies",
                    column="rank")
    return {**_place_chosen(ids, prompts, chosen, rejected, seed), "language": langs,
            "model_a": [""] * len(ids), "model_b": [""] * len(ids)}


def _oasst_history(messages: dict, parent_id: str) -> tuple[list, list]:
    """(user turns ending with the parent prompt, earlier assistant answers) along the tree path."""
    chain, node = [], messages.get(parent_id)
    while node is not None:
        chain.append(node)
        node = messages.get(node["parent_id"])
    prompts, answers = _turns_from_messages(
        [("Human" if m["role"] == "prompter" else "Assistant", m["text"] or "") for m in reversed(chain)])
    if not prompts or answers[-1] is not None:
        prompts.append(None)
        answers.append(None)
    return prompts, answers[:-1]


def _read_columns(table: pd.DataFrame, path: Any, column_map: dict, seed: int = 0) -> dict:
    unknown = [k for k in column_map if k not in COLUMN_MAP_KEYS]
    if unknown:
        raise ConfigError(f"column_map key {unknown[0]!r}{_close(unknown[0], COLUMN_MAP_KEYS)} is not known; "
                          f"allowed keys: {', '.join(COLUMN_MAP_KEYS)}")
    _require(table, _mapped_columns(column_map), path, "columns")
    if "chosen" in column_map or "rejected" in column_map:
        return _read_chosen_rejected(table, path, column_map, seed)
    return _read_wsdm(table, path, column_map)


def _read_canonical_table(table: pd.DataFrame, path: Any) -> dict:
    ids = _row_ids(table, path)
    parts = {k: [list(v) if isinstance(v, (list, np.ndarray)) else [v] for v in table[k].tolist()]
             for k in TURN_COLUMNS}
    labels = pd.to_numeric(table["label"], errors="coerce")
    bad = [ids[i] for i in np.flatnonzero(~labels.isin(list(LABEL_NAMES)).to_numpy())]
    if bad:
        raise _fail(path, "labels must be -1, 0, 1 or 2", "fix these labels", column="label", ids=bad)
    col = {"language": "language", "model_a": "model_a", "model_b": "model_b"}
    return {"id": ids, **parts, "label": labels.to_numpy(dtype=np.int64), **_side_columns(table, col, path, ids),
            "source": table["source"].astype(str).tolist()}


# ---- assembling and checking ---------------------------------------------------------------------
def _assemble(parts: dict, path: Any, source: str) -> pd.DataFrame:
    """Check ids and turn counts, then build the canonical frame."""
    ids = parts["id"]
    dup = [k for k, n in Counter(ids).items() if n > 1]
    if dup:
        raise _fail(path, f"{len(dup)} ids occur more than once", "make the ids unique or drop the duplicate rows",
                    column="id", ids=dup)
    counts = [(len(p), len(a), len(b)) for p, a, b in zip(parts["prompt"], parts["response_a"], parts["response_b"], strict=True)]
    bad = [ids[i] for i, c in enumerate(counts) if c[0] != c[1] or c[0] != c[2] or c[0] == 0]
    if bad:
        first = counts[ids.index(bad[0])]
        raise _fail(path, f"prompt, response_a and response_b must have the same number of turns (at least 1); "
                          f"row {bad[0]} has {first[0]}, {first[1]} and {first[2]}",
                    "fix or drop these rows", column="prompt", ids=bad)
    frame = pd.DataFrame({
        "id": ids, "prompt": parts["prompt"], "response_a": parts["response_a"],
        "response_b": parts["response_b"], "label": np.asarray(parts["label"], dtype=np.int64),
        "language": parts["language"], "model_a": parts["model_a"], "model_b": parts["model_b"],
        "source": parts.get("source", source)})
    return frame[CANONICAL_COLUMNS]


def apply_ties(frame: pd.DataFrame, ties: str, path: Any = "<frame>") -> pd.DataFrame:
    """Apply the tie policy (keep, drop or split; see the module docstring).

    ``split`` refuses a frame where an ``<id>#a`` / ``<id>#b`` it would write is already an id.
    """
    if ties not in TIE_POLICIES:
        raise ConfigError(f"ties={ties!r} is not one of {', '.join(TIE_POLICIES)}")
    is_tie = (frame["label"] == TIE).to_numpy()
    if ties == "keep" or not is_tie.any():
        return frame
    if ties == "drop":
        return frame[~is_tie].reset_index(drop=True)
    out = frame.iloc[np.repeat(np.arange(len(frame)), np.where(is_tie, 2, 1))].reset_index(drop=True)
    second = np.zeros(len(out), dtype=bool)
    second[np.cumsum(np.where(is_tie, 2, 1))[is_tie] - 1] = True
    first = np.repeat(is_tie, np.where(is_tie, 2, 1)) & ~second
    out.loc[first, "id"] = out.loc[first, "id"] + "#a"
    out.loc[second, "id"] = out.loc[second, "id"] + "#b"
    out.loc[first, "label"] = 0
    out.loc[second, "label"] = 1
    clash = sorted(set(out.loc[first | second, "id"]) & set(frame["id"]))
    if clash:
        raise _fail(path, "ties='split' would write ids that the file already uses", "rename these ids, or use "
                    "ties='keep' or 'drop'", column="id", ids=clash)
    return out


# ---- report --------------------------------------------------------------------------------------
@dataclasses.dataclass
class ValidationReport:
    """What was read and the recoverable oddities kept in it (counts of rows)."""

    source: str
    layout: str
    ties: str
    rows: int
    labels: dict
    ties_dropped: int
    ties_split: int
    null_turn_rows: int
    multi_turn_rows: int
    empty_response_rows: int
    identical_response_rows: int
    languages: dict
    replaced_text_rows: int = 0  # rows whose lone UTF-16 surrogates became U+FFFD (clean_text)

    @classmethod
    def of(cls, frame: pd.DataFrame, source: str, layout: str, ties: str, ties_in: int,
           replaced: int = 0) -> ValidationReport:
        a, b, p = frame["response_a"].tolist(), frame["response_b"].tolist(), frame["prompt"].tolist()
        counts = frame["label"].value_counts()
        return cls(
            source=source, layout=layout, ties=ties, rows=len(frame),
            labels={LABEL_NAMES[k]: int(counts.get(k, 0)) for k in (0, 1, 2, -1) if counts.get(k, 0)},
            ties_dropped=ties_in if ties == "drop" else 0, ties_split=ties_in if ties == "split" else 0,
            null_turn_rows=sum(None in x or None in y or None in z for x, y, z in zip(p, a, b, strict=True)),
            multi_turn_rows=sum(len(x) > 1 for x in p),
            empty_response_rows=sum(any(t is not None and not t.strip() for t in x + y) for x, y in zip(a, b, strict=True)),
            identical_response_rows=sum(x == y for x, y in zip(a, b, strict=True)),
            languages={str(k): int(v) for k, v in frame["language"].value_counts().items()},
            replaced_text_rows=replaced)

    def to_text(self) -> str:
        """A readable multi-line summary."""
        total = max(self.rows, 1)
        labels = " | ".join(f"{k} {v} ({v / total:.1%})" for k, v in self.labels.items()) or "none"
        langs = ", ".join(f"{k} {v}" for k, v in list(self.languages.items())[:12])
        more = f" (+{len(self.languages) - 12} more)" if len(self.languages) > 12 else ""
        tie_note = {"drop": f", {self.ties_dropped} tie rows dropped",
                    "split": f", {self.ties_split} tie rows split into #a/#b"}.get(self.ties, "")
        return "\n".join([
            f"file: {self.source} (layout {self.layout}, ties {self.ties}{tie_note})",
            f"rows: {self.rows}",
            f"labels: {labels}",
            f"null turns: {self.null_turn_rows} rows",
            f"multi-turn rows: {self.multi_turn_rows}",
            f"empty responses: {self.empty_response_rows} rows",
            f"identical responses: {self.identical_response_rows} rows",
            f"replaced characters: {self.replaced_text_rows} rows (lone UTF-16 surrogates -> U+FFFD)",
            f"languages ({len(self.languages)}): {langs}{more}",
        ])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- public API ----------------------------------------------------------------------------------
def read_pairs(path: str | Path, layout: str = "auto", ties: str = "keep", column_map: dict | None = None,
               seed: int = 0) -> tuple[pd.DataFrame, ValidationReport]:
    """Read any supported file into the canonical frame and a :class:`ValidationReport`.

    ``seed`` only affects where chosen responses are placed for chosen/rejected layouts.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}{_close(layout, LAYOUTS)}")
    if ties not in TIE_POLICIES:
        raise ConfigError(f"ties={ties!r} is not one of {', '.join(TIE_POLICIES)}")
    path = Path(path)
    table = read_table(path)
    if column_map and layout == "auto":
        layout = "columns"
    if layout == "auto":
        layout = detect_layout(table, path)
    if layout == "columns" and not column_map:
        raise ConfigError("layout='columns' needs a column_map, e.g. {prompt: instruction, response_a: output_1, "
                          "response_b: output_2, winner: label}")
    parts = _read_layout(table, path, layout, column_map or {}, seed)
    replaced = _clean_parts(parts, path)
    frame = _assemble(parts, path, f"{layout}:{path.name}")
    ties_in = int((frame["label"] == TIE).sum())
    frame = apply_ties(frame, ties, path)
    return frame, ValidationReport.of(frame, str(path), layout, ties, ties_in, replaced)


def _read_layout(table: pd.DataFrame, path: Path, layout: str, column_map: dict, seed: int) -> dict:
    if layout.startswith("columns:"):
        preset = PRESETS[layout.split(":", 1)[1]]
        parts = _read_columns(table, path, preset.column_map, seed)
        if preset.language:
            parts["language"] = [preset.language(v) for v in parts["language"]]
        return parts
    if layout == "columns":
        return _read_columns(table, path, column_map, seed)
    _require(table, REQUIRED_COLUMNS[layout] if layout != "lmsys" else REQUIRED_COLUMNS["wsdm"], path, layout)
    readers = {"wsdm": _read_wsdm, "lmsys": _read_lmsys, "canonical": _read_canonical_table,
               "chosen_rejected": lambda t, p: _read_chosen_rejected(t, p, seed=seed),
               "oasst": lambda t, p: _read_oasst(t, p, seed=seed)}
    return readers[layout](table, path)


def read_sample_submission(path: str | Path) -> pd.DataFrame:
    """A Kaggle ``sample_submission.csv`` (id + answer columns) with ids as strings, in file order."""
    table = read_table(path)
    _require(table, ["id"], path, "sample_submission")
    ids = _row_ids(table, path)
    dup = [k for k, n in Counter(ids).items() if n > 1]
    if dup:
        raise _fail(path, "ids occur more than once", "use the competition's sample_submission.csv", "id", dup)
    return table.assign(id=ids)


def frame_from_records(records: list[dict], source: str = "records") -> pd.DataFrame:
    """A canonical frame from dicts; prompt/responses may be plain strings (one turn). For tests and demos."""
    table = pd.DataFrame.from_records(records)
    for column in TURN_COLUMNS:
        if column not in table.columns:
            raise _fail(source, f"records need '{column}'", "add the key to every record", column=column)
    ids = [str(i) for i in table["id"]] if "id" in table.columns else [str(i) for i in range(len(table))]
    parts = {k: [list(v) if isinstance(v, (list, tuple)) else [v] for v in table[k].tolist()] for k in TURN_COLUMNS}
    labels = (pd.to_numeric(table["label"]).fillna(UNLABELED) if "label" in table.columns
              else pd.Series(UNLABELED, index=table.index)).to_numpy(dtype=np.int64)
    if not np.isin(labels, list(LABEL_NAMES)).all():
        raise _fail(source, "labels must be -1, 0, 1 or 2", "fix the labels", column="label",
                    ids=[ids[i] for i in np.flatnonzero(~np.isin(labels, list(LABEL_NAMES)))])
    side = {k: [str(v) for v in table[k]] if k in table.columns else [d] * len(ids)
            for k, d in (("language", "unknown"), ("model_a", ""), ("model_b", ""))}
    parts = {"id": ids, **parts, "label": labels, **side}
    _clean_parts(parts, source)
    return _assemble(parts, source, source)


CANONICAL_FORMATS = {".parquet": "parquet", ".pq": "parquet"}


def check_canonical_out(path: str | Path, source: str | Path | None = None, overwrite: bool = True) -> Path:
    """The output path of a canonical file: a ``.parquet``/``.pq`` name that is not the input ``source``
    and, unless ``overwrite``, not an existing file."""
    from .io import check_output_file, check_output_suffix

    if source is None:
        path = check_output_suffix(path, CANONICAL_FORMATS, "canonical file")
    else:
        path = check_output_file(path, CANONICAL_FORMATS, "--out", {"the input file": source})
    if not overwrite and path.exists():
        raise _fail(path, "exists already", "choose a new name, or pass --overwrite to replace it")
    return path


def write_canonical(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a canonical frame as parquet (atomically); turn lists keep their nulls."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .io import atomic_path

    check_canonical_out(path)
    missing = [c for c in CANONICAL_COLUMNS if c not in frame.columns]
    if missing:
        raise _fail(path, f"frame lacks canonical columns {missing}", "build it with read_pairs or frame_from_records")
    turns = pa.list_(pa.string())
    schema = pa.schema([("id", pa.string()), *((c, turns) for c in TURN_COLUMNS), ("label", pa.int64()),
                        ("language", pa.string()), ("model_a", pa.string()), ("model_b", pa.string()),
                        ("source", pa.string())])
    data = {c: [list(v) for v in frame[c]] if c in TURN_COLUMNS else frame[c].tolist() for c in CANONICAL_COLUMNS}
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pydict(data, schema=schema), tmp)
    return Path(path)


def read_canonical(path: str | Path) -> pd.DataFrame:
    """Read a parquet written by :func:`write_canonical` back into the canonical frame."""
    frame, _ = read_pairs(path, layout="canonical")
    return frame


def load_training_frame(cfg: Any) -> pd.DataFrame:
    """``cfg.train_path`` plus ``cfg.extra_train_paths`` (each auto-detected), tie policy, ``max_rows``.

    A row id seen in an earlier file is an error unless its content is identical (then the later copy
    is skipped and logged): silent overlap between training files would leak across folds.
    """
    if not cfg.train_path:
        raise ConfigError("data.train_path is empty; give a training file, e.g. --set data.train_path=train.parquet")
    first, report = read_pairs(cfg.train_path, cfg.layout, cfg.ties, cfg.column_map or None, cfg.seed)
    frames, ties_dropped = [first], report.ties_dropped
    for extra in cfg.extra_train_paths:
        more, report = read_pairs(extra, "auto", cfg.ties, None, cfg.seed)
        frames.append(_without_repeats(more, frames, extra))
        ties_dropped += report.ties_dropped
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    check_trainable(frame, ", ".join(map(str, [cfg.train_path, *cfg.extra_train_paths])), ties_dropped)
    if cfg.max_rows is not None and cfg.max_rows < len(frame):
        frame = frame.sample(n=cfg.max_rows, random_state=cfg.seed).reset_index(drop=True)
    return frame


def check_trainable(frame: pd.DataFrame, source: Any, ties_dropped: int) -> pd.DataFrame:
    """A training frame with rows of two classes at least (unlabeled rows aside, which train on soft labels)."""
    if frame.empty:
        why = (f"all {ties_dropped} rows are ties and ties=drop drops them" if ties_dropped else "it holds no rows")
        raise _fail(source, f"no training rows are left: {why}",
                    "train on a file with winners (model_a / model_b); ties alone cannot teach which response wins")
    labels = frame["label"]
    if (labels >= 0).all() and labels.nunique() == 1:
        raise _fail(source, f"all {len(frame)} training rows are labelled {LABEL_NAMES[int(labels.iloc[0])]}, and a "
                            "model learns nothing from one class", "add rows with the other outcomes")
    return frame


def _without_repeats(frame: pd.DataFrame, earlier: list[pd.DataFrame], path: Any) -> pd.DataFrame:
    seen = pd.concat(earlier, ignore_index=True).set_index("id")
    overlap = frame[frame["id"].isin(seen.index)]
    if overlap.empty:
        return frame
    cols = list(TURN_COLUMNS) + ["label"]
    same = [all(seen.at[r.id, c] == getattr(r, c) for c in cols) for r in overlap.itertuples()]
    differ = overlap["id"][[not s for s in same]].tolist()
    if differ:
        raise _fail(path, "ids already used by an earlier training file with different content",
                    "rename the ids in one file or drop the overlapping rows", column="id", ids=differ)
    log.warning("%s: skipped %d rows already present in an earlier training file", path, len(overlap))
    return frame[~frame["id"].isin(seen.index)].reset_index(drop=True)


# ---- folds ---------------------------------------------------------------------------------------
def _prompt_texts(frame: pd.DataFrame) -> list[str]:
    return ["\x1f".join("" if t is None else t.strip() for t in turns) for turns in frame["prompt"].tolist()]


def prompt_keys(frame: pd.DataFrame) -> np.ndarray:
    """An integer group per row: rows with the same prompt text (all turns, stripped) share it."""
    return pd.factorize(pd.Series(_prompt_texts(frame), dtype=object))[0]


def assign_folds(frame: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """Fold number per row: the same prompt never lands in two folds; label and language shares stay balanced.

    Groups are visited largest first (equal sizes in the order of a hash of ``seed`` and the prompt
    text, so the assignment depends on the rows' content, not on their order in the file) and each
    goes to the fold that has the fewest rows of the group's strata (label x language) so far.
    Every model trained on the same rows therefore gets the same folds.
    """
    if n_folds < 2:
        raise ConfigError(f"n_folds={n_folds} must be at least 2")
    keys = _prompt_texts(frame)
    groups, uniques = pd.factorize(pd.Series(keys, dtype=object))
    strata = pd.factorize(frame["label"].astype(str) + "\x1f" + frame["language"].astype(str))[0]
    per_group = np.zeros((len(uniques), int(strata.max()) + 1 if len(strata) else 1), dtype=np.int64)
    np.add.at(per_group, (groups, strata), 1)
    tiebreak = np.array([int.from_bytes(hashlib.sha1(f"{seed}\x1e{k}".encode()).digest()[:8], "big")
                         for k in uniques], dtype=np.uint64)
    order = np.lexsort((tiebreak, -per_group.sum(axis=1)))
    counts = np.zeros((n_folds, per_group.shape[1]), dtype=np.int64)
    group_fold = np.empty(len(per_group), dtype=np.int64)
    for g in order:
        need = per_group[g]
        fold = int(np.argmin(counts @ need * 4 + counts.sum(axis=1)))
        counts[fold] += need
        group_fold[g] = fold
    return group_fold[groups]


def fold_table(frame: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """The fold assignment as a table (id, fold): what ``wsdm cv`` saves as OUTPUT/folds.parquet."""
    return pd.DataFrame({"id": frame["id"].astype(str).to_numpy(), "fold": assign_folds(frame, n_folds, seed)})


def folds_from_table(frame: pd.DataFrame, table: pd.DataFrame, n_folds: int, path: Any) -> np.ndarray:
    """Fold per row of ``frame`` looked up by id in a saved fold table; every id must be there."""
    problems = [c for c in ("id", "fold") if c not in table.columns]
    if problems:
        raise _fail(path, f"fold table lacks column(s) {problems}", "use the folds.parquet written by wsdm cv")
    by_id = pd.Series(table["fold"].to_numpy(), index=table["id"].astype(str))
    if by_id.index.duplicated().any():
        raise _fail(path, "ids occur more than once in the fold table", "use the folds.parquet written by wsdm cv",
                    "id", by_id.index[by_id.index.duplicated()].unique())
    ids = frame["id"].astype(str)
    missing = ids[~ids.isin(by_id.index)]
    if len(missing):
        raise _fail(path, f"{len(missing)} training row(s) have no fold", "the training data changed since the "
                    "folds were made: use a new cv output folder (new folds) or the original data", "id", missing)
    folds = by_id.loc[ids.to_numpy()].to_numpy().astype(np.int64)
    bad = (folds < 0) | (folds >= n_folds)
    if bad.any():
        raise _fail(path, f"folds must be 0..{n_folds - 1} (data.n_folds={n_folds})", "set data.n_folds to the "
                    "number of folds the table was made with", "fold", ids[bad])
    return folds


def split_fold(frame: pd.DataFrame, fold: int, n_folds: int, seed: int,
               folds: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) for one fold; ``fold=-1`` trains on everything (valid is empty).

    ``folds``: the fold of every row (a saved fold table, :func:`folds_from_table`); default
    :func:`assign_folds`. Unlabeled rows (label -1, e.g. pseudo-labelled pairs) are never validated
    on: they train in every fold.
    """
    if not -1 <= fold < n_folds:
        raise ConfigError(f"fold={fold} must be -1 or between 0 and n_folds-1={n_folds - 1}")
    if fold == -1:
        return frame.reset_index(drop=True), frame.iloc[:0].reset_index(drop=True)
    folds = assign_folds(frame, n_folds, seed) if folds is None else folds
    in_valid = (folds == fold) & (frame["label"].to_numpy() != UNLABELED)
    return frame[~in_valid].reset_index(drop=True), frame[in_valid].reset_index(drop=True)
