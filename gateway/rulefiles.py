"""Rule files for ``sendergate rules import`` / ``export``: CSV and JSON, no I/O.

CSV has a header line; the columns are ``scope,action,match_type,match_target`` and,
optionally, ``status,expires_at,note`` (SPEC issue 6), in any order. ``scope`` is a
mailbox address, a number, ``org:mail`` or ``org:phone``. JSON is a list of objects with
the same keys. One more optional column/key, ``include_subdomains`` (true/false, domain
rules only), keeps a domain rule that does not cover subdomains from turning into one
that does; export writes it only when some exported rule needs it, so files of ordinary
rules have exactly the seven columns.

Reading never raises for a bad *row*: each row becomes a ``Row`` with either the rule to
send or the reason it was refused, and its line number (CSV: the physical line the
record starts on, the header being line 1; JSON: the item's position, from 1). A file
that cannot be read as a whole (no header, unknown column, not a list) raises
``RuleFileError``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:  # the client imports httpx: not needed to read or write files
    from gateway.client import NewRule, Rule

Format = Literal["csv", "json"]
FORMATS: tuple[Format, ...] = ("csv", "json")
COLUMNS = ("scope", "action", "match_type", "match_target", "status", "expires_at", "note")
REQUIRED = COLUMNS[:4]
EXTRA_COLUMNS = ("include_subdomains",)
ALLOWED = COLUMNS + EXTRA_COLUMNS
NO_TARGET = ("invalid", "anonymous")  # match types whose target is the same word
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


class RuleFileError(ValueError):
    """The file cannot be read at all (as opposed to one bad row)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One rule of a file: ``rule`` to send, or ``error`` saying why it is refused."""

    line: int
    rule: NewRule | None = None
    error: str | None = None


def format_of(path: str, given: str | None) -> Format:
    """``given`` if set, else the file's extension; CSV when neither says."""
    if given is not None:
        return cast(Format, given)
    return "json" if path.lower().endswith(".json") else "csv"


def read_rules(text: str, fmt: Format) -> list[Row]:
    """Parse a whole file; every rule gets ``source = "cli"``."""
    return _read_csv(text) if fmt == "csv" else _read_json(text)


def _read_csv(text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header: list[str] | None = None
    rows: list[Row] = []
    end = 0  # the physical line the previous record ended on
    for cells in reader:
        start, end = end + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue  # blank lines are not rows
        if header is None:
            header = [c.strip().lower() for c in cells]
            _check_header(header, start)
            continue
        if len(cells) > len(header):
            rows.append(Row(start, error=f"{len(cells)} cells but {len(header)} columns"))
            continue
        record = dict(zip(header, cells, strict=False))
        rows.append(_row(start, {k: (v if v != "" else None) for k, v in record.items()}))
    if header is None:
        raise RuleFileError(f"empty file: expected a header line {','.join(COLUMNS)}")
    return rows


def _check_header(header: Sequence[str], line: int) -> None:
    unknown = [c for c in header if c not in ALLOWED]
    if unknown:
        raise RuleFileError(
            f"line {line}: unknown column {unknown[0]!r}; the header is "
            f"{','.join(COLUMNS)} (the last three optional)"
        )
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise RuleFileError(f"line {line}: the header lacks column {missing[0]!r}")
    if len(set(header)) != len(header):
        raise RuleFileError(f"line {line}: a column appears twice")


def _read_json(text: str) -> list[Row]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RuleFileError(f"not JSON: {exc}") from None
    if not isinstance(data, list):
        raise RuleFileError("a JSON rule file is a list of objects")
    rows: list[Row] = []
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            rows.append(Row(number, error="not an object"))
            continue
        unknown = sorted(k for k in item if k not in ALLOWED)
        if unknown:
            rows.append(Row(number, error=f"unknown key {unknown[0]!r}"))
            continue
        rows.append(_row(number, item))
    return rows


def _row(line: int, record: Mapping[str, Any]) -> Row:
    """A rule from one record (``None`` or absent = empty); strings are stripped, except
    the note."""
    values = {
        k: (v.strip() if isinstance(v, str) and k != "note" else v) for k, v in record.items()
    }
    values = {k: v for k, v in values.items() if v is not None and v != ""}
    if values.get("match_type") in NO_TARGET:
        values.setdefault("match_target", values["match_type"])
    for name in REQUIRED:
        if name not in values:
            return Row(line, error=f"{name}: is required")
    flag = values.get("include_subdomains")
    if isinstance(flag, str):
        if flag.lower() not in _TRUE + _FALSE:
            return Row(line, error="include_subdomains: must be true or false")
        values["include_subdomains"] = flag.lower() in _TRUE
    if values.get("status") == "active":
        del values["status"]  # the default; keeps requests small
    rule = cast("NewRule", {**values, "source": "cli"})
    return Row(line, rule=rule)


# --- export --------------------------------------------------------------------------------


def _record(rule: Rule) -> dict[str, Any]:
    """The file's keys of a rule; ``include_subdomains`` only where it is not the default."""
    fields: Mapping[str, Any] = rule
    out = {name: fields[name] for name in COLUMNS}
    if rule["match_type"] == "domain" and not rule["include_subdomains"]:
        out["include_subdomains"] = False
    return out


def write_rules(rules: Sequence[Rule], fmt: Format, out: IO[str]) -> None:
    """Write ``rules`` (in the given order) as a rule file that ``read_rules`` reads back."""
    records = [_record(r) for r in rules]
    if fmt == "json":
        json.dump(records, out, indent=2, ensure_ascii=False)
        out.write("\n")
        return
    extra = any("include_subdomains" in r for r in records)
    columns = COLUMNS + (EXTRA_COLUMNS if extra else ())
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(record.get(c)) for c in columns])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
