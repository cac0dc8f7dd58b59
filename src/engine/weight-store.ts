/**
 * The backbone's weights in graph layout, as the engine reads them. Once the serving session is built,
 * onnxruntime holds its own prepacked copy of every frozen weight (q/k/v, the MLP), so the JS copy is dropped
 * (1.4 GB at 0.5B) and read back from the checkpoint when something needs it: an alpha merge, an export, the
 * research session. The checkpoint's files are opened before the load reads them and kept open, so a re-read
 * sees the bytes that were loaded even if the files are replaced on disk meanwhile.
 */
import type { CheckpointReader } from '../model/checkpoint.ts';
import type { ModelSpec } from '../model/config.ts';
import type { Dtype } from '../model/safetensors.ts';
import { toFloat32, toFloat32Transposed } from '../model/dtype.ts';
import { isTransposed } from './layout.ts';
import { releaseBuffers } from '../util/release.ts';

/** A checkpoint tensor decoded to float32 in graph layout (transposed where the graph multiplies from the right). */
export function decodeWeight(spec: ModelSpec, name: string, bytes: Uint8Array, dtype: Dtype, shape: number[]): Float32Array {
  if (isTransposed(spec, name)) return toFloat32Transposed(bytes, dtype, shape[0], shape[1]);
  return dtype === 'F32' ? new Float32Array(bytes.slice().buffer) : toFloat32(bytes, dtype);
}

/** Rows `ids` of a [rows, width] matrix into `out`, one after another. */
export function gatherRows(src: Float32Array, ids: ArrayLike<number>, width: number, out: Float32Array): void {
  for (let i = 0; i < ids.length; i++) out.set(src.subarray(ids[i] * width, (ids[i] + 1) * width), i * width);
}

export class WeightStore {
  /** The weights held in JS (all of them until `drop`); shared with the sessions' feeds. */
  readonly held: Map<string, Float32Array>;
  private readonly spec: ModelSpec;
  private readonly reader: CheckpointReader | null;
  private readonly dropped = new Set<string>();

  constructor(spec: ModelSpec, held: Map<string, Float32Array>, reader: CheckpointReader | null) {
    this.spec = spec;
    this.held = held;
    this.reader = reader;
  }

  /** A weight in graph layout: the held copy, or one read back from the checkpoint (not kept). */
  get(name: string): Float32Array | undefined {
    const w = this.held.get(name);
    if (w || !this.dropped.has(name)) return w;
    const { bytes, dtype, shape } = this.reader!.raw(name);
    return decodeWeight(this.spec, name, bytes, dtype, shape);
  }

  /**
   * Rows `ids` of a [rows, width] weight (the embedding) into `out`, one after another: from the held copy, or
   * read from the checkpoint when it was dropped (a few rows per run, never the whole matrix).
   */
  rows(name: string, ids: ArrayLike<number>, width: number, out: Float32Array): void {
    const w = this.held.get(name);
    if (w) gatherRows(w, ids, width, out);
    else for (let i = 0; i < ids.length; i++) this.reader!.readRange(name, ids[i] * width, out.subarray(i * width, (i + 1) * width));
  }

  /**
   * Lets go of these weights' JS copies, or marks them as never read (only with a checkpoint to read them back
   * from), freeing them at once:
   * nothing else may still hold them (onnxruntime copied them when it built its session).
   */
  drop(names: Iterable<string>): void {
    if (!this.reader) return;
    const freed: Float32Array[] = [];
    for (const n of names) {
      // One never decoded (a load whose session came from the cache) is read back the same way.
      this.dropped.add(n);
      const w = this.held.get(n);
      if (!w) continue;
      this.held.delete(n);
      freed.push(w);
    }
    releaseBuffers(freed);
  }

  /** Reads every dropped weight back and holds it again (the research session feeds them all, every run). */
  restore(): void {
    for (const n of this.dropped) this.held.set(n, this.get(n)!);
    this.dropped.clear();
  }

  /** Bytes of float32 weights held in JS. */
  get heldBytes(): number {
    let b = 0;
    for (const w of this.held.values()) b += w.byteLength;
    return b;
  }

  close(): void {
    this.reader?.close();
  }
}
