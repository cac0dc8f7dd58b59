/**
 * The Freeze stethoscope: fine-tune only chosen module kinds of a checkpoint (the paper's F1: norms; F2: embed +
 * head + o_proj + norms; F3: + q/k/v; F4: all) with gradients from the training graph and AdamW as
 * `torch.optim.AdamW` computes it, and write the result as a plugin (or, when a non-pluggable kind learned, a
 * full checkpoint), with the loss curve, the run's plan and resumable checkpoints.
 */
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import { Rng } from '../util/random.ts';
import { Trainer, type TrainRow } from '../engine/trainer.ts';
import type { ModelTokenizer } from '../engine/tokenizer.ts';
import { writeFileAtomic } from '../model/atomic.ts';
import { BASE_FINGERPRINT_KEY, Fingerprinter, iterateCheckpointRaw } from '../model/checkpoint.ts';
import { readSpec, type ModelSpec } from '../model/config.ts';
import { toFloat32 } from '../model/dtype.ts';
import { expectedParams, parseName, PLUGGABLE_KINDS, type ModuleKind } from '../model/names.ts';
import { SafetensorsFile, writeSafetensors } from '../model/safetensors.ts';
import { writeCheckpoint } from '../model/write-checkpoint.ts';
import type { TopLevelSpec } from 'vega-lite';
import { renderSvg } from './plots.ts';

// ---------------------------------------------------------------- what learns

/** Trainable module sets by the names runs use; `head` on a tied model is the embedding. */
export const TRAIN_SETS: Record<string, ModuleKind[]> = {
  o_proj: ['o_proj'],
  norms: ['input_layernorm', 'post_attention_layernorm', 'norm'],
  embed: ['embed_tokens'],
  head: ['lm_head'],
  q_proj: ['q_proj'],
  k_proj: ['k_proj'],
  v_proj: ['v_proj'],
  qkv: ['q_proj', 'k_proj', 'v_proj'],
  gate_proj: ['gate_proj'],
  up_proj: ['up_proj'],
  down_proj: ['down_proj'],
  mlp: ['gate_proj', 'up_proj', 'down_proj'],
  all: ['embed_tokens', 'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'input_layernorm', 'post_attention_layernorm', 'norm', 'lm_head'],
};

/** The paper's Table 2 rows. */
export const TABLE2_ROWS: Record<string, string[]> = {
  F1: ['norms'],
  F2: ['embed', 'head', 'o_proj', 'norms'],
  F3: ['embed', 'head', 'o_proj', 'norms', 'qkv'],
  F4: ['all'],
};

export class FreezeError extends Error {
  constructor(
    message: string,
    readonly param: string,
  ) {
    super(message);
  }
}

export function parseTrainKinds(sets: string[]): ModuleKind[] {
  const kinds = new Set<ModuleKind>();
  for (const s of sets) {
    const k = TRAIN_SETS[s];
    if (!k) throw new FreezeError(`unknown module set "${s}" (${Object.keys(TRAIN_SETS).join(', ')})`, 'kinds');
    k.forEach((x) => kinds.add(x));
  }
  if (!kinds.size) throw new FreezeError('name the module sets to train', 'kinds');
  return [...kinds];
}

/** The parameters (weights and biases) of `kinds` in this model; a tied head trains as the embedding. */
export function trainableNames(spec: ModelSpec, kinds: ModuleKind[]): Set<string> {
  const want = new Set(kinds.map((k) => (k === 'lm_head' && spec.tieWordEmbeddings ? 'embed_tokens' : k)));
  return new Set([...expectedParams(spec).keys()].filter((n) => want.has(parseName(n)!.kind)));
}

// ---------------------------------------------------------------- AdamW, as torch.optim.AdamW computes it

export interface AdamWOptions {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

/** torch's single-tensor AdamW in float32: decoupled decay, bias-corrected moments, eps outside the root. */
export class AdamW {
  readonly m = new Map<string, Float32Array>();
  readonly v = new Map<string, Float32Array>();
  step = 0;

  constructor(
    private readonly params: Map<string, Float32Array>,
    private readonly opts: AdamWOptions,
  ) {
    for (const [n, p] of params) {
      this.m.set(n, new Float32Array(p.length));
      this.v.set(n, new Float32Array(p.length));
    }
  }

  update(grads: Map<string, Float32Array>, lr = this.opts.lr): void {
    this.step++;
    const [b1, b2] = this.opts.betas;
    const f = Math.fround;
    const decay = f(1 - lr * this.opts.weightDecay);
    const stepSize = f(lr / (1 - b1 ** this.step));
    const bc2Sqrt = f(Math.sqrt(1 - b2 ** this.step));
    for (const [n, p] of this.params) {
      const g = grads.get(n)!;
      const m = this.m.get(n)!;
      const v = this.v.get(n)!;
      for (let i = 0; i < p.length; i++) {
        p[i] = f(p[i] * decay);
        m[i] = f(m[i] + f(f(1 - b1) * f(g[i] - m[i])));
        v[i] = f(f(v[i] * b2) + f(f(g[i] * g[i]) * f(1 - b2)));
        const denom = f(f(Math.sqrt(v[i]) / bc2Sqrt) + this.opts.eps);
        p[i] = f(p[i] - f(stepSize * f(m[i] / denom)));
      }
    }
  }
}

/** The learning rate at `step` (0-based): linear warmup, then constant or cosine to 0. */
export function lrAt(step: number, s: { lr: number; warmup: number; schedule: 'constant' | 'cosine'; steps: number }): number {
  if (s.warmup > 0 && step < s.warmup) return (s.lr * (step + 1)) / s.warmup;
  if (s.schedule === 'constant') return s.lr;
  const t = (step - s.warmup) / Math.max(1, s.steps - s.warmup);
  return s.lr * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, t)));
}

// ---------------------------------------------------------------- data

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
      throw new FreezeError(`line ${i + 1}: not JSON (${(e as Error).message})`, 'data');
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

// ---------------------------------------------------------------- a run

export interface FreezeSettings {
  model: string;
  /** Module sets (TRAIN_SETS names). */
  kinds: string[];
  rows: TrainRow[];
  steps: number;
  lr: number;
  wd: number;
  batch: number;
  gradAccum: number;
  warmup: number;
  schedule: 'constant' | 'cosine';
  seed: number;
  /** Write a resumable checkpoint every this many steps (0: only at the end). */
  checkpointEvery: number;
  /** A plugin file (`.safetensors`) or, for non-pluggable kinds, a checkpoint directory. */
  out: string;
  /** Continue from `<out>.checkpoint.safetensors` when it exists. */
  resume: boolean;
  description?: string;
  threads?: number;
}

export interface FreezeResult {
  out: string;
  /** 'plugin' when every trained kind is pluggable, else 'checkpoint'. */
  kind: 'plugin' | 'checkpoint';
  kinds: ModuleKind[];
  parameters: number;
  steps: number;
  /** Loss of each step's batch before its update; `final_loss` after the last one on the last batch. */
  losses: number[];
  final_loss: number;
  steps_per_second: number;
  tokens_per_second: number;
  files: string[];
}

/** Where a run's side files go: beside a plugin file (`<stem>.loss.json`), or inside a checkpoint directory. */
export function sidePath(out: string, file: string): string {
  return out.endsWith('.safetensors') ? `${out.slice(0, -'.safetensors'.length)}.${file}` : join(out, file);
}

export async function runFreeze(s: FreezeSettings, progress: (step: number, steps: number, loss: number) => void = () => {}, signal?: AbortSignal): Promise<FreezeResult> {
  const { spec, raw } = readSpec(s.model);
  const kinds = parseTrainKinds(s.kinds);
  const names = trainableNames(spec, kinds);
  if (!names.size) throw new FreezeError(`the module sets ${s.kinds.join(', ')} select no parameter of this model`, 'kinds');
  const pluggable = [...names].every((n) => PLUGGABLE_KINDS.includes(parseName(n)!.kind));
  if (pluggable !== s.out.endsWith('.safetensors')) {
    throw new FreezeError(pluggable ? 'these kinds make a plugin: give an output file ending in .safetensors' : `${kinds.filter((k) => !PLUGGABLE_KINDS.includes(k)).join(', ')} cannot be a plugin: give an output directory for a full checkpoint`, 'out');
  }
  for (const r of s.rows) if (r.ids.some((id) => id >= spec.vocabSize || id < 0)) throw new FreezeError('a token id is outside the vocabulary', 'data');
  mkdirSync(s.out.endsWith('.safetensors') ? dirname(s.out) || '.' : s.out, { recursive: true });

  const trainer = await Trainer.load(s.model, names, { threads: s.threads });
  const opt = new AdamW(trainer.params, { lr: s.lr, betas: [0.9, 0.999], eps: 1e-8, weightDecay: s.wd });
  const losses: number[] = [];
  const ckpt = sidePath(s.out, 'checkpoint.safetensors');
  if (s.resume && existsSync(ckpt)) losses.push(...restore(ckpt, trainer.params, opt));
  let tokens = 0;
  const t0 = performance.now();
  const first = opt.step;
  try {
    for (let step = opt.step; step < s.steps; step++) {
      if (signal?.aborted) throw new FreezeError('cancelled', 'job');
      const grads = new Map([...trainer.params.keys()].map((n) => [n, new Float32Array(trainer.params.get(n)!.length)]));
      let loss = 0;
      for (let micro = 0; micro < s.gradAccum; micro++) {
        const r = await trainer.step(batchAt(s.rows, step, micro, s));
        // Micro-batches count alike: their mean losses and gradients are averaged.
        for (const [n, g] of r.grads) {
          const acc = grads.get(n)!;
          for (let i = 0; i < g.length; i++) acc[i] += g[i] / s.gradAccum;
        }
        loss += r.loss / s.gradAccum;
        tokens += r.tokens;
      }
      opt.update(grads, lrAt(step, s));
      losses.push(loss);
      progress(step + 1, s.steps, loss);
      if (s.checkpointEvery > 0 && (step + 1) % s.checkpointEvery === 0 && step + 1 < s.steps) save(ckpt, trainer.params, opt, losses);
    }
    const seconds = (performance.now() - t0) / 1000;
    const last = await trainer.step(batchAt(s.rows, Math.max(0, s.steps - 1), 0, s));
    save(ckpt, trainer.params, opt, losses);
    const files = await writeOutputs(s, spec, raw, kinds, trainer.params, losses, last.loss, pluggable);
    const ran = s.steps - first;
    return {
      out: s.out,
      kind: pluggable ? 'plugin' : 'checkpoint',
      kinds,
      parameters: [...trainer.params.values()].reduce((a, p) => a + p.length, 0),
      steps: s.steps,
      losses,
      final_loss: last.loss,
      steps_per_second: ran / seconds,
      tokens_per_second: tokens / seconds,
      files: [...files, basename(ckpt)],
    };
  } finally {
    await trainer.release();
  }
}

/** Parameters and optimizer state, so a run continues where it stopped. */
function save(path: string, params: Map<string, Float32Array>, opt: AdamW, losses: number[]): void {
  const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const tensors = [...params].flatMap(([n, p]) => [
    { name: n, dtype: 'F32' as const, shape: [p.length], data: bytes(p) },
    { name: `adam.m.${n}`, dtype: 'F32' as const, shape: [p.length], data: bytes(opt.m.get(n)!) },
    { name: `adam.v.${n}`, dtype: 'F32' as const, shape: [p.length], data: bytes(opt.v.get(n)!) },
  ]);
  const tmp = `${path}.tmp-${process.pid}`;
  writeSafetensors(tmp, tensors, { 'sfn.step': String(opt.step), 'sfn.losses': JSON.stringify(losses) });
  renameSync(tmp, path);
}

function restore(path: string, params: Map<string, Float32Array>, opt: AdamW): number[] {
  const f = SafetensorsFile.open(path);
  try {
    for (const [n, p] of params) {
      for (const [key, into] of [[n, p], [`adam.m.${n}`, opt.m.get(n)!], [`adam.v.${n}`, opt.v.get(n)!]] as const) {
        if (!f.names.includes(key)) throw new FreezeError(`${path} is not a checkpoint of this run (no ${key})`, 'resume');
        const data = toFloat32(f.readBytes(key), f.info(key).dtype);
        if (data.length !== into.length) throw new FreezeError(`${path}: ${key} has another size`, 'resume');
        into.set(data);
      }
    }
    const meta = f.header.metadata;
    opt.step = Number(meta['sfn.step'] ?? 0);
    return JSON.parse(meta['sfn.losses'] ?? '[]');
  } finally {
    f.close();
  }
}

async function writeOutputs(s: FreezeSettings, spec: ModelSpec, raw: Record<string, unknown>, kinds: ModuleKind[], params: Map<string, Float32Array>, losses: number[], finalLoss: number, pluggable: boolean): Promise<string[]> {
  const shapes = expectedParams(spec);
  if (pluggable) {
    const fp = new Fingerprinter(raw);
    for (const t of iterateCheckpointRaw(s.model, spec)) fp.addRaw(t.name, t.dtype, t.bytes);
    const tmp = `${s.out}.tmp-${process.pid}`;
    writeSafetensors(
      tmp,
      [...params].map(([n, p]) => ({ name: n, dtype: 'F32' as const, shape: shapes.get(n)!, data: new Uint8Array(p.buffer, p.byteOffset, p.byteLength) })),
      { [BASE_FINGERPRINT_KEY]: fp.digest(), 'sfn.modules': kinds.join(','), 'sfn.freeze': JSON.stringify({ kinds: s.kinds, steps: s.steps, lr: s.lr, wd: s.wd }), ...(s.description ? { 'sfn.description': s.description } : {}) },
    );
    renameSync(tmp, s.out);
  } else {
    const reader = iterateCheckpointRaw(s.model, spec);
    const tensors = (function* () {
      for (const t of reader) yield { name: t.name, shape: t.shape, data: params.get(t.name) ?? toFloat32(t.bytes, t.dtype) };
    })();
    const copy: Record<string, string> = {};
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) if (existsSync(join(s.model, f))) copy[f] = join(s.model, f);
    writeCheckpoint(s.out, tensors, { config: raw, dtype: 'F32', copy });
  }
  const curve = losses.map((loss, i) => ({ step: i + 1, loss, lr: lrAt(i, s) }));
  const files = ['loss.json', 'loss.csv', 'loss.svg', 'plan.json'];
  writeFileAtomic(sidePath(s.out, 'loss.json'), JSON.stringify({ losses: curve, final_loss: finalLoss }, null, 1));
  writeFileAtomic(sidePath(s.out, 'loss.csv'), 'step,loss,lr\n' + curve.map((c) => `${c.step},${c.loss},${c.lr}`).join('\n') + '\n');
  writeFileAtomic(sidePath(s.out, 'loss.svg'), await renderSvg(lossCurveSpec([{ run: s.kinds.join('+'), curve }])));
  const perKind: Record<string, number> = {};
  for (const [n, p] of params) perKind[parseName(n)!.kind] = (perKind[parseName(n)!.kind] ?? 0) + p.length;
  const total = [...shapes.values()].reduce((a, sh) => a + sh.reduce((x, y) => x * y, 1), 0);
  const trainable = [...params.values()].reduce((a, p) => a + p.length, 0);
  writeFileAtomic(
    sidePath(s.out, 'plan.json'),
    JSON.stringify({ model: s.model, sets: s.kinds, kinds, trainable_parameters: trainable, total_parameters: total, fraction: trainable / total, per_kind: perKind, tensors: [...params.keys()], settings: { ...s, rows: s.rows.length } }, null, 1),
  );
  return [basename(s.out), ...files.map((f) => basename(sidePath(s.out, f)))];
}

/** Loss curves like the paper's Figure 6: one line per run. */
export function lossCurveSpec(runs: { run: string; curve: { step: number; loss: number }[] }[]): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: 'Training loss', subtitle: 'mean next-token cross-entropy of each step\'s batch' },
    width: 520,
    height: 300,
    data: { values: runs.flatMap((r) => r.curve.map((c) => ({ run: r.run, step: c.step, loss: c.loss }))) },
    mark: { type: 'line' },
    encoding: {
      x: { field: 'step', type: 'quantitative', title: 'step' },
      y: { field: 'loss', type: 'quantitative', title: 'loss', scale: { zero: false } },
      color: { field: 'run', type: 'nominal', title: 'trained' },
    },
  };
}

/** Reads a JSONL training file. */
export function readTrainingFile(tok: ModelTokenizer, path: string, seq: number): TrainRow[] {
  return trainingRows(tok, readFileSync(path, 'utf8'), seq);
}
