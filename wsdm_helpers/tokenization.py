"""Fast batch encoding of the canonical frame into model inputs within ``max_length``.

Every prompt turn, every response_a turn and every response_b turn of the whole frame is tokenized
once, in a few large batched calls to the Rust tokenizer (which runs them on all cores), without
special tokens; the ids are then regrouped per row and fitted to the budget by
:func:`formatting.fit_pair`. There is no per-row tokenizer call. A template's fixed pieces (role
headers, separators, special tokens, the question) are tokenized once per call.

MCQ head: the sequence ends with ``FormatConfig.answer_prefix`` ("Answer:") and the prediction is the
next-token logits of the answer letters, the tokens the tokenizer itself writes for " A" / " B" after
"Answer:" (one token each, checked): the encoded end is the shared part of "...Answer: A" and
"...Answer: B", so the sequence stops exactly where the letter token would follow.
:func:`answer_token_ids` and :func:`encode_pairs` use the same rule.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .config import FormatConfig
from .data import clean_text
from .errors import ConfigError, DataError
from .formatting import FIELDS, TEMPLATES, Budget, Template, TemplateIds, fit_pair

CHUNK = 4096  # texts per batched tokenizer call (bounds the memory of the Rust encodings)
ROW_BLOCK = 1024  # rows encoded at a time: untruncated token lists exist for one block only


class PackedRows(Sequence):
    """Token id rows packed in one int32 array (4 bytes a token instead of a Python int list's 8-36).

    Reads like ``list[list[int]]``: ``rows[i]`` is a new list of ints, made only when asked for, so a
    whole test set's encoding stays small and each chunk materialises just its own rows.
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]]) -> PackedRows:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)]))

    @classmethod
    def concat(cls, parts: Sequence[PackedRows]) -> PackedRows:
        if not parts:
            return cls.from_rows([])
        shifts = np.cumsum([0] + [len(p.flat) for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shifts, strict=True)])
        return cls(np.concatenate([p.flat for p in parts]), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.flat[self.offsets[i]:self.offsets[i + 1]].tolist()

    def take(self, indices: Sequence[int] | np.ndarray) -> PackedRows:
        pieces = [self.flat[self.offsets[i]:self.offsets[i + 1]] for i in indices]
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        return PackedRows(flat, np.concatenate([[0], np.cumsum(lengths)]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return False
        return all(list(a) == list(b) for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PackedRows({len(self)} rows, {len(self.flat)} tokens)"
_PLACEHOLDER = re.compile(r"(\{(?:bos|eos|cls|sep)\})")


@dataclasses.dataclass
class EncodedPairs:
    """Token ids of a frame's pairs, keyed by id, with per-row length statistics.

    ``stats`` has one row per pair: ``{field}_tokens`` (tokens before truncation), ``{field}_kept``
    (content tokens kept, markers excluded), ``{field}_truncated``, ``turns``, ``turns_kept``, ``length``.
    """

    ids: list[str]
    input_ids: Sequence[list[int]]  # PackedRows from encode_pairs; rows read as lists of ints
    labels: np.ndarray
    lengths: np.ndarray
    stats: pd.DataFrame
    template: str = ""
    head: str = "classifier"

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, indices: Sequence[int] | np.ndarray) -> EncodedPairs:
        """The rows at ``indices`` (positions), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(
            self,
            ids=[self.ids[i] for i in idx],
            input_ids=(self.input_ids.take(idx) if isinstance(self.input_ids, PackedRows)
                       else [self.input_ids[i] for i in idx]),
            labels=self.labels[idx],
            lengths=self.lengths[idx],
            stats=self.stats.iloc[idx].reset_index(drop=True),
        )

    @classmethod
    def concat(cls, parts: Sequence[EncodedPairs]) -> EncodedPairs:
        """The rows of ``parts`` one after the other (encode_pairs of consecutive slices of one frame)."""
        return dataclasses.replace(
            parts[0], ids=[i for p in parts for i in p.ids], input_ids=PackedRows.concat([p.input_ids for p in parts]),
            labels=np.concatenate([p.labels for p in parts]), lengths=np.concatenate([p.lengths for p in parts]),
            stats=pd.concat([p.stats for p in parts], ignore_index=True))


# ---- tokenizer helpers ----------------------------------------------------------------------------
def _backend(tokenizer: Any):
    """The Rust tokenizer behind a fast HF tokenizer, with no truncation or padding configured."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer; load it with "
                          "AutoTokenizer.from_pretrained(path) (use_fast=True, the default) from a folder with tokenizer.json")
    if backend.truncation is not None or backend.padding is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added, in a few batched calls (same ids as ``tokenizer(text)``)."""
    backend = _backend(tokenizer)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    out: list[list[int]] = []
    for start in range(0, len(texts), CHUNK):
        out += [e.ids for e in encode(list(texts[start:start + CHUNK]), add_special_tokens=False)]
    return out


def _piece_ids(tokenizer: Any, text: str, template: str) -> list[int]:
    """Ids of a template piece: text is tokenized, ``{bos}`` etc. become the tokenizer's special ids."""
    ids: list[int] = []
    for part in _PLACEHOLDER.split(text):
        if not part:
            continue
        if _PLACEHOLDER.fullmatch(part):
            name = part[1:-1]
            token_id = getattr(tokenizer, f"{name}_token_id", None)
            if token_id is None and name != "bos":  # models without a BOS token (Qwen) simply start without one
                raise ConfigError(f"template '{template}' needs the tokenizer's {name}_token, which "
                                  f"{type(tokenizer).__name__} does not define; pick the model family's template")
            ids += [] if token_id is None else [token_id]
        else:
            ids += encode_texts(tokenizer, [part])[0]
    return ids


def _answer_split(tokenizer: Any, text: str, num_labels: int) -> tuple[list[int], list[int]]:
    """Tokenize ``text + " A"``, ``text + " B"`` (+ ``" C"``): (the ids they share, each one's last token).

    Raises ConfigError unless the encodings differ in exactly their last token, i.e. each letter is
    one token in that position.
    """
    encodings = encode_texts(tokenizer, [f"{text} {letter}" for letter in "ABC"[:num_labels]])
    shared = encodings[0][:-1]
    if not shared or any(len(e) != len(encodings[0]) or e[:-1] != shared for e in encodings):
        letters = " / ".join(repr(f"{text} {letter}") for letter in "ABC"[:num_labels])
        raise ConfigError(f"the answer letters are not single tokens after {text!r} in {type(tokenizer).__name__} "
                          f"({letters} differ in more than their last token); use format.head=classifier"
                          + (" or num_labels=2" if num_labels == 3 else ""))
    return shared, [e[-1] for e in encodings]


def answer_token_ids(tokenizer: Any, num_labels: int = 2, answer_prefix: str = "Answer:") -> tuple[int, ...]:
    """Ids of the answer tokens the mcq head reads: (A, B), or (A, B, C = tie) for ``num_labels=3``.

    Each is the last token of ``answer_prefix + " A"`` etc. as the tokenizer writes it: "▁A" for
    Gemma, "ĠA" for Llama-3 / Qwen; a byte-level tokenizer without a merged " A" writes a space token
    and then "A", and the space then ends the encoded sequence. Raises ConfigError when a letter is
    not one token there.
    """
    if num_labels not in (2, 3):
        raise ConfigError(f"num_labels={num_labels} must be 2 or 3")
    return tuple(_answer_split(tokenizer, answer_prefix, num_labels)[1])


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token (SmolLM2, Llama) its EOS (or UNK) as pad token; returns it.

    Padding positions are masked out and classification heads read the last real token, so reusing
    EOS changes no result and adds no embedding row.
    """
    if tokenizer.pad_token_id is None:
        for name in ("eos_token", "unk_token"):
            if getattr(tokenizer, name, None) is not None:
                tokenizer.pad_token = getattr(tokenizer, name)
                break
        else:
            raise ConfigError(f"{type(tokenizer).__name__} has no pad, eos or unk token to pad with; "
                              "set tokenizer.pad_token before encoding")
    return tokenizer


def template_ids(tokenizer: Any, fmt: FormatConfig, template: str) -> TemplateIds:
    """The template's fixed pieces as ids for this tokenizer (tokenized once per call)."""
    tpl = get_template(template)
    end = ""
    if fmt.head == "mcq" or fmt.classifier_question:
        end = tpl.question_sep + fmt.question if fmt.question else ""
    end += tpl.close
    if fmt.head == "mcq":
        if not tpl.supports_mcq:
            raise ConfigError(f"template '{template}' is for encoders and has no mcq style; use format.head=classifier")
        end += tpl.answer_sep + fmt.answer_prefix
    return TemplateIds(
        begin=_piece_ids(tokenizer, tpl.begin, template),
        headers=tuple(_piece_ids(tokenizer, h, template) for h in (tpl.prompt_header, tpl.a_header, tpl.b_header)),
        turn_sep=_piece_ids(tokenizer, tpl.turn_sep, template),
        end=_mcq_end(tokenizer, end, fmt) if fmt.head == "mcq" else _piece_ids(tokenizer, end, template),
        marker=_piece_ids(tokenizer, fmt.elision, template),
    )


def _mcq_end(tokenizer: Any, end: str, fmt: FormatConfig) -> list[int]:
    """The end ids exactly as they precede the answer letter (a trailing space token included, if any)."""
    if _PLACEHOLDER.search(end):
        raise ConfigError("mcq templates end in plain text; remove special-token placeholders after the question")
    shared, letters = _answer_split(tokenizer, end, 2)
    if tuple(letters) != answer_token_ids(tokenizer, 2, fmt.answer_prefix):
        raise ConfigError(f"the answer letters after the template end {end[-40:]!r} tokenize differently from "
                          f"after {fmt.answer_prefix!r}; change format.answer_prefix")
    return shared


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        hint = " ('auto' is resolved from the model family: modeling.family_for(...).template)" if name == "auto" else ""
        raise ConfigError(f"unknown template {name!r}{hint}; known templates: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


# ---- the pair encoder -----------------------------------------------------------------------------
def _turn_lists(frame: pd.DataFrame) -> list[list[list[str]]]:
    """Per field, per row, the turns as strings (None -> ``null_text`` later); rows padded to equal turns.

    A NaN turn counts as null; any other non-text turn is a DataError naming the row ids.
    """
    missing = [c for c in ("id", *FIELDS) if c not in frame.columns]
    if missing:
        raise DataError(f"the frame to encode lacks columns {missing}. Fix: build it with data.read_pairs")
    fields, bad = [], {}
    for field in FIELDS:
        rows = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v] for v in frame[field]]
        for rid, row in zip(frame["id"], rows, strict=True):
            row[:] = [None if isinstance(t, float) and t != t else clean_text(t) if isinstance(t, str) else t
                      for t in row]
            if not all(t is None or isinstance(t, str) for t in row):
                bad.setdefault(field, []).append(str(rid))
        fields.append(rows)
    if bad:
        raise DataError("turns must be text or None, found other values in "
                        + "; ".join(f"column '{f}' (ids: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})"
                                    for f, ids in bad.items()) + ". Fix: build the frame with data.read_pairs")
    for rows in zip(*fields, strict=True):
        n = max(len(r) for r in rows)
        for r in rows:
            r.extend([None] * (n - len(r)))
    return fields


def _tokenize_field(tokenizer: Any, rows: list[list[Any]], null_text: str) -> list[list[list[int]]]:
    """Tokenize all turns of one field of all rows in one batched pass, regrouped per row."""
    flat = [null_text if t is None else t for t in itertools.chain.from_iterable(rows)]
    ids = encode_texts(tokenizer, flat)
    out, pos = [], 0
    for r in rows:
        out.append(ids[pos:pos + len(r)])
        pos += len(r)
    return out


def encode_pairs(frame: pd.DataFrame, tokenizer: Any, fmt: FormatConfig | None = None,
                 template: str | None = None) -> EncodedPairs:
    """Encode every pair of a canonical frame within ``fmt.max_length`` tokens (special tokens included).

    ``template`` defaults to ``fmt.template``; it must be a name in ``formatting.TEMPLATES``.
    """
    fmt = fmt or FormatConfig()
    fmt.validate("format.")
    template = template or fmt.template
    parts = template_ids(tokenizer, fmt, template)
    if parts.overhead(1) + 3 > fmt.max_length:
        raise ConfigError(f"format.max_length={fmt.max_length} leaves no room for text: template '{template}' "
                          f"alone takes {parts.overhead(1)} tokens; raise max_length or shorten the question")
    budget = Budget(fmt.max_length, tuple(fmt.shares), fmt.min_field_tokens)
    packed, stats = [], []
    for start in range(0, len(frame), ROW_BLOCK):  # untruncated token lists live for one block at a time
        block = frame.iloc[start:start + ROW_BLOCK]
        per_field = [_tokenize_field(tokenizer, rows, fmt.null_text) for rows in _turn_lists(block)]
        fits = [fit_pair(list(zip(*turns, strict=True)), parts, budget) for turns in zip(*per_field, strict=True)]
        packed.append(PackedRows.from_rows([fit.input_ids for fit in fits]))
        stats.append(_stats(block, fits))
    input_ids = PackedRows.concat(packed)
    return EncodedPairs(
        ids=[str(i) for i in frame["id"]],
        input_ids=input_ids,
        labels=(frame["label"].to_numpy(dtype=np.int64) if "label" in frame.columns
                else np.full(len(frame), -1, dtype=np.int64)),
        lengths=np.diff(input_ids.offsets),
        stats=pd.concat(stats, ignore_index=True) if stats else _stats(frame, []),
        template=template,
        head=fmt.head,
    )


def _stats(frame: pd.DataFrame, fits: list) -> pd.DataFrame:
    data: dict[str, Any] = {"id": [str(i) for i in frame["id"]]}
    for f, field in enumerate(FIELDS):
        original = np.array([fit.original[f] for fit in fits], dtype=np.int64)
        kept = np.array([fit.kept[f] for fit in fits], dtype=np.int64)
        data[f"{field}_tokens"], data[f"{field}_kept"], data[f"{field}_truncated"] = original, kept, kept < original
    data["turns"] = np.array([fit.turns for fit in fits], dtype=np.int64)
    data["turns_kept"] = np.array([fit.turns_kept for fit in fits], dtype=np.int64)
    data["length"] = np.array([len(fit.input_ids) for fit in fits], dtype=np.int64)
    return pd.DataFrame(data)


