"""``--quiet``: no progress bar on stderr, the libraries' included (real processes)."""
import os
import re
import subprocess
import sys

import pytest

from tests.support.runs import tiny_cli_args

#: what a tqdm bar leaves on a non-terminal stderr: carriage returns, blocks, "42%|", rates
BAR = re.compile(r"\r|█|\d+%\||\d+(\.\d+)?(it|ex|step)/s|s/(it|ex|step)")


def fedoa(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "fedoa.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow  # four real CLI processes: scheduled among the long tests
def test_quiet_verbs_draw_no_progress_bar(tmp_path):
    """Also the console script's success: `fedoa run` exits 0, prints the results, writes results.json."""
    loud = fedoa("run", "--out", str(tmp_path / "loud"), *tiny_cli_args())
    assert BAR.search(loud.stderr)  # without --quiet the bars are there, and BAR sees them
    run = str(tmp_path / "run")
    calls = [
        ["run", "--out", run, *tiny_cli_args()],
        ["eval", run, "--data", "vader", "--set", "data.tasks=['movie']", "--out", str(tmp_path / "ev")],
        ["export", run, "--client", "movie", "--merge", "--out", str(tmp_path / "merged")],
    ]
    for argv in calls:
        done = fedoa(*argv, "--quiet")  # exit code 0, or the assertion shows stderr
        assert not BAR.search(done.stderr), (argv[0], done.stderr)
        if argv[0] == "run":
            assert "personal" in done.stdout and (tmp_path / "run" / "results.json").is_file()


@pytest.mark.slow
def test_quiet_silences_the_gguf_conversion_too(smollm2_run):
    """The shared SmolLM2 run is `fedoa run --quiet` in a fresh cache: the embedded GGUF was
    de-quantized in it (transformers' own tqdm bar)."""
    assert (smollm2_run.cache / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()  # it did convert
    assert not BAR.search(smollm2_run.stderr), smollm2_run.stderr
