/** A Freeze run's data: training rows from JSONL (text, prompt + completion, or chat), and seeded batches. */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import type { TrainRow } from '../engine/trainer.ts';
import type { ModelTokenizer } from '../engine/tokenizer.ts';
import { Rng } from '../util/random.ts';
import { FreezeError } from './freeze-sets.ts';
import { jsonFault } from '../util/json.ts';

const TrainLine = z.union([
  z.strictObject({ text: z.string().min(1) }),
  z.strictObject({ prompt: z.string(), completion: z.string().min(1) }),
  z.strictObject({ messages: z.array(z.strictObject({ role: z.enum(['system', 'user', 'assistant']), content: z.string() })).min(1) }),
]);

/**
 * A training set, one JSON object per line: `{"text"}` (every token after the first is a target),
 * `{"prompt", "completion"}` (the completion's tokens are), or `{"messages"}` ending with the assistant's turn
 * (the assistant's tokens are). Texts are encoded as transformers' tokenizer(text) does (BOS where the
 * tokenizer adds one), and end with EOS so that a model learns to stop.
 */
export function trainingRows(tok: ModelTokenizer, jsonl: string, seq: number): TrainRow[] {
  const eos = tok.eosIds[0];
  const rows: TrainRow[] = [];
  jsonl.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch (e) {
      throw new FreezeError(`line ${i + 1}: ${jsonFault(e)}`, 'data');
    }
    const r = TrainLine.safeParse(raw);
    if (!r.success) throw new FreezeError(`line ${i + 1}: give {"text"}, {"prompt", "completion"} or {"messages"}`, 'data');
    const x = r.data;
    let prefix: number[];
    let ids: number[];
    if ('text' in x) {
      prefix = [];
      ids = tok.encodePrompt(x.text);
    } else if ('completion' in x) {
      prefix = tok.encodePrompt(x.prompt);
      const full = tok.encodePrompt(x.prompt + x.completion);
      // Tokens merge across the boundary in some tokenizers: count from where the two encodings part.
      let k = 0;
      while (k < prefix.length && k < full.length && prefix[k] === full[k]) k++;
      prefix = prefix.slice(0, k);
      ids = full;
    } else {
      if (x.messages.at(-1)!.role !== 'assistant') throw new FreezeError(`line ${i + 1}: the last message must be the assistant's (its tokens are the targets)`, 'data');
      prefix = tok.encode(tok.applyChatTemplate(x.messages.slice(0, -1), { addGenerationPrompt: true }));
      ids = tok.encode(tok.applyChatTemplate(x.messages, { addGenerationPrompt: false }));
    }
    if (eos !== undefined && ids.at(-1) !== eos) ids.push(eos);
    ids = ids.slice(0, seq);
    const targets = ids.map((_, j) => j >= Math.max(1, prefix.length));
    if (targets.some(Boolean)) rows.push({ ids, targets });
  });
  if (!rows.length) throw new FreezeError('the training set has no targets', 'data');
  return rows;
}

/** The rows of step `step`'s micro-batch `micro`: a seeded permutation per epoch, so a resumed run sees the same data. */
export function batchAt(rows: TrainRow[], step: number, micro: number, s: { batch: number; gradAccum: number; seed: number }): TrainRow[] {
  const per = s.batch * s.gradAccum;
  const start = step * per + micro * s.batch;
  const out: TrainRow[] = [];
  for (let k = start; k < start + s.batch; k++) {
    const epoch = Math.floor(k / rows.length);
    out.push(rows[permutation(rows.length, s.seed + epoch)[k % rows.length]]);
  }
  return out;
}

const permCache = new Map<string, number[]>();
function permutation(n: number, seed: number): number[] {
  const key = `${n}:${seed}`;
  let p = permCache.get(key);
  if (!p) {
    const rng = new Rng(seed >>> 0);
    p = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = rng.nextUint32() % (i + 1);
      [p[i], p[j]] = [p[j], p[i]];
    }
    if (permCache.size > 64) permCache.clear();
    permCache.set(key, p);
  }
  return p;
}

/** Reads a JSONL training file. */
export function readTrainingFile(tok: ModelTokenizer, path: string, seq: number): TrainRow[] {
  return trainingRows(tok, readFileSync(path, 'utf8'), seq);
}
