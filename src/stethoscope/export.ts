/**
 * Export: any view (plugin, merge, destruction) written out as a full Hugging Face checkpoint directory, so
 * other tools (transformers, llama.cpp's converter, mergekit) can check or reuse it. The backbone's config,
 * tokenizer and generation config come along unchanged.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Engine } from '../engine/engine.ts';
import { toHfLayout } from '../engine/layout.ts';
import type { FloatDtype } from '../model/dtype.ts';
import { parseName } from '../model/names.ts';
import { streamCheckpoint } from '../model/write-checkpoint.ts';
import type { View } from '../engine/view.ts';

const SIDE_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt'];

/**
 * Writes the view as a checkpoint directory, one tensor at a time; `between` is awaited before each tensor, so
 * that in the engine's thread decode steps run between them instead of waiting for the whole export.
 */
export async function exportView(engine: Engine, view: View, out: string, opts: { dtype?: FloatDtype; shardBytes?: number; between?: () => Promise<void> } = {}): Promise<{ tensors: number }> {
  if (!engine.dir) throw new Error('this engine was not loaded from a directory; nothing to take the config from');
  const config = JSON.parse(readFileSync(join(engine.dir, 'config.json'), 'utf8'));
  const copy = Object.fromEntries(SIDE_FILES.filter((f) => existsSync(join(engine.dir!, f))).map((f) => [f, join(engine.dir!, f)]));
  const plan = [...engine.shapes].map(([name, shape]) => ({ name, shape }));
  const params = viewParameters(engine, view);
  await streamCheckpoint(
    out,
    plan,
    async () => {
      await opts.between?.();
      return params.next().value!.data;
    },
    { config, dtype: opts.dtype ?? 'F32', shardBytes: opts.shardBytes, copy },
    opts.between,
  );
  return { tensors: plan.length };
}

/**
 * Every parameter of a view in HF layout. A layer gate g (Remove: 0) scales that layer's o_proj and down_proj
 * (weights and biases): their outputs are the layer's residual contributions, so the exported model computes
 * exactly what the gated view does.
 */
export function* viewParameters(engine: Engine, view: View): Generator<{ name: string; shape: number[]; data: Float32Array }> {
  const { tensors, gates } = view.resolve();
  engine.checkTensors(tensors);
  for (const [name, shape] of engine.shapes) {
    const t = tensors.get(name);
    let data = t ? (t.layout === 'graph' ? toHfLayout(engine.spec, name, t.data, shape) : t.data) : engine.parameter(name).data;
    const p = parseName(name)!;
    const g = p.layer === null ? undefined : gates.get(p.layer);
    if (g !== undefined && (p.kind === 'o_proj' || p.kind === 'down_proj')) data = data.map((x) => x * g);
    yield { name, shape, data };
  }
}
