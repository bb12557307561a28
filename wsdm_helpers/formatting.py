"""Templates per model family and token-budget truncation of a pair (the A/B swap is in ``tta``).

A pair is laid out as (``Template`` documents the pieces)::

    begin  turn_1  turn_sep  turn_2 ...  [question_sep question]  close  [answer_sep answer_prefix]
    turn_i = prompt_header prompt_i  a_header response_a_i  b_header response_b_i

Truncation works on token ids that were already produced (``tokenization`` tokenizes every text once,
in batch); this module only decides which ids are kept:

* the content budget is ``max_length`` minus the template's fixed tokens (role headers, separators,
  special tokens, the question), so the result never exceeds ``max_length``;
* the budget is split across prompt / response_a / response_b by shares, water-filling style: a field
  shorter than its share keeps everything and the rest flows to the others; every non-empty field
  keeps at least ``min_field_tokens`` (or all of it, when shorter) whenever the budget allows;
* within a field the latest turns are kept first; a cut turn keeps its head and its tail with the
  elision marker between them; earlier turns that keep nothing in any field are dropped whole,
  headers included, and their budget goes to the turns that remain.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

FIELDS = ("prompt", "response_a", "response_b")


@dataclasses.dataclass(frozen=True)
class Template:
    """Text pieces of one layout. Pieces may hold ``{bos}``, ``{eos}``, ``{cls}``, ``{sep}``.

    Chat templates put the whole pair in one user message; ``close`` ends that message and opens the
    assistant turn, so the mcq head's ``answer_prefix`` ("Answer:") starts the assistant's reply and
    the next token is the answer letter.
    """

    name: str
    begin: str
    close: str
    prompt_header: str = "Prompt: "
    a_header: str = "\n\nResponse A: "
    b_header: str = "\n\nResponse B: "
    turn_sep: str = "\n\n"
    question_sep: str = "\n\n"
    answer_sep: str = ""
    supports_mcq: bool = True


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("gemma", begin="{bos}<start_of_turn>user\n", close="<end_of_turn>\n<start_of_turn>model\n"),
    Template("chatml", begin="<|im_start|>user\n", close="<|im_end|>\n<|im_start|>assistant\n"),
    Template("llama3", begin="{bos}<|start_header_id|>user<|end_header_id|>\n\n",
             close="<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    Template("mistral", begin="{bos}[INST] ", close=" [/INST]", answer_sep=" "),
    Template("phi3", begin="{bos}<|user|>\n", close="<|end|>\n<|assistant|>\n"),
    Template("encoder", begin="{cls}", close="{sep}", prompt_header="", a_header="{sep}", b_header="{sep}",
             turn_sep="{sep}", question_sep="{sep}", supports_mcq=False),
    Template("plain", begin="{bos}", close="", answer_sep="\n"),
)}


@dataclasses.dataclass(frozen=True)
class TemplateIds:
    """A template's fixed pieces as token ids for one tokenizer and format (built once per call)."""

    begin: list[int]
    headers: tuple[list[int], list[int], list[int]]  # prompt, response_a, response_b
    turn_sep: list[int]
    end: list[int]  # question block + close (+ answer prefix for the mcq head)
    marker: list[int]  # elision marker

    def overhead(self, turns: int) -> int:
        """Fixed tokens of a sequence with ``turns`` turns."""
        per_turn = sum(len(h) for h in self.headers)
        return len(self.begin) + len(self.end) + turns * per_turn + max(turns - 1, 0) * len(self.turn_sep)


@dataclasses.dataclass(frozen=True)
class Budget:
    """How the ``max_length`` budget is shared (from ``FormatConfig``)."""

    max_length: int
    shares: tuple[float, float, float]
    min_field_tokens: int


# ---- budget allocation ----------------------------------------------------------------------------
def water_fill(lengths: Sequence[int], shares: Sequence[float], budget: int) -> list[int]:
    """Integer allocation <= lengths, summing to min(budget, sum(lengths)) (less at most 2), by shares.

    A field that needs less than its share keeps all of it; what it leaves flows to the others by
    their shares. A field ``f`` gets at least ``min(lengths[f], floor(budget * share_f / sum(shares)))``.
    """
    alloc = [0] * len(lengths)
    open_fields = [i for i, n in enumerate(lengths) if n > 0]
    budget = max(budget, 0)
    while open_fields and budget > 0:
        total = sum(shares[i] for i in open_fields)
        weight = {i: (shares[i] / total if total > 0 else 1 / len(open_fields)) for i in open_fields}
        done = [i for i in open_fields if lengths[i] - alloc[i] <= budget * weight[i]]
        if not done:
            for i in open_fields:
                alloc[i] = int(budget * weight[i])
            _spread_leftover(alloc, open_fields, [budget * weight[i] for i in open_fields])
            break
        for i in done:
            budget -= lengths[i] - alloc[i]
            alloc[i] = lengths[i]
            open_fields.remove(i)
    return alloc


def _spread_leftover(alloc: list[int], fields: list[int], exact: list[float]) -> None:
    """Hand the rounding leftover out one token each, largest remainder first.

    Fields with the same exact share (A and B of equal length) get a token only together, so the
    swapped pair keeps the same tokens of each response; this may leave a token or two unused.
    """
    leftover = round(sum(exact)) - sum(alloc[i] for i in fields)
    groups: dict[float, list[int]] = {}
    for i, x in zip(fields, exact, strict=True):
        groups.setdefault(x, []).append(i)
    for x in sorted(groups, key=lambda x: x - int(x), reverse=True):
        if len(groups[x]) <= leftover:
            for i in groups[x]:
                alloc[i] += 1
            leftover -= len(groups[x])


def allocate(lengths: Sequence[int], budget: Budget, content: int) -> list[int]:
    """Field allocations for ``content`` tokens: by shares, but never below ``min(length, min_field_tokens)``.

    Fields that the shares would leave under their floor get exactly the floor; the others share the
    rest (repeated until no field is under its floor). When even the floors do not fit, shares alone decide.
    """
    floors = [min(n, budget.min_field_tokens) for n in lengths]
    if sum(floors) > content:
        return water_fill(lengths, budget.shares, content)
    alloc = list(floors)
    raised: set[int] = set()
    while True:
        rest = [i for i in range(len(lengths)) if i not in raised]
        shared = water_fill([lengths[i] for i in rest], [budget.shares[i] for i in rest],
                            content - sum(floors[i] for i in raised))
        under = {i for i, a in zip(rest, shared, strict=True) if a < floors[i]}
        if not under:
            break
        raised |= under
    for i, a in zip(rest, shared, strict=True):
        alloc[i] = a
    return alloc


def elide(ids: list[int], keep: int, marker: list[int]) -> list[int]:
    """At most ``keep`` tokens of ``ids``: head + marker + tail when cut (head only if the marker won't fit)."""
    if len(ids) <= keep:
        return ids
    room = keep - len(marker)
    if room < 2:
        return ids[:max(keep, 0)]
    head = room - room // 2
    return ids[:head] + marker + ids[len(ids) - room // 2:]


def kept_tokens(length: int, keep: int, marker_len: int) -> int:
    """Content tokens :func:`elide` keeps of a text of ``length`` tokens (the marker not counted)."""
    if length <= keep:
        return length
    return keep - marker_len if keep - marker_len >= 2 else max(keep, 0)


def latest_first(lengths: Sequence[int], keep: int) -> list[int]:
    """Tokens each turn of one field may keep from ``keep``: the latest turns first, whole when they fit."""
    out = [0] * len(lengths)
    for t in range(len(lengths) - 1, -1, -1):
        out[t] = min(lengths[t], keep)
        keep -= out[t]
    return out


# ---- one pair -------------------------------------------------------------------------------------
@dataclasses.dataclass
class RowFit:
    """The kept ids of one pair and what was cut (``kept`` counts content tokens, markers excluded)."""

    input_ids: list[int]
    original: tuple[int, int, int]
    kept: tuple[int, int, int]
    turns: int
    turns_kept: int


def fit_pair(turns: Sequence[tuple[list[int], list[int], list[int]]], parts: TemplateIds,
             budget: Budget) -> RowFit:
    """Lay out one pair (turns of token ids per field) within ``budget.max_length``, special tokens included."""
    n_turns = len(turns)
    k = n_turns
    while k > 1 and parts.overhead(k) + 3 > budget.max_length:
        k -= 1
    while True:
        window = turns[n_turns - k:]
        lengths = [[len(turn[f]) for turn in window] for f in range(3)]
        alloc = allocate([sum(lens) for lens in lengths], budget, budget.max_length - parts.overhead(k))
        allowed = [latest_first(lens, a) for lens, a in zip(lengths, alloc, strict=True)]
        lost = [t for t in range(k - 1) if not any(allowed[f][t] for f in range(3))
                and any(lengths[f][t] for f in range(3))]
        if not lost:
            break
        k -= lost[-1] + 1
    ids = list(parts.begin)
    kept = [0, 0, 0]
    for t, turn in enumerate(window):
        if t:
            ids += parts.turn_sep
        for f in range(3):
            ids += parts.headers[f]
            ids += elide(turn[f], allowed[f][t], parts.marker)
            kept[f] += kept_tokens(lengths[f][t], allowed[f][t], len(parts.marker))
    ids += parts.end
    original = tuple(sum(len(turn[f]) for turn in turns) for f in range(3))
    return RowFit(ids, original, tuple(kept), n_turns, k)
