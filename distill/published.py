"""Random-weight models in the published T5 configurations (`configs/models/*.json`), with a tokenizer, into a folder.

    python -m distill.published --config mt5-small --out models/random/mt5-small
    python -m distill.published --config configs/models/t5-3b.json --out /data/t5-3b --decoder-layers 2

For tests, benchmarks and users without a network: nothing is downloaded. The shapes (sizes, activation, tied or
untied head, vocabulary) are those of each model's config.json on the Hugging Face hub; the weights are T5's own
random initialisation, so outputs are meaningless but every cost (memory, disk, time per token) is the real model's.
The tokenizer is a synthetic unigram vocabulary of exactly `vocab_size` pieces (characters first, so any text
encodes), because the real sentencepiece models cannot be fetched here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from distill.errors import ModelError, cli_errors
from distill.files import check_output, replace_dir, staged_dir
from distill.sizes import weight_counts

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5's sentencepiece models
# characters every synthetic vocabulary starts with: ASCII, Latin-1 and the Latin Extended-A letters (French, German,
# Romanian, ...), alone and word-initial, so that any text of those languages encodes without <unk>
CHARACTERS = [chr(c) for c in (*range(33, 127), *range(161, 384))]


def config_path(name_or_path: str) -> Path:
    """The JSON file of a published configuration: a path, or a name in configs/models (e.g. `mt5-small`)."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ModelError(f"{path} is not a file; give a configuration in {CONFIGS} by name "
                             f"({', '.join(published_names())}) or a JSON file of T5Config fields.")
        return path
    named = CONFIGS / f"{name_or_path}.json"
    if not named.is_file():
        raise ModelError(f"No published configuration named {name_or_path!r}; choose one of "
                         f"{', '.join(published_names())}, or give a JSON file of T5Config fields.")
    return named


def published_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def read_config(name_or_path: str, **overrides: Any) -> dict[str, Any]:
    """T5Config fields of a published configuration, with `overrides` (e.g. num_decoder_layers) applied."""
    path = config_path(name_or_path)
    try:
        fields = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"{path} cannot be read as JSON ({err}); restore it from the repository.") from None
    if not isinstance(fields, dict) or fields.get("model_type") not in ("t5", "mt5"):
        raise ModelError(f"{path} is not a T5-family configuration (its model_type must be t5 or mt5).")
    fields = {k: v for k, v in fields.items() if not k.startswith("_")}  # "_source": where the sizes come from
    return fields | {k: v for k, v in overrides.items() if v is not None}


def parameter_bytes(fields: dict[str, Any]) -> int:
    """fp32 bytes of the weights a configuration describes, from its sizes alone (nothing is built)."""
    return 4 * weight_counts(fields).total


def build_model(fields: dict[str, Any], seed: int = 0) -> T5ForConditionalGeneration:
    """A T5 (or mT5) of those sizes with T5's random initialisation; an untied head when the configuration says so."""
    from transformers import MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration
    from transformers.models.mt5 import MT5Config

    torch.manual_seed(seed)
    tied = fields.get("tie_word_embeddings", True)
    config_class, model_class = ((MT5Config, MT5ForConditionalGeneration) if fields["model_type"] == "mt5"
                                 else (T5Config, T5ForConditionalGeneration))
    config = config_class(**{k: v for k, v in fields.items() if k != "model_type"})
    model = model_class(config)
    if not tied:
        # transformers 5.x ties every fresh T5's lm_head to the embedding and keeps tie_word_embeddings=False only as
        # `scale_decoder_outputs`; an untied head is a parameter of its own, dropped from the tied keys so that
        # save_pretrained writes it (a checkpoint holding lm_head.weight loads untied, as flan-t5 and mT5 do)
        head = torch.empty_like(model.shared.weight).normal_(0.0, fields.get("initializer_factor", 1.0))
        model.lm_head.weight = torch.nn.Parameter(head)
        model.all_tied_weights_keys.pop("lm_head.weight", None)
    return model.eval()


def synthetic_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A unigram tokenizer of exactly `vocab_size` pieces: the specials, each character alone and word-initial
    (`▁a`), then filler pieces; T5's conventions (pad 0, EOS 1, unk 2, EOS appended)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [(s, 0.0) for s in SPECIALS]
    pieces += [(f"▁{c}", -2.0) for c in CHARACTERS] + [("▁", -3.0)] + [(c, -4.0) for c in CHARACTERS]
    if vocab_size < len(pieces):
        raise ModelError(f"vocab_size {vocab_size} is too small for a synthetic tokenizer ({len(pieces)} pieces: "
                         "the specials and the characters); use a configuration with a larger vocabulary.")
    pieces += [(f"▁w{i}", -10.0) for i in range(vocab_size - len(pieces))]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def write_random_model(name_or_path: str, out: Path | str, seed: int = 0, **overrides: Any) -> Path:
    """Build the configuration's random-weight model and its tokenizer into `out` (staged, then renamed)."""
    fields = read_config(name_or_path, **overrides)
    model = build_model(fields, seed)
    with staged_dir(out) as staged:
        model.save_pretrained(staged)  # safetensors
        synthetic_tokenizer(fields["vocab_size"]).save_pretrained(staged)
        (staged / "random_meta.json").write_text(json.dumps(
            {"configuration": str(config_path(name_or_path)), "overrides": overrides, "seed": seed,
             "parameters": sum(p.numel() for p in model.parameters())}, indent=2) + "\n")
        return replace_dir(staged, Path(out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help=f"a name in configs/models ({', '.join(published_names())}) or a JSON file")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--decoder-layers", type=int, default=None, help="default: the configuration's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with cli_errors("python -m distill.published"):
        check_output(args.out)
        fields = read_config(args.config, num_decoder_layers=args.decoder_layers)
        print(f"building {args.config}: {parameter_bytes(fields) / 1e9:.2f} GB of fp32 weights", flush=True)
        out = write_random_model(args.config, args.out, args.seed, num_decoder_layers=args.decoder_layers)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
