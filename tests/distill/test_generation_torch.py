import torch
from transformers import T5Config, T5ForConditionalGeneration

from distill.generation_torch import torch_generate_texts
from distill.models import load_tokenizer


def test_batched_generation_matches_one_example_at_a_time(tokenizer_dir):
    """Sorted, padded batches (several of them under a small token budget) give each source the text it gets alone,
    in input order."""
    torch.manual_seed(0)
    config = T5Config(vocab_size=96, d_model=16, d_ff=32, d_kv=4, num_heads=4, num_layers=2, num_decoder_layers=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    model = T5ForConditionalGeneration(config).eval()
    tokenizer = load_tokenizer(str(tokenizer_dir))
    texts = ["the lord said unto moses", "go", "bring gold and silver unto the king of israel", "bread and water",
             "the people"]
    sources = tokenizer(texts)["input_ids"]
    batched = torch_generate_texts(model, tokenizer, sources, num_beams=2, max_new_tokens=6, max_tokens=60,
                                   progress=False)
    alone = []
    with torch.no_grad():
        for ids in sources:
            out = model.generate(input_ids=torch.tensor([ids]), num_beams=2, max_new_tokens=6, do_sample=False)
            alone += tokenizer.batch_decode(out, skip_special_tokens=True)
    assert batched == alone
