/**
 * The import layers of src/, lowest first: util <- model <- engine <- views <- plugins, stethoscope <- runtime
 * (the engine's thread: worker, host, protocol) <- server <- cli (whose `serve` command starts the server). A
 * module imports only from its own layer or below, plugins and stethoscope do not import each other, and no
 * import cycle exists between files.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { describe, it } from 'node:test';
import { ROOT } from '../helpers/fixtures.ts';

const SRC = join(ROOT, 'src');
const RANK: Record<string, number> = { util: 0, model: 1, engine: 2, views: 3, plugins: 4, stethoscope: 4, runtime: 5, server: 6, cli: 7 };

/** The layer of a file under src/ (`cli.ts` belongs to cli). */
const layerOf = (file: string) => (file === 'cli.ts' ? 'cli' : file.split('/')[0]);

/** Every relative import (static, re-export or dynamic) of every .ts file under src/, as edges between files. */
export function importEdges(): [string, string][] {
  const files = (readdirSync(SRC, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts'));
  const edges: [string, string][] = [];
  for (const f of files) {
    const text = readFileSync(join(SRC, f), 'utf8');
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) edges.push([f, normalize(join(dirname(f), m[1]))]);
  }
  return edges.map(([a, b]) => [a, relative('.', b)]);
}

/** Imports that break the layer rule. */
export function layerViolations(edges: [string, string][]): string[] {
  return edges
    .filter(([a, b]) => {
      const [la, lb] = [layerOf(a), layerOf(b)];
      if (!(la in RANK) || !(lb in RANK)) return true;
      if (RANK[lb] > RANK[la]) return true;
      return la !== lb && RANK[la] === RANK[lb];
    })
    .map(([a, b]) => `${a} -> ${b}`);
}

/** Files on an import cycle (Tarjan's strongly connected components of more than one file, or a self-import). */
export function cycles(edges: [string, string][]): string[][] {
  const graph = new Map<string, string[]>();
  for (const [a, b] of edges) graph.set(a, [...(graph.get(a) ?? []), b]);
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) visit(w), low.set(v, Math.min(low.get(v)!, low.get(w)!));
      else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      let w: string;
      do (w = stack.pop()!), on.delete(w), scc.push(w);
      while (w !== v);
      if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return out;
}

describe('architecture', () => {
  const edges = importEdges();
  it('keeps every import within its layer or below', () => assert.deepEqual(layerViolations(edges), []));
  it('has no import cycle', () => assert.deepEqual(cycles(edges), []));
  it('catches a planted upward import, a sideways one and a cycle', () => {
    assert.deepEqual(
      layerViolations([
        ['model/config.ts', 'engine/graph.ts'],
        ['server/serve.ts', 'cli/common.ts'],
        ['stethoscope/delta.ts', 'plugins/store.ts'],
        ['engine/graph.ts', 'model/config.ts'],
      ]),
      ['model/config.ts -> engine/graph.ts', 'server/serve.ts -> cli/common.ts', 'stethoscope/delta.ts -> plugins/store.ts'],
    );
    assert.deepEqual(
      cycles([
        ['a.ts', 'b.ts'],
        ['b.ts', 'c.ts'],
        ['c.ts', 'a.ts'],
        ['c.ts', 'd.ts'],
      ]),
      [['a.ts', 'b.ts', 'c.ts']],
    );
  });
  it('sees the imports it checks', () => {
    assert.ok(edges.length > 100);
    assert.ok(edges.some(([a, b]) => a === 'server/serve.ts' && b === 'runtime/host.ts'));
  });
});
