/**
 * Loads the tensors behind overlay specs (safetensors files of HF-named replacement tensors: plugins,
 * saved merges) into a byte-bounded LRU cache, and builds views from specs. Eviction only drops the cache's
 * reference: a view built earlier holds its tensors until its requests finish.
 */
import { LRUCache } from 'lru-cache';
import type { Engine } from '../engine/engine.ts';
import { FLOAT_DTYPES, toFloat32 } from '../model/dtype.ts';
import { SafetensorsFile } from '../model/safetensors.ts';
import { tensorOverlay, type Tensor, type TensorOverlay, type View } from './view.ts';

export interface FileOverlaySpec {
  type: 'file';
  /** Content id (a plugin's sha256): equal ids must mean equal tensors. */
  id: string;
  path: string;
}

export type OverlaySpec = FileOverlaySpec;

export interface OverlayStats {
  hits: number;
  misses: number;
  evictions: number;
  bytes: number;
  entries: number;
  loadSeconds: number;
  loadedBytes: number;
}

/** Reads a safetensors file of replacement tensors as float32. */
export function readTensorFile(path: string): Map<string, Tensor> {
  const f = SafetensorsFile.open(path);
  try {
    const out = new Map<string, Tensor>();
    for (const name of f.names) {
      const info = f.info(name);
      if (!(FLOAT_DTYPES as readonly string[]).includes(info.dtype)) throw new Error(`${path}: "${name}" has dtype ${info.dtype}`);
      out.set(name, { shape: info.shape, data: toFloat32(f.readBytes(name), info.dtype) });
    }
    return out;
  } finally {
    f.close();
  }
}

export class OverlayLoader {
  private readonly cache: LRUCache<string, TensorOverlay>;
  private counters = { hits: 0, misses: 0, evictions: 0, loadSeconds: 0, loadedBytes: 0 };

  constructor(
    private readonly engine: Engine,
    maxBytes: number,
  ) {
    this.cache = new LRUCache<string, TensorOverlay>({
      maxSize: Math.max(1, maxBytes),
      sizeCalculation: (o) => Math.max(1, [...o.tensors.values()].reduce((a, t) => a + t.data.byteLength, 0)),
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') this.counters.evictions++;
      },
    });
  }

  overlay(spec: OverlaySpec): TensorOverlay {
    const hit = this.cache.get(spec.id);
    if (hit) {
      this.counters.hits++;
      return hit;
    }
    this.counters.misses++;
    const t0 = performance.now();
    const tensors = new Map([...readTensorFile(spec.path)].map(([n, t]) => [n, this.engine.toGraph(n, t)]));
    const o = tensorOverlay(tensors, spec.id);
    this.counters.loadSeconds += (performance.now() - t0) / 1000;
    this.counters.loadedBytes += [...tensors.values()].reduce((a, t) => a + t.data.byteLength, 0);
    this.cache.set(spec.id, o);
    return o;
  }

  view(spec: { overlays: OverlaySpec[] }): View {
    let v = this.engine.baseView;
    for (const o of spec.overlays) v = v.with(this.overlay(o));
    return v;
  }

  stats(): OverlayStats {
    return { ...this.counters, bytes: this.cache.calculatedSize, entries: this.cache.size };
  }
}
