"""gpslib: the reproducible companion of "GPS: Gumbel Permutation Sinkformer ... with
Similarity-based Tokens Grouping". One concept per module; see README.md for the map
from the paper's figures and tables to notebooks and functions."""

import logging
import warnings

# tqdm.auto (imported by datasets / huggingface_hub) warns in every notebook that
# ipywidgets is absent and falls back to text bars, which is what we want.
warnings.filterwarnings("ignore", message="IProgress not found")
# bitsandbytes (imported by peft) logs on every import, on CPUs with AVX-512 BF16, that
# its optional 4-bit kernels package is absent; peft's use of a transformers method
# deprecated for v6 warns at every LoRA wrap. Neither concerns this project's results.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated")
