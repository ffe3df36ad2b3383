"""fedoa: federated fine-tuning of foundation models with adapters, built for OOD robustness."""

__version__ = "0.1.0"
