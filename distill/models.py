"""Loading T5-family models and tokenizers from a local folder or a hub id: the one loader every command uses.

Weights come from safetensors only (pickled `.bin` files are refused), `trust_remote_code` stays off, and a model of
another family is refused by its `model_type`, not guessed from its name. What would load but be silently wrong is
refused too: a folder without a tokenizer (transformers would stand in a placeholder of special tokens), a tokenizer
with more tokens than the model's embedding has rows, weights the config describes but the file lacks (transformers
would draw them at random), a truncated weights file.

A name that is not a local folder is a hub id: the hub is asked about it once, with a short timeout, so that an
unreachable hub is reported in seconds rather than after transformers' retries; the hub cache is used when the hub
cannot be asked (`HF_HUB_OFFLINE=1`, or no answer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from distill.errors import ModelError
from distill.hub import HUB_TIMEOUT, hub_endpoint, hub_status

T5_FAMILY = ("t5", "mt5")  # model_type values this toolkit loads (`model_class` says with which class)
# any of these makes a folder's tokenizer loadable; without all of them transformers builds a placeholder
TOKENIZER_MARKERS = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
# transformers' placeholder holds one piece ("▁") besides its special tokens; any real tokenizer holds hundreds
MIN_PIECES = 8

Where = Literal["local", "hub", "offline", "unreachable"]


def _where(path: str, what: str) -> Where:
    """Whether `path` is a local folder or a hub id, and whether the hub can be asked for it; ModelError when it is
    neither a folder nor a hub id that could exist."""
    if not path.strip():
        raise ModelError(f"The {what} name is empty: give a folder (e.g. models/teacher) or a hub id.")
    local = Path(path).expanduser()
    if local.is_dir():
        return "local"
    if local.exists():
        raise ModelError(f"{local} is a file; give the {what} folder that holds it (config.json, model.safetensors "
                         "and the tokenizer files).")
    if path.startswith((".", "/", "~")):
        raise ModelError(f"{what.capitalize()} folder {local} does not exist.")
    status = hub_status(path)
    if status == "invalid":
        raise ModelError(f"{path!r} is not a local folder, nor a hub id (owner/name, e.g. google-t5/t5-small): "
                         f"no {what} can be loaded from it. Check the spelling, or give an existing folder.")
    if status == "missing":
        raise ModelError(f"{path!r} is not a local folder, and the Hugging Face hub ({hub_endpoint()}) has no model "
                         f"repository of that name (a private one needs `hf auth login`). Check the spelling, or "
                         "give an existing folder (e.g. models/teacher).")
    return "hub" if status == "found" else status


def _load_error(what: str, path: str, err: Exception, where: Where) -> ModelError:
    if where == "local":
        return ModelError(f"Could not load the {what} from folder {Path(path).expanduser()}: {err}")
    if where == "offline":
        return ModelError(f"HF_HUB_OFFLINE is set and {path!r} is not a local folder, nor in the hub cache: the {what} "
                          "cannot be loaded. Unset HF_HUB_OFFLINE to download it, or give a local folder "
                          "(e.g. models/teacher).")
    if where == "unreachable":
        return ModelError(f"Could not load the {what} {path!r}: it is not a local folder, the hub cache does not "
                          f"hold it, and the Hugging Face hub ({hub_endpoint()}) could not be reached (asked once, "
                          f"for at most {HUB_TIMEOUT:g} s). The hub may be unreachable from this machine; a local "
                          "folder (e.g. models/teacher) works offline.")
    return ModelError(f"Could not load the {what} {path!r} from the Hugging Face hub: {type(err).__name__}: {err}")


def load_tokenizer(path: str, model_vocab_size: int | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or hub id (transformers' `AutoTokenizer`), checked to be usable.

    Refused (ModelError): a folder without tokenizer files, a tokenizer without a vocabulary of its own, and one with
    more tokens than the model's embedding has rows (`model_vocab_size`; by default the `vocab_size` of the folder's
    config.json, when it has one). A tokenizer smaller than the embedding is fine: t5's 32,100 tokens fill 32,128 rows.
    """
    from transformers import AutoTokenizer

    where = _where(path, "tokenizer")
    local = Path(path).expanduser()
    fix = ("Copy the tokenizer files (tokenizer.json, tokenizer_config.json, spiece.model) of the model it was made "
           "from (its teacher) into the folder, or give the tokenizer explicitly (--tokenizer where the command has "
           "one, data.tokenizer in a training config).")
    if where == "local" and not any((local / name).is_file() for name in TOKENIZER_MARKERS):
        raise ModelError(f"{local} holds no tokenizer (none of {', '.join(TOKENIZER_MARKERS)}); transformers would "
                         f"stand in a placeholder that reads every word as <unk>. {fix}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=where in ("offline", "unreachable"))
    except (OSError, ValueError) as err:  # trust_remote_code stays off
        raise _load_error("tokenizer", path, err, where) from err
    pieces = len(set(tokenizer.get_vocab()) - set(tokenizer.added_tokens_encoder))
    if pieces < MIN_PIECES:
        raise ModelError(f"The tokenizer of {path} has no vocabulary of its own ({len(tokenizer)} tokens, "
                         f"{pieces} of them not special): it would read every word as <unk>. {fix}")
    if model_vocab_size is None and where == "local" and (local / "config.json").is_file():
        try:
            model_vocab_size = json.loads((local / "config.json").read_text()).get("vocab_size")
        except (OSError, ValueError, AttributeError):
            model_vocab_size = None  # load_t5 reports a broken config.json; the tokenizer itself is fine
    check_tokenizer_fits(tokenizer, model_vocab_size, path)
    return tokenizer


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, model_vocab_size: int | None, where: str) -> None:
    """ModelError when `tokenizer` has ids that a model whose embedding has `model_vocab_size` rows cannot look up."""
    if isinstance(model_vocab_size, int) and len(tokenizer) > model_vocab_size:
        raise ModelError(f"The tokenizer of {where} has {len(tokenizer)} tokens but the model's embedding has "
                         f"{model_vocab_size} rows: ids {model_vocab_size} and above would index past it. Use the "
                         "tokenizer the model was trained with (its teacher's tokenizer files).")


def model_class(config: Any) -> type[T5ForConditionalGeneration]:
    """The transformers class for a T5-family config: MT5ForConditionalGeneration for mT5 (transformers 5.x's
    T5ForConditionalGeneration reads `scale_decoder_outputs`, which only T5Config has), else T5ForConditionalGeneration.
    Both have the same modules, so everything downstream treats them alike."""
    from transformers import MT5ForConditionalGeneration, T5ForConditionalGeneration

    if config.model_type == "mt5":
        return cast("type[T5ForConditionalGeneration]", MT5ForConditionalGeneration)
    return T5ForConditionalGeneration


def _config(path: str, where: Where) -> Any:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=where in ("offline", "unreachable"))
    except (OSError, ValueError) as err:
        raise _load_error("model", path, err, where) from err
    if config.model_type not in T5_FAMILY:
        raise ModelError(f"{path} is a {config.model_type!r} model; this toolkit works on T5-family models "
                         f"(model_type in {T5_FAMILY}: t5, t5 v1.1, flan-t5, mT5).")
    return config


def load_config(path: str) -> Any:
    """The config of a T5-family folder or hub id, without its weights (to size the work before loading them)."""
    return _config(path, _where(path, "model"))


def load_t5(path: str) -> T5ForConditionalGeneration:
    """A T5-family model from a local folder or hub id, weights from safetensors, checked to be T5-family and whole."""
    from safetensors import SafetensorError

    where = _where(path, "model")
    local_only = where in ("offline", "unreachable")
    config = _config(path, where)
    try:
        loaded = model_class(config).from_pretrained(path, config=config, use_safetensors=True,
                                                     local_files_only=local_only, output_loading_info=True)
    except SafetensorError as err:
        raise _corrupt_weights(path, where, err) from err
    except RuntimeError as err:  # transformers' report of weights whose shapes differ from the config's
        raise ModelError(f"The weights of {path} do not fit its config.json: tensors of other shapes than the config "
                         "describes (transformers' report above names them). The config was edited, or the weights "
                         "come from another model.") from err
    except (OSError, ValueError) as err:
        raise _load_error("model weights (model.safetensors; pickled .bin weights are refused)", path, err,
                          where) from err
    model, info = cast("tuple[T5ForConditionalGeneration, dict[str, Any]]", loaded)  # output_loading_info's pair
    missing = sorted(info["missing_keys"])
    if missing:
        raise ModelError(f"The weights of {path} lack {len(missing)} tensors its config.json describes (e.g. "
                         f"{missing[0]}); transformers would fill them with random values. The weights do not match "
                         "the config (an edited config.json, or weights saved from another model).")
    return model


def _corrupt_weights(path: str, where: Where, err: Exception) -> ModelError:
    """The ModelError for a safetensors file that cannot be read, naming the file when it is local."""
    if where != "local":
        return ModelError(f"The hub cache's copy of {path!r} is truncated or corrupt ({err}): download it again "
                          f"(`hf download {path} --force-download`).")
    from safetensors import SafetensorError, safe_open

    folder = Path(path).expanduser()
    bad = []
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as file_err:
            bad.append(f"{file} ({file_err})")
    named = "; ".join(bad) or f"a weights file of {folder} ({err})"
    return ModelError(f"{named}: truncated or corrupt, it cannot be read as safetensors (an interrupted copy or "
                      "save leaves such a file). Copy the folder again from where it came from, or write it again "
                      "(`python -m distill.checkpoint --ckpt RUN.ckpt --out FOLDER` for a trained run).")


def inference_device() -> str:
    """Where generation outside a Lightning run (scoring, pseudo-labels) runs: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"
