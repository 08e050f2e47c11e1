"""Silence library progress bars and deprecation chatter, which drown tunelab's own progress output."""

import os
import sys
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Read by transformers (and huggingface_hub) when first imported: a command that never needs them,
    # such as `tunelab data validate --model none`, does not pay seconds to import them here.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    if "transformers" in sys.modules:  # imported already: the variables above came too late for it
        transformers = sys.modules["transformers"]
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
