/**
 * Hugging Face `config.json` -> ModelSpec, for the Qwen2 and Llama layouts. Keys are read as transformers
 * writes them; defaults are transformers' own for each model_type, so a config means here what it means there.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { jsonFault } from '../util/json.ts';

const RopeScaling = z
  .object({
    rope_type: z.string().optional(),
    type: z.string().optional(),
    factor: z.number().positive().optional(),
    low_freq_factor: z.number().optional(),
    high_freq_factor: z.number().optional(),
    original_max_position_embeddings: z.number().int().positive().optional(),
  })
  .passthrough();

const HfConfig = z
  .object({
    model_type: z.enum(['qwen2', 'llama'], { message: 'model_type must be "qwen2" or "llama"' }),
    hidden_size: z.number().int().positive(),
    num_hidden_layers: z.number().int().positive(),
    num_attention_heads: z.number().int().positive(),
    num_key_value_heads: z.number().int().positive().optional(),
    head_dim: z.number().int().positive().nullish(),
    intermediate_size: z.number().int().positive(),
    vocab_size: z.number().int().positive(),
    rms_norm_eps: z.number().positive().optional(),
    rope_theta: z.number().positive().optional(),
    rope_scaling: RopeScaling.nullish(),
    tie_word_embeddings: z.boolean().optional(),
    attention_bias: z.boolean().optional(),
    mlp_bias: z.boolean().optional(),
    hidden_act: z.string().optional(),
    max_position_embeddings: z.number().int().positive().optional(),
    bos_token_id: z.number().int().nullish(),
    eos_token_id: z.union([z.number().int(), z.array(z.number().int())]).nullish(),
    use_sliding_window: z.boolean().optional(),
  })
  .passthrough();
export type HfConfig = z.infer<typeof HfConfig>;

export interface RopeSpec {
  theta: number;
  /** 'default' (plain RoPE), 'linear' (positions / factor) or 'llama3' (Llama 3.1 frequency smoothing). */
  type: 'default' | 'linear' | 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface ModelSpec {
  arch: 'qwen2' | 'llama';
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  rmsNormEps: number;
  rope: RopeSpec;
  tieWordEmbeddings: boolean;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  maxPositionEmbeddings: number;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Validates a parsed config.json and derives the spec. */
export function specFromConfig(raw: unknown): ModelSpec {
  const parsed = HfConfig.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    throw new ConfigError(`config.json: ${i.path.join('.') || '(root)'}: ${i.message}`);
  }
  const c = parsed.data;
  const qwen = c.model_type === 'qwen2';
  const numKvHeads = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % numKvHeads !== 0) {
    throw new ConfigError(`config.json: num_attention_heads (${c.num_attention_heads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  }
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw new ConfigError(`config.json: head_dim ${headDim} must be an even integer`);
  if (c.hidden_act && c.hidden_act !== 'silu') throw new ConfigError(`config.json: hidden_act "${c.hidden_act}" is not supported (only silu)`);
  if (c.use_sliding_window) throw new ConfigError('config.json: use_sliding_window=true is not supported');
  const eos = c.eos_token_id == null ? [] : Array.isArray(c.eos_token_id) ? c.eos_token_id : [c.eos_token_id];
  return {
    arch: c.model_type,
    hiddenSize: c.hidden_size,
    numLayers: c.num_hidden_layers,
    numHeads: c.num_attention_heads,
    numKvHeads,
    headDim,
    intermediateSize: c.intermediate_size,
    vocabSize: c.vocab_size,
    rmsNormEps: c.rms_norm_eps ?? 1e-6,
    rope: ropeSpec(c),
    // transformers' defaults: Qwen2Config and LlamaConfig both default tie_word_embeddings to false.
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    qkvBias: qwen ? true : (c.attention_bias ?? false),
    oBias: qwen ? false : (c.attention_bias ?? false),
    mlpBias: qwen ? false : (c.mlp_bias ?? false),
    maxPositionEmbeddings: c.max_position_embeddings ?? (qwen ? 32768 : 2048),
    bosTokenId: c.bos_token_id ?? null,
    eosTokenIds: eos,
  };
}

function ropeSpec(c: HfConfig): RopeSpec {
  const theta = c.rope_theta ?? 10000;
  const s = c.rope_scaling;
  const base: RopeSpec = { theta, type: 'default', factor: 1, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };
  if (!s) return base;
  const type = s.rope_type ?? s.type ?? 'default';
  if (type === 'default') return base;
  if (type === 'linear') return { ...base, type, factor: s.factor ?? 1 };
  if (type === 'llama3') {
    const need = ['factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'] as const;
    for (const k of need) if (s[k] === undefined) throw new ConfigError(`config.json: rope_scaling.${k} is required for rope_type llama3`);
    return {
      theta,
      type,
      factor: s.factor!,
      lowFreqFactor: s.low_freq_factor!,
      highFreqFactor: s.high_freq_factor!,
      originalMaxPositionEmbeddings: s.original_max_position_embeddings!,
    };
  }
  throw new ConfigError(`config.json: rope_scaling type "${type}" is not supported (default, linear, llama3)`);
}

/**
 * The RoPE inverse frequencies, as transformers computes them (`_compute_default_rope_parameters`,
 * `_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`), rounded to float32 at the end.
 */
export function ropeInvFreq(spec: ModelSpec): Float32Array {
  const { headDim: dim } = spec;
  const r = spec.rope;
  const half = dim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    // torch: 1 / base ** (arange(0, dim, 2).float() / dim), in float32.
    const expo = Math.fround((2 * i) / dim);
    let f = Math.fround(1 / Math.fround(r.theta ** expo));
    if (r.type === 'linear') f = Math.fround(f / r.factor);
    if (r.type === 'llama3') {
      const lowWavelen = r.originalMaxPositionEmbeddings / r.lowFreqFactor;
      const highWavelen = r.originalMaxPositionEmbeddings / r.highFreqFactor;
      const wavelen = (2 * Math.PI) / f;
      let g = wavelen > lowWavelen ? f / r.factor : f;
      const isMedium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
      if (isMedium) {
        const smooth = (r.originalMaxPositionEmbeddings / wavelen - r.lowFreqFactor) / (r.highFreqFactor - r.lowFreqFactor);
        g = (1 - smooth) * (g / r.factor) + smooth * g;
      }
      f = Math.fround(g);
    }
    out[i] = f;
  }
  return out;
}

export function readSpec(dir: string): { spec: ModelSpec; raw: Record<string, unknown> } {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  } catch (e) {
    throw new ConfigError(`cannot read ${join(dir, 'config.json')}: ${e instanceof SyntaxError ? jsonFault(e) : (e as Error).message}`);
  }
  return { spec: specFromConfig(raw), raw };
}
