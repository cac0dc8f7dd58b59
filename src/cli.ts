#!/usr/bin/env node
/**
 * `sfn`: the command line. `make-model`, `generate` and `logits` work on any HF-layout model directory;
 * with no `--model` (and no SFN_MODEL) they use the built-in tiny model, made once and cached.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve as resolvePath } from 'node:path';
import { parseArgs } from 'node:util';
import type { DonorRef } from './stethoscope/build.ts';
import { resolveDestroy, resolveMerge } from './stethoscope/resolve.ts';
import { SpecError } from './stethoscope/spec.ts';
import { OverlayLoader, type OverlaySpec } from './views/overlays.ts';
import { Engine, type Device, type EngineOptions, type Quantize } from './engine/engine.ts';
import { generate } from './engine/generate.ts';
import { argmax } from './engine/sampler.ts';
import { ModelTokenizer } from './engine/tokenizer.ts';
import { cachedModel, makeModel, PRESETS, type Preset } from './model/make-model.ts';
import type { FloatDtype } from './model/dtype.ts';
import { readSpec } from './model/config.ts';
import { extractPlugin, parseModuleSets } from './plugins/extract.ts';
import { freezePlan, freezePlanTable } from './plugins/freeze-plan.ts';
import { exportView } from './stethoscope/export.ts';
import { checkpointSource, computeDelta, pluginSource } from './stethoscope/delta.ts';
import { writeDeltaOutputs } from './stethoscope/plots.ts';
import { parseJsonl, resultsJsonl, runEval, type EvalSettings } from './stethoscope/eval.ts';
import { localBackend } from './stethoscope/local-backend.ts';

const USAGE = `usage: sfn <command> [options]

commands:
  serve                      run the OpenAI-compatible server (flags and variables: see README)
  make-model DIR             write a random, seeded HF-layout checkpoint with the Qwen tokenizer
      --preset tiny|qwen2.5-0.5b|qwen2.5-1.5b   (default tiny)
      --seed N  --dtype bf16|f16|f32  --shard-mb N
  generate                   stream a completion to stdout
      --model DIR --prompt TEXT [--chat] [--max-tokens N] [--temperature T] [--top-p P]
      [--top-k K] [--seed N] [--stop S]... [--device cpu|cuda] [--quantize int4]
  logits                     print {"ids","logits","greedy"} JSON, computed as the server computes it
      --model DIR --ids 1,2,3 [--greedy N] [--merge JSON] [--destroy JSON] [--device cpu|cuda] [--quantize int4]
      (--merge/--destroy take the API's JSON; a merge's "from" is a plugin file or checkpoint dir)

  extract                    write a plugin from a fine-tune, with an audit of the modules left out
      --base DIR --tuned DIR --out FILE [--modules o_proj,norms,embed,head] [--description TEXT]
  export                     write a view (plugins, merge, destruction) as a full HF checkpoint
      --model DIR --out DIR [--plugin FILE]... [--merge JSON] [--destroy JSON] [--dtype f32|bf16|f16] [--shard-mb N]
  delta A B --out DIR        per module x layer ||B-A||, relative change histograms, SVG charts, report.html
      [--bins N] [--every K]   (B: a checkpoint dir, or a plugin file laid over A)
  eval                       a JSONL set ({id, prompt | messages, answer}) under a view: accuracy, tokens, levels
      --data FILE --out DIR [--model DIR] [--plugin F] [--merge JSON] [--destroy JSON] [--max-tokens N]
      [--temperature T] [--seed N] [--reasoning --min-thinking N --max-thinking N --wait N] [--levels]
      [--concurrency N] [--no-chat]
  freeze-plan                trainable parameters of the Freeze module sets
      --model DIR [--json]

With no --model and no SFN_MODEL, the built-in tiny model is used (random weights, random text).`;

export class UsageError extends Error {}

/** The model directory to use: --model, then SFN_MODEL, then the built-in tiny model (with a notice). */
export function resolveModelDir(flag: string | undefined, log: (s: string) => void = (s) => process.stderr.write(s + '\n')): string {
  const dir = flag ?? process.env.SFN_MODEL;
  if (dir) return dir;
  const { dir: tiny, made } = cachedModel('tiny', 0);
  log(
    `sfn: no model configured (--model or SFN_MODEL); using the built-in tiny model at ${tiny}` +
      `${made ? ' (just made)' : ''}. Its weights are random, so its text is random too.`,
  );
  return tiny;
}

function int(v: string | undefined, name: string, dflt?: number): number | undefined {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new UsageError(`--${name} must be an integer, got "${v}"`);
  return n;
}

/** One of `allowed`: the flag, else the environment variable, else the first allowed value. */
function choice<T extends string>(name: string, flag: string | undefined, env: string, allowed: readonly T[]): T {
  const v = flag ?? (process.env[env] || allowed[0]);
  if (!(allowed as readonly string[]).includes(v)) throw new UsageError(`--${name} must be ${allowed.join(' or ')}, got "${v}"`);
  return v as T;
}

/** --threads, --device (SFN_DEVICE) and --quantize (SFN_QUANTIZE), as `generate` and `logits` take them. */
function engineOptions(values: { threads?: string; device?: string; quantize?: string }): EngineOptions {
  return {
    threads: int(values.threads, 'threads'),
    device: choice<Device>('device', values.device, 'SFN_DEVICE', ['cpu', 'cuda']),
    quantize: choice<Quantize>('quantize', values.quantize, 'SFN_QUANTIZE', ['none', 'int4']),
  };
}

function num(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got "${v}"`);
  return n;
}

async function cmdMakeModel(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { preset: { type: 'string', default: 'tiny' }, seed: { type: 'string' }, dtype: { type: 'string', default: 'bf16' }, 'shard-mb': { type: 'string' } },
  });
  const dir = positionals[0];
  if (!dir || positionals.length > 1) throw new UsageError('make-model takes one directory');
  if (!(values.preset! in PRESETS)) throw new UsageError(`--preset must be one of ${Object.keys(PRESETS).join(', ')}`);
  const dtype = values.dtype!.toUpperCase();
  if (!['BF16', 'F16', 'F32'].includes(dtype)) throw new UsageError('--dtype must be bf16, f16 or f32');
  const shardMb = int(values['shard-mb'], 'shard-mb');
  const spec = makeModel(dir, {
    preset: values.preset as Preset,
    seed: int(values.seed, 'seed', 0),
    dtype: dtype as FloatDtype,
    shardBytes: shardMb ? shardMb * 1024 * 1024 : undefined,
  });
  process.stderr.write(`sfn: wrote a random ${values.preset} checkpoint (${spec.numLayers} layers, hidden ${spec.hiddenSize}) to ${dir}\n`);
}

async function cmdLogits(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { model: { type: 'string' }, ids: { type: 'string' }, greedy: { type: 'string' }, threads: { type: 'string' }, device: { type: 'string' }, quantize: { type: 'string' }, merge: { type: 'string' }, destroy: { type: 'string' } },
  });
  if (!values.ids) throw new UsageError('logits needs --ids 1,2,3');
  const ids = values.ids.split(',').map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`--ids: "${s}" is not a token id`);
    return n;
  });
  const greedyN = int(values.greedy, 'greedy', 0)!;
  const engine = await Engine.load(resolveModelDir(values.model), engineOptions(values));
  const view = stethoscopeView(engine, values.merge, values.destroy);
  // All positions' logits from one prefill, then greedy decoding on the same cache (ignoring EOS).
  const cache = engine.newCache(1);
  const [all] = await engine.forward(cache, [ids], { logits: 'all', view });
  const greedy: number[] = [];
  let last = all[all.length - 1];
  for (let i = 0; i < greedyN; i++) {
    const id = argmax(last);
    greedy.push(id);
    if (i + 1 < greedyN) [[last]] = await engine.forward(cache, [[id]], { view });
  }
  const rows = all.map((r) => `[${Array.from(r).join(',')}]`);
  process.stdout.write(`{"ids":${JSON.stringify(ids)},"logits":[${rows.join(',')}],"greedy":${JSON.stringify(greedy)}}\n`);
  await engine.release();
}

/** A donor for `--merge` on the command line: a safetensors file (a plugin) or a checkpoint directory. */
function cliDonor(from: string, param: string): DonorRef {
  if (!existsSync(from)) throw new UsageError(`${param}: "${from}" does not exist`);
  if (statSync(from).isDirectory()) return { kind: 'dir', path: from, id: `dir:${resolvePath(from)}` };
  return { kind: 'file', path: from, id: createHash('sha256').update(readFileSync(from)).digest('hex') };
}

/** The view `--merge` / `--destroy` describe (the same JSON the API takes), or the backbone. */
function stethoscopeView(engine: Engine, merge?: string, destroy?: string, plugins: OverlaySpec[] = []) {
  const json = (s: string, flag: string) => {
    try {
      return JSON.parse(s);
    } catch (e) {
      throw new UsageError(`${flag}: not JSON: ${(e as Error).message}`);
    }
  };
  const overlays: OverlaySpec[] = [...plugins];
  try {
    if (merge) overlays.push(resolveMerge(engine.spec, json(merge, '--merge'), cliDonor));
    if (destroy) overlays.push(resolveDestroy(engine.spec, json(destroy, '--destroy')));
  } catch (e) {
    if (e instanceof SpecError) throw new UsageError(e.message);
    throw e;
  }
  return new OverlayLoader(engine, Number.MAX_SAFE_INTEGER).view({ overlays });
}

async function cmdGenerate(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' },
      prompt: { type: 'string' },
      chat: { type: 'boolean', default: false },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      'top-k': { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true },
      threads: { type: 'string' },
      device: { type: 'string' },
      quantize: { type: 'string' },
    },
  });
  if (values.prompt === undefined) throw new UsageError('generate needs --prompt TEXT');
  const dir = resolveModelDir(values.model);
  const tokenizer = ModelTokenizer.fromDir(dir);
  const engine = await Engine.load(dir, engineOptions(values));
  const text = values.chat ? tokenizer.applyChatTemplate([{ role: 'user', content: values.prompt }]) : values.prompt;
  const ids = tokenizer.encode(text);
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort());
  const it = generate(engine, tokenizer, ids, {
    maxTokens: int(values['max-tokens'], 'max-tokens', 128)!,
    temperature: num(values.temperature, 'temperature') ?? 0,
    topP: num(values['top-p'], 'top-p'),
    topK: int(values['top-k'], 'top-k'),
    seed: int(values.seed, 'seed'),
    stop: values.stop,
    signal: controller.signal,
  });
  let r = await it.next();
  while (!r.done) {
    process.stdout.write(r.value.text);
    r = await it.next();
  }
  process.stdout.write('\n');
  process.stderr.write(`sfn: finished (${r.value.reason}) after ${r.value.tokens} tokens\n`);
  await engine.release();
}

async function cmdExtract(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { base: { type: 'string' }, tuned: { type: 'string' }, modules: { type: 'string', default: 'o_proj,norms,embed,head' }, out: { type: 'string' }, description: { type: 'string' } } });
  if (!values.base || !values.tuned || !values.out) throw new UsageError('extract needs --base DIR --tuned DIR --out FILE');
  let kinds;
  try {
    kinds = parseModuleSets(values.modules!);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const audit = await extractPlugin(values.base, values.tuned, kinds, values.out, values.description);
  process.stderr.write(`sfn: wrote ${audit.tensors} tensors (${audit.extracted.join(', ')}) to ${values.out}; audit in ${values.out}.audit.json\n`);
  for (const k of audit.not_extracted) process.stderr.write(`  ${k.kind.padEnd(26)} max |B-A| = ${k.max_abs_diff}\n`);
  for (const n of audit.notes) process.stderr.write(`  note: ${n}\n`);
  process.stdout.write(JSON.stringify(audit, null, 2) + '\n');
}

async function cmdExport(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { model: { type: 'string' }, plugin: { type: 'string', multiple: true }, merge: { type: 'string' }, destroy: { type: 'string' }, out: { type: 'string' }, dtype: { type: 'string', default: 'f32' }, 'shard-mb': { type: 'string' } },
  });
  if (!values.out) throw new UsageError('export needs --out DIR');
  const dtype = values.dtype!.toUpperCase();
  if (!['BF16', 'F16', 'F32'].includes(dtype)) throw new UsageError('--dtype must be bf16, f16 or f32');
  const engine = await Engine.load(resolveModelDir(values.model));
  const plugins: OverlaySpec[] = (values.plugin ?? []).map((path) => ({ type: 'file', path, id: cliDonor(path, '--plugin').id }));
  const view = stethoscopeView(engine, values.merge, values.destroy, plugins);
  const shardMb = int(values['shard-mb'], 'shard-mb');
  const { tensors } = exportView(engine, view, values.out, { dtype: dtype as FloatDtype, shardBytes: shardMb ? shardMb * 1024 * 1024 : undefined });
  process.stderr.write(`sfn: exported ${tensors} tensors of the view to ${values.out}\n`);
  await engine.release();
}

async function cmdDelta(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { out: { type: 'string' }, bins: { type: 'string' }, every: { type: 'string' } } });
  const [a, b] = positionals;
  if (!a || !b || positionals.length > 2 || !values.out) throw new UsageError('delta takes A B --out DIR (B: a checkpoint dir or a plugin file over A)');
  const bSource = statSync(b).isDirectory() ? checkpointSource(b) : pluginSource(a, b);
  const aSource = checkpointSource(a);
  const t0 = performance.now();
  let last = 0;
  const report = await computeDelta(aSource, bSource, {
    bins: int(values.bins, 'bins', 50),
    onProgress: (done, total) => {
      if (process.stderr.isTTY && performance.now() - last > 100) {
        last = performance.now();
        const w = 30;
        const f = Math.round((done / total) * w);
        process.stderr.write(`\r[${'#'.repeat(f)}${' '.repeat(w - f)}] ${done}/${total} tensors`);
      }
    },
  });
  aSource.close();
  bSource.close();
  const files = await writeDeltaOutputs(report, values.out, int(values.every, 'every', 1));
  process.stderr.write(`${process.stderr.isTTY ? '\n' : ''}sfn: delta of ${report.modules.length} modules in ${((performance.now() - t0) / 1000).toFixed(1)} s; wrote ${files.join(', ')} to ${values.out}\n`);
  for (const k of report.kinds) process.stderr.write(`  ${String(k.rank).padStart(2)}. ${k.kind.padEnd(26)} rel ||B-A|| ${k.rel_l2.toExponential(3)}  bimodality ${k.bimodality?.toFixed(3) ?? '-'}\n`);
}

async function cmdEval(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' }, data: { type: 'string' }, out: { type: 'string' }, plugin: { type: 'string', multiple: true }, merge: { type: 'string' }, destroy: { type: 'string' },
      'max-tokens': { type: 'string' }, temperature: { type: 'string' }, seed: { type: 'string' }, reasoning: { type: 'boolean', default: false }, 'min-thinking': { type: 'string' },
      'max-thinking': { type: 'string' }, wait: { type: 'string' }, levels: { type: 'boolean', default: false }, concurrency: { type: 'string' }, 'no-chat': { type: 'boolean', default: false },
    },
  });
  if (!values.data || !values.out) throw new UsageError('eval needs --data FILE.jsonl --out DIR');
  let items;
  try {
    items = parseJsonl(readFileSync(values.data, 'utf8'));
  } catch (e) {
    throw new UsageError(`${values.data}: ${(e as Error).message}`);
  }
  const dir = resolveModelDir(values.model);
  const tok = ModelTokenizer.fromDir(dir);
  const engine = await Engine.load(dir);
  const plugins: OverlaySpec[] = (values.plugin ?? []).map((path) => ({ type: 'file', path, id: cliDonor(path, '--plugin').id }));
  const view = stethoscopeView(engine, values.merge, values.destroy, plugins);
  const concurrency = int(values.concurrency, 'concurrency', 4)!;
  const settings: EvalSettings = {
    maxTokens: int(values['max-tokens'], 'max-tokens', 512)!,
    temperature: num(values.temperature, 'temperature') ?? 0,
    seed: int(values.seed, 'seed'),
    chat: !values['no-chat'],
    reasoning: values.reasoning ? { minThinkingTokens: int(values['min-thinking'], 'min-thinking'), maxThinkingTokens: int(values['max-thinking'], 'max-thinking'), wait: int(values.wait, 'wait') } : undefined,
    levels: values.levels!,
    concurrency,
  };
  const t0 = performance.now();
  const { summary, results } = await runEval(items, tok, localBackend(engine, tok, view, concurrency), settings, (done, total, last) => {
    const w = 30;
    const f = Math.round((done / total) * w);
    const correct = last.correct ? 'correct' : 'wrong';
    process.stderr.write(`${process.stderr.isTTY ? '\r' : ''}[${'#'.repeat(f)}${' '.repeat(w - f)}] ${done}/${total} (${last.id}: ${correct})${process.stderr.isTTY ? '' : '\n'}`);
  });
  mkdirSync(values.out, { recursive: true });
  writeFileSync(join(values.out, 'results.jsonl'), resultsJsonl(results));
  writeFileSync(join(values.out, 'summary.json'), JSON.stringify({ model: dir, settings, ...summary }, null, 2));
  process.stderr.write(`${process.stderr.isTTY ? '\n' : ''}sfn: ${summary.items} items in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
  await engine.release();
}

async function cmdFreezePlan(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { model: { type: 'string' }, json: { type: 'boolean', default: false } } });
  const plan = freezePlan(readSpec(resolveModelDir(values.model)).spec);
  process.stdout.write((values.json ? JSON.stringify(plan, null, 2) : freezePlanTable(plan)) + '\n');
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  'make-model': cmdMakeModel,
  logits: cmdLogits,
  generate: cmdGenerate,
  extract: cmdExtract,
  export: cmdExport,
  delta: cmdDelta,
  eval: cmdEval,
  'freeze-plan': cmdFreezePlan,
  // Loaded on demand: the server's modules are not needed by the other commands.
  serve: async (args) => (await import('./server/serve.ts')).serveCommand(args),
};

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    if (cmd === undefined || ['-h', '--help', 'help'].includes(cmd)) {
      process.stdout.write(USAGE + '\n');
      return cmd === undefined ? 2 : 0;
    }
    const run = Object.hasOwn(COMMANDS, cmd) ? COMMANDS[cmd] : undefined;
    if (!run) throw new UsageError(`unknown command "${cmd}"`);
    await run(rest);
    return 0;
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof UsageError || err.code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`sfn: ${err.message}\n\n${USAGE}\n`);
      return 2;
    }
    process.stderr.write(`sfn: ${err.message}\n`);
    return 1;
  }
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('/cli.ts')) {
  main(process.argv.slice(2)).then((code) => {
    if (code !== 0) process.exitCode = code;
  });
}
