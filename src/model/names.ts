/**
 * Hugging Face parameter names <-> (layer, module kind, param). Every other module names weights through
 * this one, so `model.layers.12.self_attn.o_proj.weight` means the same thing everywhere.
 */
import type { ModelSpec } from './config.ts';

export const LAYER_KINDS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'input_layernorm', 'post_attention_layernorm'] as const;
export const GLOBAL_KINDS = ['embed_tokens', 'norm', 'lm_head'] as const;
export const MODULE_KINDS = [...LAYER_KINDS, ...GLOBAL_KINDS] as const;
export type LayerKind = (typeof LAYER_KINDS)[number];
export type GlobalKind = (typeof GLOBAL_KINDS)[number];
export type ModuleKind = (typeof MODULE_KINDS)[number];

/** The kinds a plugin may carry and a serving session takes as graph inputs (the paper's "Freeze" set). */
export const PLUGGABLE_KINDS: readonly ModuleKind[] = ['o_proj', 'input_layernorm', 'post_attention_layernorm', 'embed_tokens', 'norm', 'lm_head'];

/** Linear layers, whose HF weight is [out, in] and whose graph layout is [in, out]. */
export const LINEAR_KINDS: ReadonlySet<ModuleKind> = new Set(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'lm_head']);

export interface ParamName {
  layer: number | null;
  kind: ModuleKind;
  param: 'weight' | 'bias';
}

const ATTN = new Set(['q_proj', 'k_proj', 'v_proj', 'o_proj']);
const MLP = new Set(['gate_proj', 'up_proj', 'down_proj']);

export function formatName(p: ParamName): string {
  if (p.layer === null) {
    if (p.kind === 'lm_head') return `lm_head.${p.param}`;
    return `model.${p.kind}.${p.param}`;
  }
  const group = ATTN.has(p.kind) ? 'self_attn.' : MLP.has(p.kind) ? 'mlp.' : '';
  return `model.layers.${p.layer}.${group}${p.kind}.${p.param}`;
}

const LAYER_RE = /^model\.layers\.(\d+)\.(?:(self_attn)\.(q_proj|k_proj|v_proj|o_proj)|(mlp)\.(gate_proj|up_proj|down_proj)|(input_layernorm|post_attention_layernorm))\.(weight|bias)$/;
const GLOBAL_RE = /^(?:model\.(embed_tokens|norm)|(lm_head))\.(weight|bias)$/;

/** Parses an HF parameter name; undefined for names outside the Qwen2/Llama decoder layout. */
export function parseName(name: string): ParamName | undefined {
  const m = LAYER_RE.exec(name);
  if (m) {
    const layer = Number(m[1]);
    if (String(layer) !== m[1]) return undefined; // "01" is not layer 1
    const kind = (m[3] ?? m[5] ?? m[6]) as ModuleKind;
    return { layer, kind, param: m[7] as 'weight' | 'bias' };
  }
  const g = GLOBAL_RE.exec(name);
  if (g) return { layer: null, kind: (g[1] ?? g[2]) as ModuleKind, param: g[3] as 'weight' | 'bias' };
  return undefined;
}

/** Every parameter the spec's model has, with its HF shape, in forward order. */
export function expectedParams(spec: ModelSpec): Map<string, number[]> {
  const { hiddenSize: h, headDim: d, numHeads: nh, numKvHeads: nkv, intermediateSize: im, vocabSize: v } = spec;
  const out = new Map<string, number[]>();
  const add = (layer: number | null, kind: ModuleKind, param: 'weight' | 'bias', shape: number[]) => out.set(formatName({ layer, kind, param }), shape);
  add(null, 'embed_tokens', 'weight', [v, h]);
  for (let l = 0; l < spec.numLayers; l++) {
    add(l, 'input_layernorm', 'weight', [h]);
    add(l, 'q_proj', 'weight', [nh * d, h]);
    add(l, 'k_proj', 'weight', [nkv * d, h]);
    add(l, 'v_proj', 'weight', [nkv * d, h]);
    if (spec.qkvBias) {
      add(l, 'q_proj', 'bias', [nh * d]);
      add(l, 'k_proj', 'bias', [nkv * d]);
      add(l, 'v_proj', 'bias', [nkv * d]);
    }
    add(l, 'o_proj', 'weight', [h, nh * d]);
    if (spec.oBias) add(l, 'o_proj', 'bias', [h]);
    add(l, 'post_attention_layernorm', 'weight', [h]);
    add(l, 'gate_proj', 'weight', [im, h]);
    add(l, 'up_proj', 'weight', [im, h]);
    add(l, 'down_proj', 'weight', [h, im]);
    if (spec.mlpBias) {
      add(l, 'gate_proj', 'bias', [im]);
      add(l, 'up_proj', 'bias', [im]);
      add(l, 'down_proj', 'bias', [h]);
    }
  }
  add(null, 'norm', 'weight', [h]);
  if (!spec.tieWordEmbeddings) add(null, 'lm_head', 'weight', [v, h]);
  return out;
}

/** Parses "5-30", "7" or "all" into an inclusive list of 0-based layers, checked against the model. */
export function parseLayerRange(range: string, numLayers: number): number[] {
  const s = range.trim();
  if (s === 'all') return Array.from({ length: numLayers }, (_, i) => i);
  const m = /^(\d+)(?:\s*-\s*(\d+))?$/.exec(s);
  if (!m) throw new RangeError(`layer range "${range}" must look like "5-30", "7" or "all"`);
  const a = Number(m[1]);
  const b = m[2] === undefined ? a : Number(m[2]);
  if (a > b) throw new RangeError(`layer range "${range}" ends before it starts`);
  if (b >= numLayers) throw new RangeError(`layer range "${range}" goes past the last layer (${numLayers - 1})`);
  return Array.from({ length: b - a + 1 }, (_, i) => a + i);
}
