/**
 * The destruction sweep: every module kind x layer window destroyed in turn (Zero, ReInit, or Remove of whole
 * layers), each scored by how far its next-token distributions on a reference text move from the intact model's
 * (mean KL(intact || destroyed), in nats). The heatmap says where along the depth each kind matters.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EngineClient } from './engine-client.ts';
import { renderSvg, sweepSpec } from './plots.ts';

export type SweepMethod = 'zero' | 'reinit' | 'remove';

export interface SweepSettings {
  method: SweepMethod;
  /** Module kinds, the heatmap's rows; Remove has one row, `layers`. */
  modules: string[];
  window: number;
  /** Windows start every `stride` layers (default: `window`, no overlap). */
  stride?: number;
  seed: number;
}

export interface SweepCell {
  module: string;
  layers: string;
  start: number;
  kl: number;
}

export interface SweepResult {
  method: SweepMethod;
  window: number;
  stride: number;
  tokens: number;
  score: string;
  cells: SweepCell[];
}

/** One destroyed view of the grid: the destroy spec (the API's JSON) of one row and window. */
export interface SweepCellSpec {
  row: string;
  window: [number, number];
  destroy: { method: SweepMethod; modules: string[]; layers: string; seed: number }[];
}

/** The grid's rows x windows, as destroy specs the caller resolves into views (a bad one fails before any work). */
export function sweepGrid(numLayers: number, s: SweepSettings): SweepCellSpec[][] {
  const stride = s.stride ?? s.window;
  const windows: [number, number][] = [];
  for (let a = 0; a < numLayers; a += stride) windows.push([a, Math.min(numLayers - 1, a + s.window - 1)]);
  const rows = s.method === 'remove' ? ['layers'] : s.modules;
  if (!rows.length) throw new RangeError('name the module kinds to sweep');
  return rows.map((row) =>
    windows.map(([a, b]) => ({ row, window: [a, b] as [number, number], destroy: [{ method: s.method, modules: s.method === 'remove' ? [] : [row], layers: `${a}-${b}`, seed: s.seed }] })),
  );
}

/** Scores every cell of `grid` (views built from sweepGrid's specs, row by row) against `intact` on `ids`. */
export async function destructionSweep<V>(
  client: EngineClient<V>,
  ids: number[],
  intact: V,
  specs: SweepCellSpec[][],
  grid: V[][],
  s: SweepSettings,
  progress: (done: number, total: number, message: string) => void = () => {},
): Promise<SweepResult> {
  const cells: SweepCell[] = [];
  for (let r = 0; r < specs.length; r++) {
    const kls = await client.kl(ids, intact, grid[r]);
    kls.forEach((kl, w) => {
      const [a, b] = specs[r][w].window;
      cells.push({ module: specs[r][w].row, layers: `${a}-${b}`, start: a, kl });
    });
    progress(r + 1, specs.length, specs[r][0].row);
  }
  return { method: s.method, window: s.window, stride: s.stride ?? s.window, tokens: ids.length, score: 'mean KL(intact || destroyed), nats', cells };
}

/** sweep.json and the heatmap, sweep.svg. */
export async function writeSweep(result: SweepResult, dir: string): Promise<string[]> {
  writeFileSync(join(dir, 'sweep.json'), JSON.stringify(result, null, 1));
  writeFileSync(join(dir, 'sweep.svg'), await renderSvg(sweepSpec(result)));
  return ['sweep.json', 'sweep.svg'];
}
