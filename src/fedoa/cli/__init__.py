"""The ``fedoa`` command line: one module per verb.

Errors the user can fix print one line naming the file, line or key, and exit with code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from fedoa.errors import FedoaError

VERBS = ("run", "compare", "eval", "export", "generate", "report", "config", "methods", "setup", "deploy")


def quiet_libraries() -> None:
    """Keep the terminal for fedoa's own progress and tables."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*copy construct.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def silence_progress_bars() -> None:
    """``--quiet``: no progress bar at all, the libraries' included (transformers' GGUF
    de-quantization uses plain tqdm). Set before they are imported: tqdm reads ``TQDM_*`` and the
    Hugging Face libraries their switches at import time."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:  # imported already (main() called from Python)
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module

    parser = argparse.ArgumentParser(prog="fedoa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        import_module(f"fedoa.cli.{verb}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        silence_progress_bars()
    quiet_libraries()
    try:
        return args.func(args)
    except FedoaError as e:
        print(f"fedoa: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("fedoa: interrupted; rerun the same command to resume from the last finished round", file=sys.stderr)
        return 130
