"""Answer files (one JSON object per line): strict reading, resume, duplicate-free writing, shard merging.

The *key* of a record identifies the question it answers. By default it is ``question_id``. Some
LLaVA question files reuse one ``question_id`` for several questions (MME: the two questions of an
image; TextVQA: the image id), so those benchmarks key on ``(question_id, prompt)``; see
:func:`key_for_benchmark`. A question record has its text under ``text``, an answer record under
``prompt`` (LLaVA's loader copies the question text there), and :func:`question_id_prompt_key`
accepts both.
"""
from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, Hashable, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

KeyFn = Callable[[dict], Hashable]
N_IDS_SHOWN = 20  # how many offending ids an error message lists before "... and N more"


class AnswerFileError(ValueError):
    """A malformed answer/question file (the message names the file and the 1-based line)."""


class DuplicateAnswerError(ValueError):
    """An attempt to write or load a second answer for an already answered question."""


class MergeError(ValueError):
    """Shards that do not cover the expected questions exactly once."""


class TruncatedAnswerWarning(UserWarning):
    """A killed run left a partial last line; it was cut off and will be redone."""


# ----------------------------------------------------------------------------- keys

def _hashable(value):
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def question_id_key(record: dict) -> Hashable:
    return _hashable(record["question_id"])


def question_id_prompt_key(record: dict) -> Hashable:
    """``(question_id, question text)``: ``prompt`` of an answer record, else ``text`` of a question."""
    text = record["prompt"] if "prompt" in record else record["text"]
    return (_hashable(record["question_id"]), text)


COMPOUND_KEY_BENCHMARKS = ("mme", "textvqa")


def key_for_benchmark(name: Optional[str]) -> KeyFn:
    return question_id_prompt_key if name in COMPOUND_KEY_BENCHMARKS else question_id_key


def _key_of(key: KeyFn, record: dict, path, lineno: int) -> Hashable:
    try:
        return key(record)
    except KeyError as err:
        raise AnswerFileError(f"{path}:{lineno}: record lacks field {err.args[0]!r} needed for its key") from None


def _show(items: Sequence, n: int = N_IDS_SHOWN) -> str:
    shown = ", ".join(repr(x) for x in list(items)[:n])
    return shown + (f", ... and {len(items) - n} more" if len(items) > n else "")


# ----------------------------------------------------------------------------- reading

def _parse_line(line: str, path, lineno: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise AnswerFileError(f"{path}:{lineno}: malformed JSON line ({err.msg} at column {err.colno}): "
                              f"{line[:80]!r}") from None
    if not isinstance(record, dict):
        raise AnswerFileError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


def iter_jsonl(path) -> Iterator[Tuple[int, str, dict]]:
    """Yield ``(lineno, raw_line_without_newline, record)``; blank lines are skipped."""
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            ends_cleanly = line.endswith("\n")
            line = line.rstrip("\n")
            try:
                record = _parse_line(line, path, lineno)
            except AnswerFileError as err:
                if not ends_cleanly:
                    raise AnswerFileError(f"{err} -- the last line has no newline: the run that wrote it was "
                                          "probably killed; rerun it to resume") from None
                raise
            yield lineno, line, record


def load_json_list(path, what: str, error: type = ValueError) -> list:
    """A JSON file that must hold a list (OCRBench / ScienceQA question files, LLaVA's training JSON).

    Raises ``error`` naming the file, with the line and column of a syntax error, or what was
    found instead of ``what`` (e.g. "a JSON list of records")."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise error(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(data, list):
        raise error(f"{path}: expected {what}, got {type(data).__name__}")
    return data


def read_jsonl(path) -> List[dict]:
    """All records of a JSONL file; AnswerFileError naming the file and 1-based line of a bad line."""
    return [record for _, _, record in iter_jsonl(path)]


def read_questions(path) -> List[dict]:
    """Question file as a list of records: ``.jsonl``, a ``.json`` list, or an MMBench-style ``.tsv``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file not found: {path}")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".tsv":
        csv.field_size_limit(2**31 - 1)  # MMBench rows carry base64 images
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise AnswerFileError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    return data


def question_keys(questions: Iterable[dict], benchmark: Optional[str] = None) -> List[Hashable]:
    """Expected answer keys of question records, in question-file order.

    ``question_id`` (jsonl), ``id`` (ScienceQA json list), ``index`` (MMBench tsv, as int); MME and
    TextVQA use ``(question_id, text)``.
    """
    keys = []
    for i, q in enumerate(questions):
        if "question_id" in q:
            keys.append(key_for_benchmark(benchmark)(q))
        elif "id" in q:
            keys.append(_hashable(q["id"]))
        elif "index" in q:
            keys.append(int(q["index"]))
        else:
            raise AnswerFileError(f"question #{i + 1} has none of 'question_id', 'id', 'index': {str(q)[:80]}")
    return keys


# ----------------------------------------------------------------------------- resume

def load_answered(path, key: KeyFn = question_id_key, repair: bool = True) -> Set[Hashable]:
    """Keys already answered in ``path`` (empty set if it does not exist), for resuming a run.

    A partial last line (no trailing newline, or invalid JSON) is what a killed run leaves: it is
    cut off (the file is truncated back to the last good line, with a TruncatedAnswerWarning) so
    that question is redone. A malformed line anywhere else, or a key answered twice, raises.
    """
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    lines = data.split(b"\n")  # the last element is b"" when the file ends with a newline
    keys: Dict[Hashable, int] = {}
    good_end = 0  # byte offset just past the last good line
    offset = 0
    n_lines = len(lines) if lines[-1] else len(lines) - 1
    for i in range(n_lines):
        raw = lines[i]
        lineno = i + 1
        is_last = i == n_lines - 1
        complete = not is_last or data.endswith(b"\n")
        line_end = offset + len(raw) + (1 if complete else 0)
        text = raw.decode("utf-8", errors="replace")
        if text.strip():
            try:
                if not complete:
                    raise AnswerFileError(f"{path}:{lineno}: last line has no trailing newline")
                record = _parse_line(text, path, lineno)
            except AnswerFileError as err:
                if not is_last:
                    raise
                if repair:
                    with open(path, "r+b") as f:
                        f.truncate(good_end)
                    warnings.warn(f"{path}: removed a truncated last line {lineno} ({err}); "
                                  f"{len(keys)} answers kept, that question will be redone",
                                  TruncatedAnswerWarning, stacklevel=2)
                    return set(keys)
                raise
            k = _key_of(key, record, path, lineno)
            if k in keys:
                raise DuplicateAnswerError(f"{path}:{lineno}: question {k!r} is already answered on line {keys[k]}")
            keys[k] = lineno
        good_end = line_end
        offset = line_end
    return set(keys)


class AnswerWriter:
    """Append-only answer writer: one JSON object per line, flushed per line, never a duplicate key.

    Opening an existing file resumes it (:func:`load_answered`, which also cuts a truncated last
    line). ``writer.answered`` holds the keys present; ``key in writer`` tests one.
    """

    def __init__(self, path, key: KeyFn = question_id_key, fsync: bool = False):
        self.path = Path(path)
        self.key = key
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.answered: Set[Hashable] = load_answered(self.path, key)
        self._f = open(self.path, "a", encoding="utf-8")

    def __contains__(self, k: Hashable) -> bool:
        return k in self.answered

    def write(self, record: dict) -> None:
        try:
            k = self.key(record)
        except KeyError as err:
            raise AnswerFileError(f"{self.path}: answer to write lacks field {err.args[0]!r}: {str(record)[:80]}") from None
        if k in self.answered:
            raise DuplicateAnswerError(f"{self.path}: question {k!r} is already answered; refusing a duplicate")
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())
        self.answered.add(k)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- merging

def merge_shards(shard_paths: Sequence, out_path, question_ids: Sequence[Hashable],
                 key: KeyFn = question_id_key) -> int:
    """Merge shard answer files into ``out_path`` in the order of ``question_ids``.

    Every expected key must be answered exactly once across the shards; otherwise MergeError names
    the missing shard files, the missing ids (first 20 and the count), the duplicated ids (with
    their files and lines) and any unexpected ids. Returns the number of merged records.
    """
    expected_seen: Dict[Hashable, int] = {}
    dup_expected = []
    for i, k in enumerate(question_ids):
        if k in expected_seen:
            dup_expected.append(k)
        expected_seen[k] = i
    if dup_expected:
        raise MergeError(f"the question list repeats {len(dup_expected)} ids ({_show(dup_expected)}); this "
                         "benchmark needs a compound key, e.g. key=question_id_prompt_key")
    missing_files = [str(p) for p in shard_paths if not Path(p).is_file()]
    found: Dict[Hashable, Tuple[str, int, str]] = {}
    dups: Dict[Hashable, List[str]] = {}
    unexpected = []
    for p in shard_paths:
        if str(p) in missing_files:
            continue
        for lineno, raw, record in iter_jsonl(p):
            k = _key_of(key, record, p, lineno)
            if k not in expected_seen:
                unexpected.append(k)
            elif k in found:
                dups.setdefault(k, [f"{found[k][0]}:{found[k][1]}"]).append(f"{p}:{lineno}")
            else:
                found[k] = (str(p), lineno, raw)
    missing = [k for k in question_ids if k not in found]
    problems = []
    if missing_files:
        problems.append(f"missing shard files: {', '.join(missing_files)}")
    if missing:
        problems.append(f"{len(missing)} of {len(question_ids)} question ids have no answer: {_show(missing)}")
    if dups:
        shown = "; ".join(f"{k!r} at {', '.join(v)}" for k, v in list(dups.items())[:N_IDS_SHOWN])
        more = f"; ... and {len(dups) - N_IDS_SHOWN} more" if len(dups) > N_IDS_SHOWN else ""
        problems.append(f"{len(dups)} question ids are answered more than once: {shown}{more}")
    if unexpected:
        problems.append(f"{len(unexpected)} answers are for ids not in the question list: {_show(unexpected)}")
    if problems:
        raise MergeError(f"cannot merge {len(shard_paths)} shards into {out_path}:\n  " + "\n  ".join(problems))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for k in question_ids:
            f.write(found[k][2] + "\n")
    os.replace(tmp, out_path)
    return len(question_ids)


# ----------------------------------------------------------------------------- skipped questions

ERRORS_FILE_NAME = "errors.jsonl"


def default_errors_path(result_file) -> Path:
    """Where the generation CLIs record skipped questions: ``errors.jsonl`` next to the answers."""
    return Path(result_file).parent / ERRORS_FILE_NAME


def read_skipped(errors_file) -> List[dict]:
    """Records ``{"question_id": ..., "error": ...}`` of skipped questions ([] if the file is absent)."""
    if errors_file is None or not Path(errors_file).is_file():
        return []
    records = read_jsonl(errors_file)
    for i, r in enumerate(records):
        if "question_id" not in r:
            raise AnswerFileError(f"{errors_file}: record #{i + 1} lacks 'question_id': {str(r)[:80]}")
    return records
