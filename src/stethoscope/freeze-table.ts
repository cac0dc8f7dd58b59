/**
 * The paper's Table 2 as one job: each Freeze row (F1 norms; F2 embed + head + o_proj + norms; F3 + q/k/v; F4 all,
 * or any rows) trained on one set and evaluated on another through the evaluation machinery, with the base model
 * as a first row. Reported: trainable parameters, steps/s, final loss, accuracy, average tokens and levels, as
 * JSON, CSV and Markdown, with every loss curve in one SVG.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { ModelTokenizer } from '../engine/tokenizer.ts';
import { runEval, type EvalItem, type EvalSettings, type EvalSummary } from './eval.ts';
import { lossCurveSpec, type FreezeResult } from './freeze.ts';
import { TABLE2_ROWS } from './freeze-sets.ts';
import type { EngineClient } from './engine-client.ts';
import type { Level } from './levels.ts';
import { renderSvg } from './plots.ts';

export const FreezeTableRows = z
  .array(
    z.strictObject({
      name: z
        .string()
        .min(1)
        .max(32)
        .regex(/^[A-Za-z0-9._-]+$/),
      kinds: z.array(z.string()).min(1),
    }),
  )
  .min(1)
  .max(8);
export type FreezeTableRow = z.infer<typeof FreezeTableRows>[number];

export const DEFAULT_TABLE2: FreezeTableRow[] = Object.entries(TABLE2_ROWS).map(([name, kinds]) => ({ name, kinds }));

export interface FreezeTableLine extends EvalSummary {
  name: string;
  kinds: string[];
  parameters: number;
  steps: number;
  steps_per_second: number | null;
  final_loss: number | null;
}

export async function freezeTable<V>(
  rows: FreezeTableRow[],
  train: (row: FreezeTableRow, index: number) => Promise<{ result: FreezeResult; view: V }>,
  base: V,
  client: EngineClient<V>,
  tok: ModelTokenizer,
  items: EvalItem[],
  settings: EvalSettings,
  progress: (done: number, total: number, message: string) => void = () => {},
): Promise<{ lines: FreezeTableLine[]; curves: { run: string; curve: { step: number; loss: number }[] }[] }> {
  const total = rows.length + 1;
  const lines: FreezeTableLine[] = [];
  const curves: { run: string; curve: { step: number; loss: number }[] }[] = [];
  const a = await runEval(items, tok, client, { run: base, scorer: base }, settings);
  lines.push({ name: 'A', kinds: [], parameters: 0, steps: 0, steps_per_second: null, final_loss: null, ...a.summary });
  progress(1, total, 'A evaluated');
  for (const [i, row] of rows.entries()) {
    const { result, view } = await train(row, i);
    progress(i + 1.5, total, `${row.name} trained`);
    // Scored under the base model, as the paper judges every row against A.
    const ev = await runEval(items, tok, client, { run: view, scorer: base }, settings);
    lines.push({ name: row.name, kinds: row.kinds, parameters: result.parameters, steps: result.steps, steps_per_second: result.steps_per_second, final_loss: result.final_loss, ...ev.summary });
    curves.push({ run: row.name, curve: result.losses.map((loss, k) => ({ step: k + 1, loss })) });
    progress(i + 2, total, `${row.name} evaluated`);
  }
  return { lines, curves };
}

export function freezeTableMarkdown(lines: FreezeTableLine[]): string {
  const levels = lines.some((l) => l.levels);
  const head = ['Run', 'Trained', '#Param', 'Steps/s', 'Final loss', 'Accuracy', 'Avg. tokens', ...(levels ? ['I', 'II', 'III', 'IV'] : [])];
  const out = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const l of lines) {
    const cells = [
      l.name,
      l.kinds.length ? l.kinds.join(', ') : '(base model)',
      l.parameters ? l.parameters.toLocaleString('en-US') : '-',
      l.steps_per_second === null ? '-' : l.steps_per_second.toFixed(1),
      l.final_loss === null ? '-' : l.final_loss.toFixed(3),
      `${(l.accuracy * 100).toFixed(1)}%`,
      l.avg_generated_tokens.toFixed(1),
      ...(levels ? (['I', 'II', 'III', 'IV'] as Level[]).map((k) => String(l.levels?.[k] ?? '')) : []),
    ];
    out.push(`| ${cells.join(' | ')} |`);
  }
  return out.join('\n') + '\n';
}

export async function writeFreezeTable(lines: FreezeTableLine[], curves: { run: string; curve: { step: number; loss: number }[] }[], dir: string): Promise<string[]> {
  writeFileSync(join(dir, 'table.json'), JSON.stringify({ rows: lines }, null, 1));
  const cols = ['name', 'kinds', 'parameters', 'steps', 'steps_per_second', 'final_loss', 'accuracy', 'avg_generated_tokens', 'I', 'II', 'III', 'IV'];
  const rows = lines.map((l) => [
    l.name,
    l.kinds.join('+'),
    l.parameters,
    l.steps,
    l.steps_per_second ?? '',
    l.final_loss ?? '',
    l.accuracy,
    l.avg_generated_tokens,
    l.levels?.I ?? '',
    l.levels?.II ?? '',
    l.levels?.III ?? '',
    l.levels?.IV ?? '',
  ]);
  writeFileSync(join(dir, 'table.csv'), [cols, ...rows].map((r) => r.join(',')).join('\n') + '\n');
  writeFileSync(join(dir, 'table.md'), freezeTableMarkdown(lines));
  writeFileSync(join(dir, 'loss.svg'), await renderSvg(lossCurveSpec(curves)));
  return ['table.json', 'table.csv', 'table.md', 'loss.svg'];
}
