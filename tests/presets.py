"""The composed unlearning presets: which files under configs/ make each one, in the order ``-c`` takes them.

A TOFU preset is ``configs/tofu/base.yaml`` then ``configs/tofu/method/<name>.yaml``; a MUSE preset is
``configs/muse/base.yaml``, the corpus file (``news.yaml`` or ``books.yaml``), then ``configs/muse/method/<name>.yaml``.
Tests name a preset by its method file (``"tofu/npo_dv"``, ``"muse/news_npo"``).
"""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def preset_files(name: str) -> list[Path]:
    """The config files of the preset ``name`` (``"tofu/<method>"`` or ``"muse/<corpus>_<method>"``), in order."""
    single = CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if single.is_file():  # a config of its own (eval.yaml, finetune_*.yaml, demo.yaml)
        return [single]
    benchmark, method = name.removesuffix(".yaml").split("/")
    files = [CONFIGS / benchmark / "base.yaml"]
    if benchmark == "muse":
        files.append(CONFIGS / "muse" / f"{method.split('_')[0]}.yaml")
    files.append(CONFIGS / benchmark / "method" / f"{method}.yaml")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"preset {name!r}: no such config file {', '.join(missing)}")
    return files


def preset_args(name: str) -> list[str]:
    """``["-c", base, ("-c", corpus,) "-c", method]``: the arguments that load the preset ``name``."""
    return [arg for path in preset_files(name) for arg in ("-c", str(path))]
