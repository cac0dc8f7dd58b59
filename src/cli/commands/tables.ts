/**
 * `sfn levels`, `sfn probe`, `sfn destruction-table`, `sfn destruction-sweep`, `sfn merge-table`: the same
 * stethoscope functions the HTTP API runs, over an engine in this process.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import type { z } from 'zod';
import { Engine } from '../../engine/engine.ts';
import { ModelTokenizer } from '../../engine/tokenizer.ts';
import { parseJsonl, type EvalSettings } from '../../stethoscope/eval.ts';
import { agreement, calibrate } from '../../stethoscope/calibrate.ts';
import { DEFAULT_THRESHOLDS, ThresholdsSpec, type Level, type LevelMetrics, type LevelThresholds } from '../../stethoscope/levels.ts';
import { localClient } from '../../stethoscope/local-client.ts';
import { compareViews, judgeItems, LabelledItem, LevelItem, ProbePrompt } from '../../stethoscope/probe.ts';
import {
  destructionMarkdown,
  destructionRows,
  destructionTable,
  DestructionTableSpec,
  mergeMarkdown,
  mergeRows,
  mergeTable,
  MergeTableSpec,
  writeDestructionTable,
  writeMergeTable,
} from '../../stethoscope/tables.ts';
import type { OverlaySpec } from '../../views/overlays.ts';
import { destructionSweep, sweepGrid, writeSweep, type SweepSettings } from '../../stethoscope/sweep.ts';
import { parseOptions } from '../../util/options.ts';
import { cliDonor, json, resolveModelDir, stethoscopeView, UsageError } from '../common.ts';
import { declaration } from '../declarations.ts';

function parse<T>(schema: z.ZodType<T>, raw: unknown, what: string): T {
  const r = schema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues.find((x) => x.code === 'unrecognized_keys') ?? r.error.issues[0];
    const path = i.path.map(String).join('.');
    throw new UsageError(`${what}${path ? `: ${path}` : ''}: ${i.code === 'unrecognized_keys' ? `unknown field "${i.keys[0]}"` : i.message}`);
  }
  return r.data;
}

/** A JSONL file, each line checked against `schema`; errors name the line. */
function jsonl<T>(path: string, schema: z.ZodType<T>): T[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`${path}: ${(e as Error).message}`);
  }
  const out = text
    .split('\n')
    .map((line, i) => [line, i] as const)
    .filter(([line]) => line.trim())
    .map(([line, i]) => parse(schema, json(line, `${path} line ${i + 1}`), `${path} line ${i + 1}`));
  if (!out.length) throw new UsageError(`${path}: no items`);
  return out;
}

const thresholds = (v: string | undefined): LevelThresholds => ({ ...DEFAULT_THRESHOLDS, ...(v ? parse(ThresholdsSpec, json(v, '--thresholds'), '--thresholds') : {}) });

async function load(model: string | undefined) {
  const dir = resolveModelDir(model);
  const tok = ModelTokenizer.fromDir(dir);
  return { dir, tok, engine: await Engine.load(dir) };
}

const progressBar = (label: string) => (done: number, total: number, message: string) => {
  const w = 30;
  const f = Math.round((done / total) * w);
  process.stderr.write(`${process.stderr.isTTY ? '\r' : ''}${label} [${'#'.repeat(f)}${' '.repeat(w - f)}] ${done}/${total} ${message}${process.stderr.isTTY ? '\x1b[K' : '\n'}`);
};

export async function cmdLevels(args: string[]): Promise<void> {
  const { values } = parseOptions(declaration('levels'), args);
  // With --calibrate each line also carries a human "label" (I-IV); "source" is free text.
  const labelled: LevelItem[] = jsonl<LevelItem>(values.data, values.calibrate ? LabelledItem : LevelItem);
  const items = labelled.map(({ label: _l, source: _s, ...it }: { label?: unknown; source?: unknown } & LevelItem) => it);
  const t = thresholds(values.thresholds);
  const { tok, engine } = await load(values.model);
  const plugins: OverlaySpec[] = values.plugin.map((path) => ({ type: 'file', path, id: cliDonor(path, '--plugin').id }));
  const scorer = stethoscopeView(engine, values.merge, values.destroy, plugins);
  try {
    const results = await judgeItems(localClient(engine, tok, values.concurrency), tok, scorer, items, t);
    if (values.calibrate) {
      const metrics = results.map((r) => r.metrics as LevelMetrics);
      const labels = labelled.map((x) => (x as unknown as { label: Level }).label);
      const best = calibrate(metrics, labels, t);
      process.stdout.write(JSON.stringify({ thresholds: t, agreement: agreement(metrics, labels, t), calibrated: best }, null, 2) + '\n');
    } else process.stdout.write(JSON.stringify({ thresholds: t, results }, null, 2) + '\n');
  } catch (e) {
    if (e instanceof Error && 'param' in e) throw new UsageError(e.message);
    throw e;
  } finally {
    await engine.release();
  }
}

export async function cmdDestructionTable(args: string[]): Promise<void> {
  const { values } = parseOptions(declaration('destruction-table'), args);
  const spec = parse(
    DestructionTableSpec,
    { methods: values.methods, modules: values.modules, layers: values.layers, prompts: jsonl(values.prompts, ProbePrompt), seed: values.seed },
    'destruction-table',
  );
  const scorer = values.scorer;
  const t = thresholds(values.thresholds);
  const { tok, engine } = await load(values.model);
  try {
    const rows = destructionRows(spec).map((r) => stethoscopeView(engine, undefined, JSON.stringify(r.destroy)));
    const table = await destructionTable(
      localClient(engine, tok, 8),
      tok,
      spec,
      { intact: engine.baseView, rows },
      { maxTokens: values['max-tokens'], thresholds: t, scorer, progress: progressBar('destruction') },
    );
    mkdirSync(values.out, { recursive: true });
    const files = await writeDestructionTable(table, values.out);
    process.stderr.write(`${process.stderr.isTTY ? '\n' : ''}sfn: wrote ${files.join(', ')} to ${values.out}\n`);
    process.stdout.write(destructionMarkdown(table));
  } finally {
    await engine.release();
  }
}

export async function cmdMergeTable(args: string[]): Promise<void> {
  const { values } = parseOptions(declaration('merge-table'), args);
  const spec = parse(MergeTableSpec, { from: values.from, rows: values.rows === undefined ? undefined : json(values.rows, '--rows') }, 'merge-table');
  let items;
  try {
    items = parseJsonl(readFileSync(values.data, 'utf8'));
  } catch (e) {
    throw new UsageError(`${values.data}: ${(e as Error).message}`);
  }
  const scorer = values.scorer;
  const concurrency = values.concurrency;
  const settings: EvalSettings = {
    maxTokens: values['max-tokens'],
    temperature: values.temperature,
    seed: values.seed,
    chat: !values['no-chat'],
    levels: values.levels,
    thresholds: thresholds(values.thresholds),
    concurrency,
  };
  const { tok, engine } = await load(values.model);
  try {
    const rows = mergeRows(spec, engine.spec).map((row) => {
      const view = stethoscopeView(engine, row.merge ? JSON.stringify(row.merge) : undefined);
      return { row, view, scorer: scorer === 'view' ? view : engine.baseView };
    });
    const { table, results } = await mergeTable(localClient(engine, tok, concurrency * rows.length), tok, items, rows, settings, progressBar('merge'));
    mkdirSync(values.out, { recursive: true });
    const files = writeMergeTable(table, results, values.out);
    process.stderr.write(`${process.stderr.isTTY ? '\n' : ''}sfn: wrote ${files.join(', ')} to ${values.out}\n`);
    process.stdout.write(mergeMarkdown(table));
  } finally {
    await engine.release();
  }
}

export async function cmdDestructionSweep(args: string[]): Promise<void> {
  const { values } = parseOptions(declaration('destruction-sweep'), args);
  if ((values.text === undefined) === (values.ids === undefined)) throw new UsageError('destruction-sweep: give exactly one of --text and --ids');
  if (values.method !== 'remove' && !values.modules?.length) throw new UsageError("destruction-sweep needs --modules K1,K2 (the heatmap's rows) unless --method remove");
  const { tok, engine } = await load(values.model);
  try {
    const ids = values.ids ?? tok.encodePrompt(values.text!).slice(0, 512);
    if (ids.length < 2) throw new UsageError('destruction-sweep: the reference needs at least 2 tokens');
    const settings: SweepSettings = { method: values.method, modules: values.modules ?? [], window: values.window, stride: values.stride, seed: values.seed };
    const specs = sweepGrid(engine.spec.numLayers, settings);
    const grid = specs.map((row) => row.map((cell) => stethoscopeView(engine, undefined, JSON.stringify(cell.destroy))));
    const result = await destructionSweep(localClient(engine, tok, 1), ids, engine.baseView, specs, grid, settings, progressBar('sweep'));
    mkdirSync(values.out, { recursive: true });
    const files = await writeSweep(result, values.out);
    process.stderr.write(`${process.stderr.isTTY ? '\n' : ''}sfn: wrote ${files.join(', ')} to ${values.out}\n`);
    process.stdout.write(JSON.stringify(result, null, 1) + '\n');
  } finally {
    await engine.release();
  }
}

export async function cmdProbe(args: string[]): Promise<void> {
  const { values } = parseOptions(declaration('probe'), args);
  if (!values.merge && !values.destroy && !values.plugin.length) throw new UsageError('probe: give --merge, --destroy or --plugin (the view to compare with the model)');
  const prompts = jsonl(values.prompts, ProbePrompt);
  const t = thresholds(values.thresholds);
  const { tok, engine } = await load(values.model);
  try {
    const plugins: OverlaySpec[] = values.plugin.map((path) => ({ type: 'file', path, id: cliDonor(path, '--plugin').id }));
    const altered = stethoscopeView(engine, values.merge, values.destroy, plugins);
    const label = values.destroy ? 'destroyed' : 'merged';
    const opts = { maxTokens: values['max-tokens'], thresholds: t, scorer: values.scorer, label };
    const results = await compareViews(localClient(engine, tok, 8), tok, { intact: engine.baseView, altered }, prompts, opts).catch((e) => {
      throw e instanceof Error && 'param' in e ? new UsageError(e.message) : e;
    });
    process.stdout.write(`${JSON.stringify({ thresholds: t, results }, null, 2)}\n`);
  } finally {
    await engine.release();
  }
}
