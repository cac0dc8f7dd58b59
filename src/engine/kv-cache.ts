/**
 * The KV cache, owned by the engine in JS memory and fed to every run as graph inputs (wrapped, not
 * copied). Each run returns only the new rows' keys and values, which are appended here, so a generated
 * token costs O(new rows), never a copy of the whole cache. Capacity grows in steps; only a growth copies.
 *
 * Layout per layer: keys [B, kvH, C, D], values transposed [B, kvH, D, C] (the graph multiplies by both as
 * transposed right operands; see graph.ts).
 */
import type { ModelSpec } from '../model/config.ts';
import { MASKED } from './graph.ts';

export class KvCache {
  readonly keys: Float32Array[] = [];
  readonly values: Float32Array[] = [];
  /** Tokens held per batch row. */
  readonly lengths: number[];
  capacity: number;
  private readonly kvH: number;
  private readonly D: number;

  readonly batch: number;
  readonly step: number;
  constructor(spec: ModelSpec, batch: number = 1, initialCapacity = 64, step: number = 256) {
    this.batch = batch;
    this.step = step;
    this.kvH = spec.numKvHeads;
    this.D = spec.headDim;
    this.lengths = new Array(batch).fill(0);
    this.capacity = Math.max(1, initialCapacity);
    for (let l = 0; l < spec.numLayers; l++) {
      this.keys.push(new Float32Array(batch * this.kvH * this.D * this.capacity));
      this.values.push(new Float32Array(batch * this.kvH * this.D * this.capacity));
    }
  }

  get maxLength(): number {
    return Math.max(...this.lengths);
  }

  /** Grows every layer's buffers so that `extra` more tokens fit in every row. */
  reserve(extra: number): void {
    const need = this.maxLength + extra;
    if (need <= this.capacity) return;
    const cap = Math.ceil(need / this.step) * this.step;
    const { batch: B, kvH, D, capacity: oldCap } = this;
    // Keys: each (row, head) block of C x D positions moves whole; values: each (row, head, dim) line of C.
    const grow = (old: Float32Array, lines: number, lineOld: number, lineNew: number) => {
      const buf = new Float32Array(B * kvH * D * cap);
      for (let r = 0; r < lines; r++) buf.set(old.subarray(r * lineOld, (r + 1) * lineOld), r * lineNew);
      return buf;
    };
    for (let l = 0; l < this.keys.length; l++) {
      this.keys[l] = grow(this.keys[l], B * kvH, oldCap * D, cap * D);
      this.values[l] = grow(this.values[l], B * kvH * D, oldCap, cap);
    }
    this.capacity = cap;
  }

  /**
   * Appends the first counts[b] of S new rows of each batch row, for one layer. keyNew is [B,kvH,S,D] and
   * valueNew [B,kvH,D,S], as the graph outputs them. Call `advance` once all layers are appended.
   */
  append(layer: number, keyNew: Float32Array, valueNew: Float32Array, S: number, counts: number[], first = 0): void {
    const { kvH, D, capacity: C } = this;
    const K = this.keys[layer];
    const V = this.values[layer];
    for (let i = 0; i < counts.length; i++) {
      const n = counts[i];
      const b = first + i;
      if (n === 0) continue;
      const t = this.lengths[b];
      if (t + n > C) throw new Error('KV cache overflow: reserve() before running');
      for (let h = 0; h < kvH; h++) {
        const bh = b * kvH + h;
        const oh = i * kvH + h; // row in the run's outputs
        K.set(keyNew.subarray(oh * S * D, (oh * S + n) * D), (bh * C + t) * D);
        for (let d = 0; d < D; d++) {
          const src = (oh * D + d) * S;
          const dst = (bh * D + d) * C + t;
          for (let s = 0; s < n; s++) V[dst + s] = valueNew[src + s];
        }
      }
    }
  }

  advance(counts: number[], first = 0): void {
    for (let i = 0; i < counts.length; i++) this.lengths[first + i] += counts[i];
  }

  /** Additive mask over the cache for rows [first, first+count): 0 for held positions, MASKED beyond. [n,1,1,C]. */
  pastMask(first = 0, count = this.batch): Float32Array {
    const C = this.capacity;
    const m = new Float32Array(count * C).fill(MASKED);
    for (let i = 0; i < count; i++) m.fill(0, i * C, i * C + this.lengths[first + i]);
    return m;
  }

  /** Rows [first, first+count) of a layer's buffers, without a copy (rows are contiguous). */
  rows(layer: number, first: number, count: number): { keys: Float32Array; values: Float32Array } {
    const per = this.kvH * this.D * this.capacity;
    return { keys: this.keys[layer].subarray(first * per, (first + count) * per), values: this.values[layer].subarray(first * per, (first + count) * per) };
  }

  /** Moves a row's tokens into another row (keeps a batch's live rows contiguous when one finishes). */
  moveRow(from: number, to: number): void {
    if (from === to) return;
    const per = this.kvH * this.D * this.capacity;
    for (let l = 0; l < this.keys.length; l++) {
      this.keys[l].copyWithin(to * per, from * per, (from + 1) * per);
      this.values[l].copyWithin(to * per, from * per, (from + 1) * per);
    }
    this.lengths[to] = this.lengths[from];
    this.lengths[from] = 0;
  }

  /**
   * Copies the first `length` tokens of row `srcRow` of `src` (this cache or another of the same model) into row
   * `dstRow`, which then holds exactly them. Call `reserve` first.
   */
  copyPrefix(src: KvCache, srcRow: number, dstRow: number, length: number): void {
    const { kvH, D, capacity: C } = this;
    const S = src.capacity;
    if (length > src.lengths[srcRow]) throw new RangeError(`row ${srcRow} holds ${src.lengths[srcRow]} tokens, not ${length}`);
    if (length > C) throw new Error('KV cache overflow: reserve() before copying');
    for (let l = 0; l < this.keys.length; l++) {
      for (let h = 0; h < kvH; h++) {
        const from = srcRow * kvH + h;
        const to = dstRow * kvH + h;
        this.keys[l].set(src.keys[l].subarray(from * S * D, (from * S + length) * D), to * C * D);
        for (let d = 0; d < D; d++) this.values[l].set(src.values[l].subarray((from * D + d) * S, (from * D + d) * S + length), (to * D + d) * C);
      }
    }
    this.lengths[dstRow] = length;
  }

  /** Forgets a row's tokens (the buffers are reused by the next sequence in that row). */
  reset(row: number): void {
    this.lengths[row] = 0;
  }

  /** Drops the last `n` tokens of a row (e.g. to re-run a prompt's final token). */
  truncate(row: number, length: number): void {
    if (length < 0 || length > this.lengths[row]) throw new RangeError(`cannot truncate row ${row} of ${this.lengths[row]} tokens to ${length}`);
    this.lengths[row] = length;
  }

  get bytes(): number {
    return this.keys.reduce((a, k) => a + k.byteLength, 0) * 2;
  }
}
