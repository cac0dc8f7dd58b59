/**
 * Merge and destruction specs, as the API and `sfn logits --merge/--destroy` take them (one JSON shape for
 * both), and their expansion into parameter names against a model.
 *
 *   merge:   [{ "modules": ["o_proj"] | ["M1"], "layers": "0-27", "from": "<plugin id or checkpoint dir>", "alpha": 1 }]
 *   destroy: [{ "method": "zero" | "reinit" | "remove", "modules": ["o_proj"], "layers": "5-30", "seed": 0 }]
 *
 * Presets name the paper's merges: M1 = o_proj, M2 = q,k,v, M3 = the MLP (gate, up, down).
 */
import { z } from 'zod';
import type { ModelSpec } from '../model/config.ts';
import { expectedParams, formatName, GLOBAL_KINDS, MODULE_KINDS, parseLayerRange, type ModuleKind } from '../model/names.ts';

export const PRESETS: Record<string, ModuleKind[]> = {
  M1: ['o_proj'],
  M2: ['q_proj', 'k_proj', 'v_proj'],
  M3: ['gate_proj', 'up_proj', 'down_proj'],
};

const Module = z.enum([...MODULE_KINDS, ...Object.keys(PRESETS)] as [string, ...string[]]);

export const MergeEntry = z.strictObject({
  modules: z.array(Module).min(1),
  layers: z.string().default('all'),
  from: z.string().min(1),
  alpha: z.number().min(0).max(1).default(1),
});
export const MergeSpec = z.array(MergeEntry).min(1).max(64);
export type MergeSpec = z.infer<typeof MergeSpec>;

/** A seed (ReInit, sampling, data order): an unsigned 32-bit integer. */
export const Seed = z
  .number()
  .int()
  .min(0)
  .max(2 ** 32 - 1);

export const DestroyEntry = z.strictObject({
  method: z.enum(['zero', 'reinit', 'remove']),
  modules: z.array(Module).default([]),
  layers: z.string(),
  seed: Seed.default(0),
});
export const DestroySpec = z.array(DestroyEntry).min(1).max(64);
export type DestroySpec = z.infer<typeof DestroySpec>;

export class SpecError extends Error {
  readonly param: string;
  constructor(message: string, param: string) {
    super(message);
    this.param = param;
  }
}

export function expandModules(mods: string[]): ModuleKind[] {
  return [...new Set(mods.flatMap((m) => PRESETS[m] ?? [m as ModuleKind]))];
}

/** The parameters (weights and biases) of the given kinds over a layer range; global kinds ignore layers. */
export function paramNames(spec: ModelSpec, kinds: ModuleKind[], layers: string, param: string): string[] {
  let ls: number[];
  try {
    ls = parseLayerRange(layers, spec.numLayers);
  } catch (e) {
    throw new SpecError(`${param}.layers: ${(e as Error).message}`, `${param}.layers`);
  }
  const have = expectedParams(spec);
  const out: string[] = [];
  for (const k of kinds) {
    const targets = (GLOBAL_KINDS as readonly string[]).includes(k) ? [null] : ls;
    for (const layer of targets)
      for (const p of ['weight', 'bias'] as const) {
        const n = formatName({ layer, kind: k, param: p });
        if (have.has(n)) out.push(n);
      }
  }
  if (spec.tieWordEmbeddings && kinds.includes('lm_head')) {
    throw new SpecError(`${param}.modules: this model ties lm_head to embed_tokens; name embed_tokens`, `${param}.modules`);
  }
  if (out.length === 0) throw new SpecError(`${param}: selects no parameter of this model`, param);
  return out;
}

export function parseSpec<T>(schema: z.ZodType<T>, raw: unknown, param: string): T {
  const r = schema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues.find((x) => x.code === 'unrecognized_keys') ?? r.error.issues[0];
    if (i.code === 'unrecognized_keys') {
      const field = [param, ...i.path.map(String), i.keys[0]].join('.');
      throw new SpecError(`${field}: unknown field`, field);
    }
    const path = [param, ...i.path.map(String)].join('.');
    throw new SpecError(`${path}: ${i.message}`, path);
  }
  return r.data;
}
