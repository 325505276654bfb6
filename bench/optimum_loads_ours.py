"""optimum reads our exports: run in .venv-optimum (make bench creates it):

    .venv-optimum/bin/python bench/optimum_loads_ours.py runs/export/student runs/distill/student

ORTModelForSeq2SeqLM loads a folder written by `python -m export` (fp32 with its two decoder graphs and with the merged
one, and int8; every graph's weights in its .onnx_data) and, for fp32, must generate the same greedy and beam-4
tokens as transformers 4.57 on the same weights (3 padded verses)."""
import sys

import torch
from optimum.onnxruntime import ORTModelForSeq2SeqLM
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration

onnx_dir, torch_dir = sys.argv[1], sys.argv[2]
tok = Tokenizer.from_file(torch_dir + "/tokenizer.json")  # transformers 4.57 cannot read a 5.x tokenizer_config
tok.enable_padding(pad_id=0, pad_token="<pad>")
texts = ["translate English to French: In the beginning God created the heavens and the earth.",
         "translate English to French: Jesus wept.",
         "translate English to French: And God said, Let there be light: and there was light."]
enc = tok.encode_batch(texts)
batch = {"input_ids": torch.tensor([e.ids for e in enc]),
         "attention_mask": torch.tensor([e.attention_mask for e in enc])}
ref = T5ForConditionalGeneration.from_pretrained(torch_dir).eval()
for quantized, merged in ((False, False), (False, True), (True, False)):
    names = {}
    if merged:
        names = {"decoder_file_name": "decoder_model_merged.onnx"}
    if quantized:
        names = {"encoder_file_name": "encoder_model_quantized.onnx",
                 "decoder_file_name": "decoder_model_quantized.onnx",
                 "decoder_with_past_file_name": "decoder_with_past_model_quantized.onnx"}
    model = ORTModelForSeq2SeqLM.from_pretrained(onnx_dir, use_cache=True, use_merged=merged, **names)
    for beams in (1, 4):
        kw = dict(num_beams=beams, max_new_tokens=40, do_sample=False)
        got = model.generate(**batch, **kw)
        with torch.inference_mode():
            want = ref.generate(**batch, **kw)
        same = got.shape == want.shape and bool((got == want).all())
        print(f"optimum loads our export (int8={quantized}, merged={merged}), beams {beams}: tokens equal to "
              f"transformers: {same}")
        if not quantized:
            assert same
print(tok.decode_batch(got.tolist(), skip_special_tokens=True)[0])
