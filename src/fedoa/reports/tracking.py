"""Experiment tracking: every line of ``metrics.jsonl`` also goes to TensorBoard (by default) and
MLflow (when asked), under the same metric names.

A line ``{"round": 2, "client": "movie", "phase": "personal", "task_loss": 0.41, "reg": 3.2, ...}``
becomes the scalars ``personal/task_loss/movie`` and ``personal/reg/movie`` at step 2; evaluation
lines (phase ``eval``) add the model kind: ``eval/personal/id_accuracy/movie``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: keys of a metrics line that are not metrics
META = {"round", "client", "phase", "kind", "reused", "records"}


def scalars(line: dict[str, Any]) -> dict[str, float]:
    """The metric names and values of one metrics.jsonl line."""
    prefix = line["phase"] + (f"/{line['kind']}" if "kind" in line else "")
    return {f"{prefix}/{k}/{line['client']}": float(v) for k, v in line.items()
            if k not in META and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


class Tracker:
    """Writers opened for one run; ``log`` takes metrics lines."""

    def __init__(self, settings, folder: Path, run_name: str, params: dict[str, Any]):
        self.tb = self.mlflow = None
        if settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(folder / "tensorboard"))
        if settings.mlflow:
            self.mlflow = _start_mlflow(settings, folder, run_name, params)

    def log(self, line: dict[str, Any]) -> None:
        values = scalars(line)
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(name, value, global_step=line["round"])
        if self.mlflow is not None and values:
            self.mlflow.log_metrics({name.replace(" ", "_"): v for name, v in values.items()}, step=line["round"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def _start_mlflow(settings, folder: Path, run_name: str, params: dict[str, Any]):
    try:
        import mlflow
    except ImportError:
        from fedoa.errors import ConfigError

        raise ConfigError("needs MLflow: pip install 'fedoa[tracking]' (mlflow-skinny)", where="tracking.mlflow") from None
    uri = settings.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or (folder / "mlruns").resolve().as_uri()
    if uri.startswith("file:"):  # MLflow 3 keeps the file store for those who opt in; no database needed
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(settings.experiment)
    mlflow.start_run(run_name=run_name)
    mlflow.log_params({k: str(v)[:250] for k, v in params.items()})
    return mlflow
