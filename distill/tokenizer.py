"""Train a sentencepiece unigram tokenizer on a training split and save it as a Hugging Face T5 tokenizer folder.

    python -m distill.tokenizer --data data/bible --columns en fr --vocab-size 8000 --out data/tokenizer

The folder loads with `AutoTokenizer.from_pretrained` and uses T5's special ids: pad 0, eos 1, unk 2 (no bos). It holds
`spiece.model` (for sentencepiece users) and `tokenizer.json` (for the `tokenizers`-only ONNX runtime).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm

from distill.data import DataConfig, load_split
from distill.errors import DataError, at_least_one, cli_errors
from distill.files import check_output, replace_dir

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2  # T5's ids: the decoder starts from pad
MIN_VOCAB = 8  # the three special pieces and a few of the text's: what load_tokenizer accepts as a vocabulary


def train_tokenizer(sentences: list[str], out: Path, vocab_size: int = 8000) -> Path:
    """Train a unigram model on `sentences` and write a T5 tokenizer folder to `out` (replaced atomically)."""
    from transformers import T5Tokenizer

    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise DataError("No text to train the tokenizer on: the training split is empty.")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(s.replace("\n", " ") for s in sentences) + "\n", encoding="utf-8")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
            raise DataError(f"vocab_size must be a whole number >= {MIN_VOCAB} (the special tokens and the "
                            f"characters of the text need pieces), got {vocab_size!r}.")
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=str(tmp / "spiece"), model_type="unigram", vocab_size=vocab_size,
                character_coverage=1.0,  # keep every accented letter of the French side
                pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
                pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
                num_threads=2, minloglevel=2,  # unigram training is deterministic: no seed to set
            )
        except RuntimeError as err:  # sentencepiece's checks, e.g. a vocabulary larger than the text allows
            reason = str(err).strip().split("] ")[-1]
            raise DataError(f"sentencepiece cannot train a {vocab_size}-piece tokenizer on these "
                            f"{len(sentences)} sentences: {reason} Choose another --vocab-size.") from None
        folder = tmp / "hf"
        folder.mkdir()
        shutil.copy(tmp / "spiece.model", folder / "spiece.model")
        # from_pretrained on a folder holding spiece.model is the path that works offline; constructing
        # T5Tokenizer(vocab_file=...) directly gives a 4-token vocabulary, the special tokens and "▁" (transformers
        # 5.24): the trained pieces are lost.
        tokenizer = T5Tokenizer.from_pretrained(folder, extra_ids=0)
        if len(tokenizer) != vocab_size:
            raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {vocab_size}")
        staged = tmp / "out"
        tokenizer.save_pretrained(staged)
        shutil.copy(tmp / "spiece.model", staged / "spiece.model")
        replace_dir(staged, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/bible", help="dataset folder, data file or hub id")
    parser.add_argument("--split", default="train")
    parser.add_argument("--columns", nargs="+", default=["en", "fr"], help="text columns to train on")
    parser.add_argument("--prefix", default="translate English to French: ",
                        help="task prefix put before the first column, as the model will see it: its words then get "
                             "whole pieces instead of costing a dozen tokens on every example")
    parser.add_argument("--vocab-size", type=at_least_one, default=8000)
    parser.add_argument("--out", type=Path, default=Path("data/tokenizer"))
    args = parser.parse_args(argv)
    with cli_errors("python -m distill.tokenizer"):
        check_output(args.out, inputs=(args.data,))
        dataset = load_split(DataConfig(path=args.data, source_column=args.columns[0], target_column=args.columns[-1],
                                        extra_columns=args.columns[1:-1]), args.split)
        sentences = [args.prefix + row[args.columns[0]] for row in dataset]
        sentences += [row[c] for c in args.columns[1:] for row in dataset]
        train_tokenizer(sentences, args.out, args.vocab_size)
    print(f"wrote {args.out} ({args.vocab_size} pieces from {len(dataset)} {args.split} rows, columns {args.columns})")


if __name__ == "__main__":
    main()
