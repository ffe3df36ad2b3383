"""fedoa: federated fine-tuning of foundation models with adapters, aimed at OOD robustness."""
import logging

__version__ = "0.1.0"

# bitsandbytes (the optional 'quant' extra; PEFT imports it whenever it is installed) warns at import
# time on AVX512-BF16 CPUs that an optional kernel cannot be fetched from the Hugging Face Hub; its
# fallback is what fedoa uses anyway (see model/base.py), so every command would print a useless line.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

