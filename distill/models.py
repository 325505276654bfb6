"""Loading T5-family models and tokenizers from a local folder or a hub id: the one loader every command uses.

Weights come from safetensors only (pickled `.bin` files are refused), `trust_remote_code` stays off, and a model of
another family is refused by its `model_type`, not guessed from its name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from distill.errors import ModelError

T5_FAMILY = ("t5", "mt5")  # model_type values whose checkpoints T5ForConditionalGeneration loads faithfully


def _hub_error(what: str, path: str, err: Exception) -> ModelError:
    local = Path(path).expanduser()
    if local.is_dir():
        return ModelError(f"Could not load the {what} from folder {local}: {err}")
    if path.startswith((".", "/", "~")):
        return ModelError(f"{what.capitalize()} folder {local} does not exist.")
    return ModelError(f"Could not load the {what} {path!r}: it is not a local folder, and the Hugging Face hub "
                      f"did not serve it ({type(err).__name__}). The hub may be unreachable from this machine; "
                      "a local folder (e.g. models/teacher) works offline.")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or hub id (transformers' `AutoTokenizer`)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)  # trust_remote_code stays off
    except (OSError, ValueError) as err:
        raise _hub_error("tokenizer", path, err) from err


def load_t5(path: str) -> T5ForConditionalGeneration:
    """A T5-family model from a local folder or hub id, weights from safetensors, checked to be T5-family."""
    from transformers import AutoConfig, T5ForConditionalGeneration

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise _hub_error("model", path, err) from err
    if config.model_type not in T5_FAMILY:
        raise ModelError(f"{path} is a {config.model_type!r} model; this toolkit works on T5-family models "
                         f"(model_type in {T5_FAMILY}: t5, t5 v1.1, flan-t5, mT5).")
    try:
        return T5ForConditionalGeneration.from_pretrained(path, config=config, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise _hub_error("model weights (model.safetensors; pickled .bin weights are refused)", path, err) from err


def inference_device() -> str:
    """Where generation outside a Lightning run (scoring, pseudo-labels) runs: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"
