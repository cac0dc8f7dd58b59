/**
 * Turns merge and destroy specs (as users write them) into overlay specs the engine's thread can build:
 * module kinds and layer ranges expanded into parameter names of this model, donors resolved to files, and
 * an id that hashes all of it (equal ids, equal tensors), so built overlays are cached and batched by it.
 */
import { createHash } from 'node:crypto';
import type { ModelSpec } from '../model/config.ts';
import { parseLayerRange } from '../model/names.ts';
import type { DestroyOverlaySpec, DonorRef, MergeOverlaySpec } from './build.ts';
import { DestroySpec, expandModules, MergeSpec, paramNames, parseSpec, SpecError } from './spec.ts';

const hashOf = (x: unknown) => createHash('sha256').update(JSON.stringify(x)).digest('hex').slice(0, 32);

export function resolveMerge(spec: ModelSpec, raw: unknown, donor: (from: string, param: string) => DonorRef, param = 'merge'): MergeOverlaySpec {
  const m = parseSpec(MergeSpec, raw, param);
  const entries = m.map((e, i) => ({
    names: paramNames(spec, expandModules(e.modules), e.layers, `${param}.${i}`),
    donor: donor(e.from, `${param}.${i}.from`),
    alpha: e.alpha,
  }));
  return { type: 'merge', id: hashOf(entries.map((e) => ({ ...e, donor: e.donor.id }))), entries };
}

export function resolveDestroy(spec: ModelSpec, raw: unknown, param = 'destroy'): DestroyOverlaySpec {
  const d = parseSpec(DestroySpec, raw, param);
  const entries = d.map((e, i) => {
    const p = `${param}.${i}`;
    if (e.method === 'remove') {
      if (e.modules.length) throw new SpecError(`${p}.modules: "remove" skips whole layers; give no modules`, `${p}.modules`);
      try {
        return { method: e.method, names: [], layers: parseLayerRange(e.layers, spec.numLayers), seed: 0 };
      } catch (err) {
        throw new SpecError(`${p}.layers: ${(err as Error).message}`, `${p}.layers`);
      }
    }
    if (!e.modules.length) throw new SpecError(`${p}.modules: name the modules to ${e.method}`, `${p}.modules`);
    return { method: e.method, names: paramNames(spec, expandModules(e.modules), e.layers, p), layers: [], seed: e.method === 'reinit' ? e.seed : 0 };
  });
  return { type: 'destroy', id: hashOf(entries), entries };
}
