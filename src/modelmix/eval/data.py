"""Strict loading and validation of evaluation examples (JSONL).

Evaluation data drives merge-weight search, so a silently skipped or half-parsed line would bias every
later decision. Loading is therefore strict: every problem is a :class:`~modelmix.errors.DataError` naming
``file:line`` and the offending field. This module imports no torch/transformers (the CLI's ``--help`` and
data checks stay fast).

Example shapes by ``kind``:

* ``"decoder"``: ``{"input": str, "output": str}`` (metrics ``exact_match`` and ``loss``)
* ``"choice"``: ``{"input": str, "choices": [str, ...], "answer": int | str}`` (metric ``choice``);
  ``answer`` is an index into ``choices`` or one of the choice strings
* ``"encoder"``: ``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` (metric ``retrieval``);
  ``pos`` must be non-empty, ``neg`` may be empty

Extra keys are allowed and kept (zoo files carry ids/metadata).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from modelmix.errors import DataError

KINDS = ("decoder", "encoder", "choice")

#: metric name -> example kind it needs
METRIC_KIND = {"exact_match": "decoder", "loss": "decoder", "choice": "choice", "retrieval": "encoder"}


def _check_str(ex: Mapping[str, Any], key: str, where: str) -> None:
    if key not in ex:
        raise DataError(f"{where}: missing field {key!r} (fields present: {sorted(ex)}).")
    if not isinstance(ex[key], str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(ex[key]).__name__}.")


def _check_str_list(ex: Mapping[str, Any], key: str, where: str, *, nonempty: bool) -> None:
    if key not in ex:
        raise DataError(f"{where}: missing field {key!r} (fields present: {sorted(ex)}).")
    val = ex[key]
    if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
        raise DataError(f"{where}: field {key!r} must be a list of strings.")
    if nonempty and not val:
        raise DataError(f"{where}: field {key!r} must not be empty.")


def validate_example(ex: Any, kind: str, where: str) -> dict[str, Any]:
    """Check one example of ``kind``; return it (a dict). ``where`` (e.g. ``"f.jsonl:3"``) prefixes errors."""
    if kind not in KINDS:
        raise DataError(f"Unknown example kind {kind!r}; expected one of {', '.join(KINDS)}.")
    if not isinstance(ex, Mapping):
        raise DataError(f"{where}: each example must be a JSON object, got {type(ex).__name__}.")
    if kind == "decoder":
        if "input" not in ex and "query" in ex:
            raise DataError(f"{where}: this is a retrieval example {{query, pos, neg}} (for encoders), but "
                            f"decoder examples {{input, output}} are needed here.")
        _check_str(ex, "input", where)
        _check_str(ex, "output", where)
    elif kind == "encoder":
        if "query" not in ex and "input" in ex:
            raise DataError(f"{where}: this is a decoder example {{input, output}}, but retrieval examples "
                            f"{{query, pos, neg}} (for encoders) are needed here.")
        _check_str(ex, "query", where)
        _check_str_list(ex, "pos", where, nonempty=True)
        _check_str_list(ex, "neg", where, nonempty=False)
    else:  # choice
        _check_str(ex, "input", where)
        _check_str_list(ex, "choices", where, nonempty=True)
        if "answer" not in ex:
            raise DataError(f"{where}: missing field 'answer' (fields present: {sorted(ex)}).")
        ans = ex["answer"]
        if isinstance(ans, bool) or not isinstance(ans, (int, str)):
            raise DataError(f"{where}: 'answer' must be an index or one of the choice strings.")
        if isinstance(ans, int) and not 0 <= ans < len(ex["choices"]):
            raise DataError(f"{where}: 'answer' index {ans} out of range for {len(ex['choices'])} choices.")
        if isinstance(ans, str) and ans not in ex["choices"]:
            raise DataError(f"{where}: 'answer' {ans!r} is not one of the choices {ex['choices']!r}.")
    return dict(ex)


def load_examples(path: str | Path, kind: str = "decoder") -> list[dict[str, Any]]:
    """Read a JSONL file of ``kind`` examples (see module docstring); blank lines are skipped.

    Raises DataError for a missing/unreadable/empty file, invalid JSON (``file:line``), or a missing /
    mistyped field (``file:line``).
    """
    if kind not in KINDS:
        raise DataError(f"Unknown example kind {kind!r}; expected one of {', '.join(KINDS)}.")
    return [validate_example(obj, kind, where) for where, obj in jsonl_objects(path)]


def jsonl_objects(path: str | Path, what: str = "Data file") -> list[tuple[str, Any]]:
    """``(file:line, parsed JSON)`` for each non-blank line of a JSON Lines file: the reading and the
    errors every JSONL input shares (missing, a directory, not UTF-8, one JSON array instead of lines,
    invalid JSON at ``file:line``, no rows), each a one-paragraph DataError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # a UTF-8 byte-order mark (Windows editors) is not data
    except FileNotFoundError:
        raise DataError(f"{what} {p} does not exist.") from None
    except IsADirectoryError:
        raise DataError(f"{what} {p} is a directory, expected a .jsonl file.") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {p} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except OSError as e:
        raise DataError(f"Cannot read {what.lower()} {p}: {e.strerror or e}.") from None
    out: list[tuple[str, Any]] = []
    if text.lstrip().startswith("["):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, list) and whole and all(isinstance(e, Mapping) for e in whole):
            raise DataError(
                f"{p} holds one JSON array, but modelmix expects JSON Lines: one object per line. Convert it "
                f"into a new file, e.g. `jq -c '.[]' {p.name} > {p.stem}.lines.jsonl`."
            )
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (expected JSON Lines: one complete object per line)" if lineno == 1 and line.strip() in "[{" else ""
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno}){hint}.") from None
        out.append((where, obj))
    if not out:
        raise DataError(f"{what} {p} contains no " + ("examples." if what == "Data file" else "rows."))
    return out


def coerce_examples(data: str | Path | Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    """A path (loaded with :func:`load_examples`) or an in-memory list of dicts (validated the same way)."""
    if isinstance(data, (str, Path)):
        return load_examples(data, kind)
    try:
        items = list(data)
    except TypeError:
        raise DataError(f"Dataset must be a path or a list of dicts, got {type(data).__name__}.") from None
    if not items:
        raise DataError("Dataset is empty.")
    return [validate_example(ex, kind, f"<examples>[{i}]") for i, ex in enumerate(items)]


def answer_index(ex: Mapping[str, Any]) -> int:
    """Index of the correct choice of a validated ``choice`` example."""
    ans = ex["answer"]
    return ans if isinstance(ans, int) else list(ex["choices"]).index(ans)
