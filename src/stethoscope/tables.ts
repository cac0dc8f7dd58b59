/**
 * The paper's tables as jobs.
 *
 * Table 3 (destruction): for every method x module kind, the level I-IV of each prompt's greedy output with that
 * module destroyed over a layer range; `remove` has one row, since it removes whole layers.
 * Table 1 (merges): A, B and merges of them (M1 = o_proj, M2 = q,k,v, M3 = the MLP, or any list of merge specs)
 * over one evaluation set: accuracy, average generated tokens, and levels.
 *
 * Both are written as JSON, CSV and Markdown in the paper's layout (the destruction table also as an SVG).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { ModelSpec } from '../model/config.ts';
import { MODULE_KINDS } from '../model/names.ts';
import type { ModelTokenizer } from '../engine/tokenizer.ts';
import { runEval, type EvalItem, type EvalSettings, type EvalSummary } from './eval.ts';
import type { EngineClient } from './engine-client.ts';
import type { Level, LevelThresholds } from './levels.ts';
import { renderSvg } from './plots.ts';
import { probeIds, probeOne, ProbePrompt, type JudgedOutput, type ScorerChoice } from './probe.ts';
import { type DestroySpec, MergeSpec, Seed } from '../views/spec.ts';

// ---------------------------------------------------------------- Table 3: destruction

const METHOD_NAMES = { zero: 'Zero', reinit: 'ReInit', remove: 'Remove' } as const;

export const DestructionTableSpec = z.strictObject({
  methods: z
    .array(z.enum(['zero', 'reinit', 'remove']))
    .min(1)
    .default(['zero', 'reinit', 'remove']),
  modules: z
    .array(z.enum(MODULE_KINDS as unknown as [string, ...string[]]))
    .min(1)
    .describe('Module kinds: the columns (remove ignores them).'),
  layers: z.string().describe('The layer range destroyed, e.g. "5-30".'),
  prompts: z.array(ProbePrompt).min(1).max(64),
  seed: Seed.default(0).describe('ReInit seed.'),
});
export type DestructionTableSpec = z.infer<typeof DestructionTableSpec>;

export interface DestructionRow {
  method: 'zero' | 'reinit' | 'remove';
  /** The module kind destroyed; null for remove (whole layers). */
  module: string | null;
  destroy: DestroySpec;
}

/** The rows of the table, each with the destroy spec that produces it (to be resolved into a view). */
export function destructionRows(t: DestructionTableSpec): DestructionRow[] {
  const rows: DestructionRow[] = [];
  for (const method of t.methods) {
    if (method === 'remove') rows.push({ method, module: null, destroy: [{ method, modules: [], layers: t.layers, seed: 0 }] });
    else for (const module of t.modules) rows.push({ method, module, destroy: [{ method, modules: [module], layers: t.layers, seed: t.seed }] });
  }
  return rows;
}

export interface DestructionTable {
  layers: string;
  scorer: ScorerChoice;
  prompts: { prompt: string; answer: string | null }[];
  intact: JudgedOutput[];
  rows: { method: string; module: string | null; outputs: JudgedOutput[] }[];
}

export async function destructionTable<V>(
  client: EngineClient<V>,
  tok: ModelTokenizer,
  t: DestructionTableSpec,
  views: { intact: V; rows: V[] },
  opts: { maxTokens: number; thresholds: LevelThresholds; scorer: ScorerChoice; progress?: (done: number, total: number, message: string) => void },
): Promise<DestructionTable> {
  const rows = destructionRows(t);
  const ids = t.prompts.map((p, i) => probeIds(tok, p, `table.prompts.${i}`));
  const total = (rows.length + 1) * t.prompts.length;
  let done = 0;
  const run = (view: V, label: string) =>
    Promise.all(
      t.prompts.map(async (p, i) => {
        const out = await probeOne(client, tok, view, opts.scorer === 'view' ? view : views.intact, ids[i], p.answer, opts.maxTokens, opts.thresholds);
        opts.progress?.(++done, total, `${label}, prompt ${i}`);
        return out;
      }),
    );
  // Every row at once: their sequences share decode steps in the scheduler.
  const [intact, ...outputs] = await Promise.all([run(views.intact, 'intact'), ...rows.map((r, k) => run(views.rows[k], `${r.method} ${r.module ?? 'layers'}`))]);
  return {
    layers: t.layers,
    scorer: opts.scorer,
    prompts: t.prompts.map((p) => ({ prompt: p.prompt ?? JSON.stringify(p.messages), answer: p.answer ?? null })),
    intact,
    rows: rows.map((r, k) => ({ method: r.method, module: r.module, outputs: outputs[k] })),
  };
}

const levelsOf = (outs: { level: Level }[]) => outs.map((o) => o.level).join(' ');
const LEVEL_VALUE: Record<Level, number> = { I: 1, II: 2, III: 3, IV: 4 };

/** Markdown in the paper's layout: methods as rows, module kinds as columns, each cell the prompts' levels. */
export function destructionMarkdown(r: DestructionTable): string {
  const modules = [...new Set(r.rows.filter((x) => x.module !== null).map((x) => x.module!))];
  const cols = modules.length ? modules : ['(whole layers)'];
  const lines = [
    `Destruction of layers ${r.layers}. Each cell: the level (I nonsense, II irrelevant, III context-aware, IV correct) of prompts 1-${r.prompts.length}; intact: ${levelsOf(r.intact)}.`,
    '',
    `| Method | ${cols.join(' | ')} |`,
    `|---|${cols.map(() => '---').join('|')}|`,
  ];
  for (const method of [...new Set(r.rows.map((x) => x.method))]) {
    const rows = r.rows.filter((x) => x.method === method);
    const cells =
      rows[0].module === null ? cols.map((_, i) => (i === 0 ? `${levelsOf(rows[0].outputs)} (whole layers)` : '')) : cols.map((c) => levelsOf(rows.find((x) => x.module === c)?.outputs ?? []));
    lines.push(`| ${METHOD_NAMES[method as keyof typeof METHOD_NAMES]} | ${cells.join(' | ')} |`);
  }
  return lines.join('\n') + '\n';
}

const csvField = (v: unknown) => {
  const s = v === null || v === undefined ? '' : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};
const csv = (rows: unknown[][]) => rows.map((r) => r.map(csvField).join(',')).join('\n') + '\n';

export function destructionCsv(r: DestructionTable): string {
  const out: unknown[][] = [['method', 'module', 'layers', 'prompt', 'level', 'reason', 'text']];
  r.intact.forEach((o, i) => out.push(['intact', '', '', i, o.level, o.reason, o.text]));
  for (const row of r.rows) row.outputs.forEach((o, i) => out.push([row.method, row.module ?? '', r.layers, i, o.level, o.reason, o.text]));
  return csv(out);
}

export async function writeDestructionTable(r: DestructionTable, dir: string): Promise<string[]> {
  writeFileSync(join(dir, 'table.json'), JSON.stringify(r, null, 1));
  writeFileSync(join(dir, 'table.csv'), destructionCsv(r));
  writeFileSync(join(dir, 'table.md'), destructionMarkdown(r));
  const values = r.rows.map((row) => ({
    method: METHOD_NAMES[row.method as keyof typeof METHOD_NAMES],
    module: row.module ?? 'whole layers',
    mean: row.outputs.reduce((a, o) => a + LEVEL_VALUE[o.level], 0) / row.outputs.length,
    levels: levelsOf(row.outputs),
  }));
  const svg = await renderSvg({
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: `Destruction of layers ${r.layers}: output levels`, subtitle: `intact: ${levelsOf(r.intact)}; colour: mean level (1 = I nonsense ... 4 = IV correct)` },
    data: { values },
    encoding: { x: { field: 'module', type: 'nominal', title: 'module', sort: null }, y: { field: 'method', type: 'nominal', title: 'method', sort: null } },
    layer: [
      { mark: 'rect', encoding: { color: { field: 'mean', type: 'quantitative', scale: { domain: [1, 4], scheme: 'redyellowgreen' }, title: 'mean level' } } },
      { mark: { type: 'text', fontSize: 11 }, encoding: { text: { field: 'levels', type: 'nominal' } } },
    ],
    width: { step: 90 },
    height: { step: 36 },
  } as never);
  writeFileSync(join(dir, 'table.svg'), svg);
  return ['table.json', 'table.csv', 'table.md', 'table.svg'];
}

// ---------------------------------------------------------------- Table 1: merges

export const MergeTableSpec = z
  .strictObject({
    from: z.string().min(1).optional().describe('The fine-tune B (a plugin id, registered checkpoint or directory): rows A, B, M1, M2, M3.'),
    rows: z
      .array(z.strictObject({ name: z.string().min(1).max(64), merge: MergeSpec.optional() }))
      .min(1)
      .max(32)
      .optional()
      .describe('Or any list of rows: a name and a merge spec (none: the backbone itself).'),
  })
  .refine((t) => (t.from === undefined) !== (t.rows === undefined), { message: 'give exactly one of "from" and "rows"' });
export type MergeTableSpec = z.infer<typeof MergeTableSpec>;

export interface MergeRow {
  name: string;
  merge?: MergeSpec;
}

/** The paper's rows: A, B (every module from B, i.e. B itself), and the merges M1, M2, M3 of B into A. */
export function mergeRows(t: MergeTableSpec, spec: ModelSpec): MergeRow[] {
  if (t.rows) return t.rows;
  const from = t.from!;
  // Every kind, all layers: the view is B's weights exactly (a tied head comes with the embedding).
  const all = MODULE_KINDS.filter((k) => !(spec.tieWordEmbeddings && k === 'lm_head'));
  return [
    { name: 'A' },
    { name: 'B', merge: [{ modules: [...all], layers: 'all', from, alpha: 1 }] },
    ...(['M1', 'M2', 'M3'] as const).map((m) => ({ name: m, merge: [{ modules: [m], layers: 'all', from, alpha: 1 }] })),
  ];
}

export interface MergeTable {
  rows: ({ name: string; merge: MergeSpec | null } & EvalSummary)[];
}

export async function mergeTable<V>(
  client: EngineClient<V>,
  tok: ModelTokenizer,
  items: EvalItem[],
  rows: { row: MergeRow; view: V; scorer: V }[],
  settings: EvalSettings,
  progress?: (done: number, total: number, message: string) => void,
): Promise<{ table: MergeTable; results: Record<string, unknown>[] }> {
  const total = rows.length * items.length;
  let done = 0;
  const runs = await Promise.all(
    rows.map(({ row, view, scorer }) => runEval(items, tok, client, { run: view, scorer }, settings, (_d, _t, last) => progress?.(++done, total, `${row.name}: ${last.id}`))),
  );
  return {
    table: { rows: rows.map(({ row }, k) => ({ name: row.name, merge: row.merge ?? null, ...runs[k].summary })) },
    results: rows.flatMap(({ row }, k) => runs[k].results.map((r) => ({ row: row.name, ...r }))),
  };
}

/** Table 1's columns: accuracy and average generated tokens, then the level counts when scored. */
export function mergeMarkdown(t: MergeTable): string {
  const withLevels = t.rows.some((r) => r.levels);
  const head = ['Model', 'Merge', 'Accuracy', 'Avg. tokens', ...(withLevels ? ['I', 'II', 'III', 'IV'] : [])];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of t.rows) {
    const merge = r.merge ? r.merge.map((e) => `${e.modules.length > 3 ? 'all modules' : e.modules.join(',')} (${e.layers}) from ${e.from}${e.alpha !== 1 ? ` a=${e.alpha}` : ''}`).join('; ') : '-';
    const cells = [
      r.name,
      merge,
      `${(r.accuracy * 100).toFixed(1)}%`,
      r.avg_generated_tokens.toFixed(1),
      ...(withLevels ? (['I', 'II', 'III', 'IV'] as Level[]).map((l) => String(r.levels?.[l] ?? '')) : []),
    ];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n') + '\n';
}

export function writeMergeTable(t: MergeTable, results: Record<string, unknown>[], dir: string): string[] {
  writeFileSync(join(dir, 'table.json'), JSON.stringify(t, null, 1));
  const cols = ['name', 'accuracy', 'avg_generated_tokens', 'items', 'I', 'II', 'III', 'IV', 'merge'];
  writeFileSync(
    join(dir, 'table.csv'),
    csv([cols, ...t.rows.map((r) => [r.name, r.accuracy, r.avg_generated_tokens, r.items, r.levels?.I, r.levels?.II, r.levels?.III, r.levels?.IV, r.merge ? JSON.stringify(r.merge) : ''])]),
  );
  writeFileSync(join(dir, 'table.md'), mergeMarkdown(t));
  writeFileSync(join(dir, 'results.jsonl'), results.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return ['table.json', 'table.csv', 'table.md', 'results.jsonl'];
}
