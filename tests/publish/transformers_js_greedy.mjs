// Greedy tokens of a staged folder in transformers.js: node transformers_js_greedy.mjs PACKAGE_DIR FOLDER DTYPE IDS_JSON
// PACKAGE_DIR holds node_modules/@huggingface/transformers; prints the generated ids (start token first) as JSON.
import { basename, dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [packageDir, folder, dtype, idsJson] = process.argv.slice(2);
const entry = join(packageDir, 'node_modules', '@huggingface', 'transformers', 'dist', 'transformers.node.mjs');
const { AutoModelForSeq2SeqLM, Tensor, env } = await import(pathToFileURL(entry).href);
env.allowRemoteModels = false; // only the local folder: a missing file must fail, not be downloaded
env.localModelPath = dirname(folder);
const ids = JSON.parse(idsJson);
const model = await AutoModelForSeq2SeqLM.from_pretrained(basename(folder), { dtype, device: 'cpu' });
const flat = BigInt64Array.from(ids.flat().map(BigInt));
const input_ids = new Tensor('int64', flat, [ids.length, ids[0].length]);
const attention_mask = new Tensor('int64', flat.map(() => 1n), [ids.length, ids[0].length]);
const out = await model.generate({ input_ids, attention_mask, max_new_tokens: 8, do_sample: false, num_beams: 1 });
console.log(JSON.stringify(out.tolist().map((row) => row.map(Number))));
