/**
 * Loads the tensors behind overlay specs (safetensors files of HF-named replacement tensors: plugins,
 * saved merges) into a byte-bounded LRU cache, and builds views from specs. Eviction only drops the cache's
 * reference: a view built earlier holds its tensors until its requests finish.
 */
import { LRUCache } from 'lru-cache';
import type { Engine } from '../engine/engine.ts';
import { FLOAT_DTYPES, toFloat32 } from '../model/dtype.ts';
import { SafetensorsFile } from '../model/safetensors.ts';
import { buildDestroy, buildMerge, type DestroyOverlaySpec, type MergeOverlaySpec } from './build.ts';
import { tensorOverlay, type Overlay, type Tensor, type View } from '../engine/view.ts';

export interface FileOverlaySpec {
  type: 'file';
  /** Content id (a plugin's sha256): equal ids must mean equal tensors. */
  id: string;
  path: string;
}

export type OverlaySpec = FileOverlaySpec | MergeOverlaySpec | DestroyOverlaySpec;

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
  private readonly cache: LRUCache<string, Overlay[]>;
  private counters = { hits: 0, misses: 0, evictions: 0, loadSeconds: 0, loadedBytes: 0 };

  private readonly engine: Engine;
  constructor(engine: Engine, maxBytes: number) {
    this.engine = engine;
    this.cache = new LRUCache<string, Overlay[]>({
      maxSize: Math.max(1, maxBytes),
      sizeCalculation: (os) =>
        Math.max(
          1,
          os.reduce((a, o) => a + (o.type === 'tensors' ? [...o.tensors.values()].reduce((b, t) => b + t.data.byteLength, 0) : 0), 0),
        ),
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') this.counters.evictions++;
      },
    });
  }

  /** The overlays a spec stands for, loaded or built on first use and cached by id. */
  overlays(spec: OverlaySpec): Overlay[] {
    const key = `${spec.type}:${spec.id}`;
    const hit = this.cache.get(key);
    if (hit) {
      this.counters.hits++;
      return hit;
    }
    this.counters.misses++;
    const t0 = performance.now();
    let os: Overlay[];
    if (spec.type === 'file') {
      const tensors = new Map([...readTensorFile(spec.path)].map(([n, t]) => [n, this.engine.toGraph(n, t)]));
      this.counters.loadedBytes += [...tensors.values()].reduce((a, t) => a + t.data.byteLength, 0);
      os = [tensorOverlay(tensors, spec.id)];
    } else if (spec.type === 'merge') os = [buildMerge(this.engine, spec)];
    else os = buildDestroy(this.engine, spec);
    this.counters.loadSeconds += (performance.now() - t0) / 1000;
    this.cache.set(key, os);
    return os;
  }

  view(spec: { overlays: OverlaySpec[] }): View {
    let v = this.engine.baseView;
    for (const s of spec.overlays) for (const o of this.overlays(s)) v = v.with(o);
    return v;
  }

  stats(): OverlayStats {
    return { ...this.counters, bytes: this.cache.calculatedSize, entries: this.cache.size };
  }
}
