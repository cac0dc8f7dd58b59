/**
 * Extraction (the paper's "Freeze"): from a base checkpoint A and its fine-tune B, write B's tensors of the
 * chosen module sets as a plugin, and audit every module *not* extracted: the largest |B - A|, so a user sees
 * whether the fine-tune really left it frozen (if not, the plugin is not exact, and the audit says so).
 * Streams one tensor pair at a time; memory is the extracted tensors plus one pair.
 */
import { writeFileSync } from 'node:fs';
import { CheckpointReader, Fingerprinter, iterateCheckpointRaw } from '../model/checkpoint.ts';
import { toFloat32 } from '../model/dtype.ts';
import { readSpec } from '../model/config.ts';
import { expectedParams, parseName, type ModuleKind } from '../model/names.ts';
import { writeSafetensors, type TensorToWrite } from '../model/safetensors.ts';
import { BASE_FINGERPRINT_KEY } from './validate.ts';

/** The module sets a plugin is extracted by, as the paper's Freeze runs name them. */
export const MODULE_SETS: Record<string, ModuleKind[]> = {
  o_proj: ['o_proj'],
  norms: ['input_layernorm', 'post_attention_layernorm', 'norm'],
  embed: ['embed_tokens'],
  head: ['lm_head'],
};

export interface KindAudit {
  kind: ModuleKind;
  max_abs_diff: number;
  /** Where the largest difference is. */
  tensor: string | null;
}

export interface Audit {
  base: string;
  tuned: string;
  base_fingerprint: string;
  extracted: ModuleKind[];
  tensors: number;
  /** True when every module left out is identical in A and B: the plugin reproduces B exactly. */
  exact: boolean;
  not_extracted: KindAudit[];
  notes: string[];
}

export function parseModuleSets(list: string): ModuleKind[] {
  const kinds = new Set<ModuleKind>();
  for (const s of list
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)) {
    const set = MODULE_SETS[s];
    if (!set) throw new Error(`unknown module set "${s}" (${Object.keys(MODULE_SETS).join(', ')})`);
    set.forEach((k) => kinds.add(k));
  }
  if (kinds.size === 0) throw new Error('no module sets given');
  return [...kinds];
}

export async function extractPlugin(baseDir: string, tunedDir: string, kinds: ModuleKind[], out: string, description = ''): Promise<Audit> {
  const a = readSpec(baseDir);
  const b = readSpec(tunedDir);
  const shapesA = expectedParams(a.spec);
  const shapesB = expectedParams(b.spec);
  if ([...shapesA].some(([n, s]) => shapesB.get(n)?.join() !== s.join()) || shapesA.size !== shapesB.size) {
    throw new Error(`${tunedDir} does not have the same parameters as ${baseDir}: not a fine-tune of it`);
  }
  const notes: string[] = [];
  let wanted = new Set(kinds);
  if (a.spec.tieWordEmbeddings && wanted.has('lm_head')) {
    wanted.add('embed_tokens');
    notes.push('the model ties lm_head to embed_tokens: the head comes with embed_tokens');
  }
  wanted = new Set([...wanted].filter((k) => k !== 'lm_head' || !a.spec.tieWordEmbeddings));

  const fp = new Fingerprinter(a.raw);
  const tuned = new CheckpointReader(tunedDir);
  const picked: TensorToWrite[] = [];
  const audit = new Map<ModuleKind, KindAudit>();
  try {
    let i = 0;
    for (const t of iterateCheckpointRaw(baseDir, a.spec)) {
      fp.addRaw(t.name, t.dtype, t.bytes);
      const kind = parseName(t.name)!.kind;
      if (wanted.has(kind)) {
        const tb = tuned.raw(t.name);
        picked.push({ name: t.name, dtype: tb.dtype, shape: tb.shape, data: tb.bytes });
      } else {
        const av = toFloat32(t.bytes, t.dtype);
        const bv = tuned.read(t.name).data;
        const entry = audit.get(kind) ?? { kind, max_abs_diff: 0, tensor: null };
        for (let j = 0; j < av.length; j++) {
          const d = Math.abs(bv[j] - av[j]);
          if (d > entry.max_abs_diff || (Number.isNaN(d) && !Number.isNaN(entry.max_abs_diff))) (entry.max_abs_diff = d), (entry.tensor = t.name);
        }
        audit.set(kind, entry);
      }
      // Long extractions stay polite to an event loop they share (the server's admin endpoint).
      if (++i % 8 === 0) await new Promise((r) => setImmediate(r));
    }
  } finally {
    tuned.close();
  }
  const baseFingerprint = fp.digest();
  writeSafetensors(out, picked, {
    [BASE_FINGERPRINT_KEY]: baseFingerprint,
    'sfn.modules': [...wanted].join(','),
    ...(description ? { 'sfn.description': description } : {}),
  });
  const notExtracted = [...audit.values()];
  const result: Audit = {
    base: baseDir,
    tuned: tunedDir,
    base_fingerprint: baseFingerprint,
    extracted: [...wanted],
    tensors: picked.length,
    exact: notExtracted.every((k) => k.max_abs_diff === 0),
    not_extracted: notExtracted,
    notes,
  };
  if (!result.exact) {
    const worst = notExtracted.reduce((x, y) => (y.max_abs_diff > x.max_abs_diff ? y : x));
    result.notes.push(
      `not exact: the fine-tune also changed ${notExtracted
        .filter((k) => k.max_abs_diff > 0)
        .map((k) => k.kind)
        .join(', ')} (largest |B-A| = ${worst.max_abs_diff} in ${worst.tensor}); the plugin reproduces B only approximately`,
    );
  }
  writeFileSync(`${out}.audit.json`, JSON.stringify(result, null, 2) + '\n');
  return result;
}
