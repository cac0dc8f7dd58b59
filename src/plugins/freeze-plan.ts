/**
 * The Freeze plan: how many parameters each of the paper's trainable module sets holds for a given
 * config, so a user can weigh Emb+Head+o_proj against full fine-tuning before training. Norms are listed
 * apart (they are tiny and usually trained along).
 */
import type { ModelSpec } from '../model/config.ts';
import { expectedParams, parseName, type ModuleKind } from '../model/names.ts';

export const FREEZE_SETS: { name: string; modules: ModuleKind[] }[] = [
  { name: 'Emb+Head', modules: ['embed_tokens', 'lm_head'] },
  { name: 'Emb+Head+o_proj', modules: ['embed_tokens', 'lm_head', 'o_proj'] },
  { name: 'Emb+Head+{q,k,v,o}_proj', modules: ['embed_tokens', 'lm_head', 'q_proj', 'k_proj', 'v_proj', 'o_proj'] },
  { name: 'All', modules: ['embed_tokens', 'lm_head', 'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] },
];
const NORMS: ModuleKind[] = ['input_layernorm', 'post_attention_layernorm', 'norm'];

export interface FreezePlan {
  total_parameters: number;
  norm_parameters: number;
  tied_embeddings: boolean;
  per_module: Record<string, number>;
  sets: { name: string; modules: ModuleKind[]; trainable: number; fraction: number; trainable_with_norms: number }[];
}

export function freezePlan(spec: ModelSpec): FreezePlan {
  const perModule: Record<string, number> = {};
  let total = 0;
  for (const [name, shape] of expectedParams(spec)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const kind = parseName(name)!.kind;
    perModule[kind] = (perModule[kind] ?? 0) + n;
    total += n;
  }
  const norms = NORMS.reduce((a, k) => a + (perModule[k] ?? 0), 0);
  return {
    total_parameters: total,
    norm_parameters: norms,
    tied_embeddings: spec.tieWordEmbeddings,
    per_module: perModule,
    sets: FREEZE_SETS.map((s) => {
      // A tied head is embed_tokens itself: counted once.
      const trainable = s.modules.reduce((a, k) => a + (perModule[k] ?? 0), 0);
      return { name: s.name, modules: s.modules, trainable, fraction: trainable / total, trainable_with_norms: trainable + norms };
    }),
  };
}

export function freezePlanTable(p: FreezePlan): string {
  const fmt = (n: number) => n.toLocaleString('en-US');
  const rows = p.sets.map((s) => `${s.name.padEnd(26)} ${fmt(s.trainable).padStart(16)} ${(100 * s.fraction).toFixed(2).padStart(8)}% ${fmt(s.trainable_with_norms).padStart(16)}`);
  return [
    `${'set'.padEnd(26)} ${'trainable'.padStart(16)} ${'of all'.padStart(9)} ${'with norms'.padStart(16)}`,
    ...rows,
    `total ${fmt(p.total_parameters)}; norms ${fmt(p.norm_parameters)}${p.tied_embeddings ? '; lm_head is tied to embed_tokens (counted once)' : ''}`,
  ].join('\n');
}
