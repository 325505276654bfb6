"""Shrink a T5 teacher into a student by copying maximally spaced layers (Shleifer & Rush's "shrink and fine-tune").

    python -m distill.student --teacher models/teacher --decoder-layers 2 --out runs/distill/student-init
    python -m distill.student --teacher t5-small --decoder-layers 2 --encoder-layers 3 --out students/t5-small-3-2
    python -m distill.student --teacher models/teacher --decoder-map 0,3,5 --out runs/distill/student-init

The decoder runs once per generated token, so cutting decoder layers is where the speed comes from; the encoder keeps
all its layers by default. The output folder is a `save_pretrained` folder with the teacher's tokenizer and a
`distill_meta.json` naming the teacher and the teacher layers copied into each stack.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from distill.errors import ModelError, cli_errors
from distill.files import check_output, replace_dir
from distill.models import load_t5, load_tokenizer, model_class

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

# Teacher depth -> student depth -> teacher layers to copy; the table of Shleifer's seq2seq-distillation
# (12: BART, 16: Pegasus, 6: Marian / t5-small), kept so students match the published distilbart/distilpegasus ones.
LAYERS_TO_COPY: dict[int, dict[int, list[int]]] = {
    6: {1: [0], 2: [0, 5], 3: [0, 2, 5], 4: [0, 1, 3, 5], 6: [0, 1, 2, 3, 4, 5]},
    12: {1: [0], 2: [0, 6], 3: [0, 6, 11], 4: [0, 4, 8, 11], 6: [0, 2, 4, 7, 9, 11],
         9: [0, 1, 2, 4, 5, 7, 9, 10, 11], 12: list(range(12))},
    16: {1: [0], 2: [0, 8], 3: [0, 8, 15], 4: [0, 5, 10, 15], 6: [0, 3, 6, 9, 12, 15],
         8: [0, 2, 4, 6, 8, 10, 12, 15], 9: [0, 1, 3, 5, 7, 9, 11, 13, 15],
         12: [0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15], 16: list(range(16))},
}


def layers_to_copy(n_teacher: int, n_student: int) -> list[int]:
    """Which teacher layers a student of `n_student` layers copies.

    Shleifer's table where it has an entry; otherwise maximally spaced: layer round(i * (n_teacher - 1) /
    (n_student - 1)) for i in 0..n_student-1, which keeps the first and the last layer (a 1-layer student keeps 0).
    """
    if not 1 <= n_student <= n_teacher:
        raise ModelError(f"A student needs between 1 and {n_teacher} layers (the teacher's count), not {n_student}.")
    if n_student in LAYERS_TO_COPY.get(n_teacher, {}):
        return list(LAYERS_TO_COPY[n_teacher][n_student])
    if n_student == 1:
        return [0]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def check_map(layer_map: list[int], n_teacher: int, n_student: int | None, stack: str) -> list[int]:
    """`layer_map` (teacher layers to copy into `stack`) when it is usable; a ModelError naming each problem if not."""
    problems = []
    if n_student is not None and len(layer_map) != n_student:
        problems.append(f"it has {len(layer_map)} entries for a {n_student}-layer student")
    if len(set(layer_map)) != len(layer_map):
        problems.append("it repeats a layer")
    if any(not 0 <= i < n_teacher for i in layer_map):
        problems.append(f"the teacher's {stack} has layers 0..{n_teacher - 1}")
    if not layer_map:
        problems.append("it is empty")
    if problems:
        raise ModelError(f"--{stack}-map {','.join(map(str, layer_map))}: " + "; ".join(problems) + ".")
    return list(layer_map)


def make_student(teacher: T5ForConditionalGeneration, decoder_layers: int | None = None,
                 encoder_layers: int | None = None, decoder_map: list[int] | None = None,
                 encoder_map: list[int] | None = None) -> tuple[T5ForConditionalGeneration, dict[str, list[int]]]:
    """A student T5 holding copies of the chosen teacher layers; returns (student, {"encoder": map, "decoder": map}).

    Pure: the teacher is not modified. Embeddings, final layer norms and lm_head (tied or not) are copied as they are.
    T5 keeps `relative_attention_bias` in block 0 of each stack only: whatever the map, the student's block 0 gets the
    teacher's bias (if the map does not start at 0, the copied block 0 receives it from teacher block 0).
    """
    import torch

    config = teacher.config
    maps = {}
    for stack, n_teacher, n_student, explicit in (
        ("encoder", config.num_layers, encoder_layers, encoder_map),
        ("decoder", config.num_decoder_layers, decoder_layers, decoder_map),
    ):
        if explicit is not None:
            maps[stack] = check_map(explicit, n_teacher, n_student, stack)
        else:
            maps[stack] = layers_to_copy(n_teacher, n_teacher if n_student is None else n_student)

    student_config = config.__class__.from_dict({**config.to_dict(), "num_layers": len(maps["encoder"]),
                                                 "num_decoder_layers": len(maps["decoder"])})
    with torch.device("meta"):  # no random initialization of weights that are all overwritten below (t5-3b: 11 GB)
        student = model_class(student_config)(student_config)
    tied = teacher.lm_head.weight is teacher.shared.weight
    teacher_state = teacher.state_dict()
    state = {}
    for key, value in teacher_state.items():
        parts = key.split(".")
        if len(parts) > 3 and parts[0] in ("encoder", "decoder") and parts[1] == "block":
            continue  # blocks are copied below, by map
        state[key] = value.clone()
    for stack, layer_map in maps.items():
        for new, old in enumerate(layer_map):
            prefix = f"{stack}.block.{old}."
            for key, value in teacher_state.items():
                if key.startswith(prefix):
                    state[f"{stack}.block.{new}.{key[len(prefix):]}"] = value.clone()
        bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        state[bias] = teacher_state[bias].clone()
    aliases = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", *(["lm_head.weight"] if tied else [])]
    for key in aliases:
        state.pop(key, None)
    missing, unexpected = student.load_state_dict(state, strict=False, assign=True)
    # assign=True put new Parameter objects in place: the names that are the shared embedding under another name (an
    # untied lm_head, T5 v1.1 / flan / mT5, is not one: it came from the state) are pointed at it again
    for key in aliases:
        module_name, _, name = key.rpartition(".")
        setattr(student.get_submodule(module_name), name, student.shared.weight)
    missing = [k for k in missing if not _is_tied_alias(student, k)]
    on_meta = [name for name, t in [*student.named_parameters(), *student.named_buffers()] if t.is_meta]
    if missing or unexpected or on_meta:
        raise RuntimeError(f"student state mismatch: missing {missing}, unexpected {unexpected}, "
                           f"uninitialized {on_meta}")
    student.generation_config = teacher.generation_config
    return student.eval(), maps


def _is_tied_alias(model: T5ForConditionalGeneration, key: str) -> bool:
    """Keys that are the shared embedding under another name (encoder/decoder embed_tokens, tied lm_head)."""
    return key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") or (
        key == "lm_head.weight" and model.lm_head.weight is model.shared.weight)


def save_student(student: T5ForConditionalGeneration, maps: dict[str, list[int]], teacher: T5ForConditionalGeneration,
                 teacher_path: str, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    """Write the student, the tokenizer and `distill_meta.json` (teacher, its depths, the layers copied) to `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "student"
        student.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        meta = student_meta(student, maps, teacher, teacher_path)
        (staged / "distill_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return replace_dir(staged, out)


def student_meta(student: T5ForConditionalGeneration, maps: dict[str, list[int]] | None,
                 teacher: T5ForConditionalGeneration, teacher_path: str) -> dict:
    """What `distill_meta.json` says of a student's origin: the teacher, both depths, the layers copied per stack."""
    return {"teacher": teacher_path, "layers_copied": maps,
            "teacher_layers": {"encoder": teacher.config.num_layers, "decoder": teacher.config.num_decoder_layers},
            "student_layers": {"encoder": student.config.num_layers, "decoder": student.config.num_decoder_layers}}


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 0,3,5, got {text!r}") from err


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="teacher folder or hub id (T5 family)")
    parser.add_argument("--decoder-layers", type=int, default=None, help="default: as many as the teacher")
    parser.add_argument("--encoder-layers", type=int, default=None, help="default: as many as the teacher")
    parser.add_argument("--decoder-map", type=_int_list, default=None, help="teacher decoder layers to copy, e.g. 0,5")
    parser.add_argument("--encoder-map", type=_int_list, default=None, help="teacher encoder layers to copy")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder or hub id written into the student (default: the teacher's)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with cli_errors("python -m distill.student"):
        check_output(args.out, inputs=(args.teacher, args.tokenizer))  # before the teacher loads: refusals first
        teacher = load_t5(args.teacher)
        # checked before the student is built: a student without its teacher's tokenizer reads text as <unk>
        tokenizer = load_tokenizer(args.tokenizer or args.teacher, teacher.config.vocab_size)
        student, maps = make_student(teacher, args.decoder_layers, args.encoder_layers, args.decoder_map,
                                     args.encoder_map)
        out = save_student(student, maps, teacher, args.teacher, tokenizer, args.out)
    t, s = sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters())
    print(f"wrote {out}: encoder layers {maps['encoder']}, decoder layers {maps['decoder']} of the teacher; "
          f"{s / 1e6:.2f}M parameters (teacher {t / 1e6:.2f}M)")


if __name__ == "__main__":
    main()
