/**
 * HF layout -> graph layout. Hugging Face stores a linear weight as [out, in]; the graph multiplies x by
 * [in, out] (onnxruntime's MatMul has no transB). The head is the exception: it stays [vocab, hidden] and the
 * graph computes (W x^T)^T, because a non-constant [hidden, vocab] right operand is repacked on every run
 * with more than one row (docs/benchmarks.md#design-measurements). o_proj stays [out, in] too and is computed the same way: it is a graph input (swappable)
 * and a run with plugin slots multiplies by up to four of them, each of which would otherwise be repacked.
 * The embedding is [vocab, hidden] as in HF, so a tied model holds its matrix once.
 */
import type { ModelSpec } from '../model/config.ts';
import { toFloat32Transposed } from '../model/dtype.ts';
import { LINEAR_KINDS, parseName } from '../model/names.ts';

/** Whether `name`'s graph layout is the transpose of its HF layout. */
export function isTransposed(_spec: ModelSpec, name: string): boolean {
  const p = parseName(name);
  if (p?.param !== 'weight') return false;
  return LINEAR_KINDS.has(p.kind) && p.kind !== 'lm_head' && p.kind !== 'o_proj';
}

export function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  return toFloat32Transposed(new Uint8Array(src.buffer, src.byteOffset, src.byteLength), 'F32', rows, cols);
}

/** Graph-layout data for a parameter given in HF layout with HF shape. */
export function toGraphLayout(spec: ModelSpec, name: string, data: Float32Array, hfShape: number[]): Float32Array {
  if (!isTransposed(spec, name)) return data;
  return transpose2d(data, hfShape[0], hfShape[1]);
}

/** HF-layout data for a parameter held in graph layout (for export and comparison tools). */
export function toHfLayout(spec: ModelSpec, name: string, data: Float32Array, hfShape: number[]): Float32Array {
  if (!isTransposed(spec, name)) return data;
  return transpose2d(data, hfShape[1], hfShape[0]);
}

export function graphShape(spec: ModelSpec, name: string, hfShape: number[]): number[] {
  return isTransposed(spec, name) ? [hfShape[1], hfShape[0]] : hfShape;
}

/** Views per run on the serving session: rows of up to this many views (differing in o_proj/norms) share a run. */
export const PLUGIN_SLOTS = 4;
