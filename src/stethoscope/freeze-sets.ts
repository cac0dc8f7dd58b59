/** What learns in a Freeze run: the module sets by the names runs use, and the paper's Table 2 rows. */
import type { ModelSpec } from '../model/config.ts';
import { expectedParams, parseName, type ModuleKind } from '../model/names.ts';

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
  readonly param: string;
  constructor(message: string, param: string) {
    super(message);
    this.param = param;
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
