/**
 * Builds merge and destruction overlays inside the engine's thread, from specs already resolved to
 * parameter names and donor files (see `resolve.ts`). Merge: tensors from a donor, or (1-alpha)*A + alpha*B.
 * Zero: a shared zero buffer. ReInit: N(0, 0.02) weights and zero biases from `Rng(seed ^ fnv1a(name))`,
 * drawn in HF row-major order, so the same seed gives the same tensors on every machine. Remove: layer gates 0.
 */
import type { Engine } from '../engine/engine.ts';
import { Rng } from '../util/random.ts';
import { CheckpointReader } from '../model/checkpoint.ts';
import { toFloat32 } from '../model/dtype.ts';
import { SafetensorsFile } from '../model/safetensors.ts';
import { tensorOverlay, type GateOverlay, type Tensor, type TensorOverlay } from '../engine/view.ts';

export interface DonorRef {
  /** 'file': a safetensors file (a plugin); 'dir': a checkpoint directory (single or sharded). */
  kind: 'file' | 'dir';
  path: string;
  /** Content identity of the donor, part of the overlay id. */
  id: string;
}

export interface MergeOverlaySpec {
  type: 'merge';
  id: string;
  entries: { names: string[]; donor: DonorRef; alpha: number }[];
}

export interface DestroyOverlaySpec {
  type: 'destroy';
  id: string;
  entries: { method: 'zero' | 'reinit' | 'remove'; names: string[]; layers: number[]; seed: number }[];
}

export const REINIT_STD = 0.02;

/** 32-bit FNV-1a of a string: mixes the parameter name into the ReInit seed. */
export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** The ReInit tensor of a parameter (HF layout): N(0, 0.02) for weights, zeros for biases. */
export function reinitTensor(name: string, shape: number[], seed: number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  if (name.endsWith('.bias')) return out;
  const rng = new Rng((seed ^ fnv1a(name)) >>> 0);
  for (let i = 0; i < n; i++) out[i] = REINIT_STD * rng.normal();
  return out;
}

/** Reads named tensors from a donor, one at a time. */
export function readDonor(donor: DonorRef, names: string[]): Map<string, Tensor> {
  if (donor.kind === 'file') {
    const f = SafetensorsFile.open(donor.path);
    try {
      return new Map(
        names.map((n) => {
          if (!f.header.tensors.has(n)) throw new Error(`the donor ${donor.path} has no tensor "${n}"`);
          return [n, { shape: f.info(n).shape, data: toFloat32(f.readBytes(n), f.info(n).dtype) }];
        }),
      );
    } finally {
      f.close();
    }
  }
  const r = new CheckpointReader(donor.path);
  try {
    return new Map(names.map((n) => [n, r.read(n)]));
  } finally {
    r.close();
  }
}

export function buildMerge(engine: Engine, spec: MergeOverlaySpec): TensorOverlay {
  const tensors = new Map<string, Tensor>();
  for (const e of spec.entries) {
    for (const [name, t] of readDonor(e.donor, e.names)) {
      const want = engine.shapes.get(name)!;
      if (t.shape.join() !== want.join()) throw new Error(`the donor's "${name}" has shape [${t.shape}], the backbone's is [${want}]`);
      const b = engine.toGraph(name, t);
      if (e.alpha === 1) {
        tensors.set(name, b);
        continue;
      }
      const a = engine.graphWeight(name);
      const mixed = new Float32Array(a.length);
      for (let i = 0; i < a.length; i++) mixed[i] = (1 - e.alpha) * a[i] + e.alpha * b.data[i];
      tensors.set(name, { shape: want, data: mixed, layout: 'graph' });
    }
  }
  return tensorOverlay(tensors, spec.id);
}

const zeros = new Map<number, Float32Array>();

export function buildDestroy(engine: Engine, spec: DestroyOverlaySpec): (TensorOverlay | GateOverlay)[] {
  const tensors = new Map<string, Tensor>();
  const gates = new Map<number, number>();
  for (const e of spec.entries) {
    if (e.method === 'remove') {
      for (const l of e.layers) gates.set(l, 0);
      continue;
    }
    for (const name of e.names) {
      const shape = engine.shapes.get(name)!;
      const n = shape.reduce((a, b) => a * b, 1);
      if (e.method === 'zero') {
        // One zero buffer per size, shared by every Zero overlay: nothing is copied per view.
        let z = zeros.get(n);
        if (!z) zeros.set(n, (z = new Float32Array(n)));
        tensors.set(name, { shape, data: z, layout: 'graph' });
      } else tensors.set(name, engine.toGraph(name, { shape, data: reinitTensor(name, shape, e.seed) }));
    }
  }
  const out: (TensorOverlay | GateOverlay)[] = [];
  if (tensors.size) out.push(tensorOverlay(tensors, `${spec.id}:tensors`));
  if (gates.size) out.push({ type: 'gates', id: `${spec.id}:gates`, gates });
  return out;
}
