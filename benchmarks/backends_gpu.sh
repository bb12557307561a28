#!/usr/bin/env bash
# benchmarks/backends.py on one GPU with the compact Gemma 3 270M of the GPU check kit, in at most 5 minutes.
#
# Needs a Python with this project, torch with CUDA and vLLM's CUDA wheel (pip install 'wsdm_helpers[vllm]'),
# and the kit (../shared/devcheck/, or a copy in .stage/). No network. From the project root:
#   bash benchmarks/backends_gpu.sh [PYTHON]
# The compact model keeps only the embedding rows of the demo data: other text reads zero embeddings, which
# changes no speed (the LMSYS rows are timed all the same), only what the probabilities mean.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
KIT=.stage; [ -d "$KIT/gemma3c" ] || KIT=../shared/devcheck
WORK=${WSDM_GPU_WORK:-/tmp/wsdm-backends-gpu}
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" - "$KIT/gemma3c" "$WORK/gemma3c-hf" <<'EOF'
import json, lzma, shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
pack, out = Path(sys.argv[1]), Path(sys.argv[2])
# the 16 NF4 code values (QLoRA's normal-float 4-bit), blocks of 128 weights with one absmax each
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])
if not (out / ".complete").exists():
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((pack / "shapes.json").read_text())
    body, weights = load_file(str(pack / "body.safetensors")), {}
    for name, shape in meta["nf4"].items():
        packed = body.pop(name + ".codes")
        codes = torch.stack([packed & 15, packed >> 4], 1).flatten().long()
        values = (NF4[codes].view(-1, 128) * body.pop(name + ".absmax").float()[:, None]).flatten()
        weights[name] = values[: torch.Size(shape).numel()].view(shape).contiguous()
    weights.update({k: v.contiguous() for k, v in body.items()})
    embed = load_file(str(pack / "embed.safetensors"))
    weights["model.embed_tokens.weight"] = torch.zeros(meta["embed"]).index_copy_(0, embed["ids"].long(),
                                                                                   embed["rows"].float())
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "tokenizer_config.json", "generation_config.json"):
        if (pack / name).exists():
            shutil.copy(pack / name, out / name)
    (out / "tokenizer.json").write_bytes(lzma.decompress((pack / "tokenizer.json.xz").read_bytes()))
    (out / ".complete").write_text("ok\n")
print(f"compact Gemma 3 unpacked at {out}")
EOF
# 400 demo rows + 1000 LMSYS rows at the preset's max_length 256, each backend end to end and raw, best of 2
timeout 300 "$PY" benchmarks/backends.py --device cuda --model-source "$WORK/gemma3c-hf" --demo-rows 400 \
    --lmsys-rows 1000 --repeats 2
