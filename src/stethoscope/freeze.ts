/**
 * The Freeze stethoscope: fine-tune only chosen module kinds of a checkpoint (the paper's F1: norms; F2: embed +
 * head + o_proj + norms; F3: + q/k/v; F4: all) with gradients from the training graph and AdamW as
 * `torch.optim.AdamW` computes it, and write the result as a plugin (or, when a non-pluggable kind learned, a
 * full checkpoint), with the loss curve, the run's plan and resumable checkpoints. What learns: freeze-sets.ts; the
 * data: freeze-data.ts; the optimizer: engine/adamw.ts.
 */
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { AdamW, lrAt } from '../engine/adamw.ts';
import { Trainer, type TrainRow } from '../engine/trainer.ts';
import { writeFileAtomic } from '../model/atomic.ts';
import { BASE_FINGERPRINT_KEY, Fingerprinter, iterateCheckpointRaw } from '../model/checkpoint.ts';
import { readSpec, type ModelSpec } from '../model/config.ts';
import { toFloat32 } from '../model/dtype.ts';
import { expectedParams, parseName, PLUGGABLE_KINDS, type ModuleKind } from '../model/names.ts';
import { SafetensorsFile, writeSafetensors } from '../model/safetensors.ts';
import { writeCheckpoint } from '../model/write-checkpoint.ts';
import type { TopLevelSpec } from 'vega-lite';
import { batchAt } from './freeze-data.ts';
import { FreezeError, parseTrainKinds, trainableNames } from './freeze-sets.ts';
import { renderSvg } from './plots.ts';

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
    throw new FreezeError(
      pluggable
        ? 'these kinds make a plugin: give an output file ending in .safetensors'
        : `${kinds.filter((k) => !PLUGGABLE_KINDS.includes(k)).join(', ')} cannot be a plugin: give an output directory for a full checkpoint`,
      'out',
    );
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
      for (const [key, into] of [
        [n, p],
        [`adam.m.${n}`, opt.m.get(n)!],
        [`adam.v.${n}`, opt.v.get(n)!],
      ] as const) {
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

async function writeOutputs(
  s: FreezeSettings,
  spec: ModelSpec,
  raw: Record<string, unknown>,
  kinds: ModuleKind[],
  params: Map<string, Float32Array>,
  losses: number[],
  finalLoss: number,
  pluggable: boolean,
): Promise<string[]> {
  const shapes = expectedParams(spec);
  if (pluggable) {
    const fp = new Fingerprinter(raw);
    for (const t of iterateCheckpointRaw(s.model, spec)) fp.addRaw(t.name, t.dtype, t.bytes);
    const tmp = `${s.out}.tmp-${process.pid}`;
    writeSafetensors(
      tmp,
      [...params].map(([n, p]) => ({ name: n, dtype: 'F32' as const, shape: shapes.get(n)!, data: new Uint8Array(p.buffer, p.byteOffset, p.byteLength) })),
      {
        [BASE_FINGERPRINT_KEY]: fp.digest(),
        'sfn.modules': kinds.join(','),
        'sfn.freeze': JSON.stringify({ kinds: s.kinds, steps: s.steps, lr: s.lr, wd: s.wd }),
        ...(s.description ? { 'sfn.description': s.description } : {}),
      },
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
    JSON.stringify(
      {
        model: s.model,
        sets: s.kinds,
        kinds,
        trainable_parameters: trainable,
        total_parameters: total,
        fraction: trainable / total,
        per_kind: perKind,
        tensors: [...params.keys()],
        settings: { ...s, rows: s.rows.length },
      },
      null,
      1,
    ),
  );
  return [basename(s.out), ...files.map((f) => basename(sidePath(s.out, f)))];
}

/** Loss curves like the paper's Figure 6: one line per run. */
export function lossCurveSpec(runs: { run: string; curve: { step: number; loss: number }[] }[]): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: 'Training loss', subtitle: "mean next-token cross-entropy of each step's batch" },
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
