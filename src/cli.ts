#!/usr/bin/env node
/**
 * `sfn`: the command line. `make-model`, `generate` and `logits` work on any HF-layout model directory;
 * with no `--model` (and no SFN_MODEL) they use the built-in model stories260K (models/, shipped in the repository).
 */
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { OverlaySpec } from './views/overlays.ts';
import { Engine } from './engine/engine.ts';
import { generate } from './engine/generate.ts';
import { argmax } from './engine/sampler.ts';
import { ModelTokenizer } from './engine/tokenizer.ts';
import { REASONING_FORMATS, reasoningFormat, type ReasoningFormat } from './engine/prompt.ts';
import { makeModel, PRESETS, type Preset } from './model/make-model.ts';
import type { FloatDtype } from './model/dtype.ts';
import { readSpec } from './model/config.ts';
import { extractPlugin, parseModuleSets } from './plugins/extract.ts';
import { freezePlan, freezePlanTable } from './plugins/freeze-plan.ts';
import { exportView } from './stethoscope/export.ts';
import { checkpointSource, computeDelta, pluginSource } from './stethoscope/delta.ts';
import { writeDeltaOutputs } from './stethoscope/plots.ts';
import { parseJsonl, resultsJsonl, runEval, type EvalSettings } from './stethoscope/eval.ts';
import { localLab } from './stethoscope/local-lab.ts';

import { choice, cliDonor, engineOptions, int, num, resolveModelDir, stethoscopeView, UsageError } from './cli/common.ts';

const USAGE = `usage: sfn <command> [options]

commands:
  serve                      run the OpenAI-compatible server (flags and variables: docs/configuration.md)
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
      [--temperature T] [--seed N] [--reasoning --min-thinking N --max-thinking N --wait N
      --reasoning-format auto|think|s1] [--levels]
      [--concurrency N] [--no-chat]
  levels                     levels I-IV of given outputs ({prompt | messages, output, answer?} per JSONL line);
      with --calibrate, lines also carry a human "label": agreement and the best thresholds of a grid
      --data FILE [--model DIR] [--plugin F] [--merge JSON] [--destroy JSON] [--thresholds JSON]
      (scored under the model, or the view that --plugin/--merge/--destroy describe)
  destruction-table          the paper's Table 3: levels of each prompt's output, per method x module kind
      --modules K1,K2 --layers A-B --prompts FILE.jsonl --out DIR [--methods zero,reinit,remove]
      [--model DIR] [--max-tokens N] [--seed N] [--scorer backbone|view] [--thresholds JSON]
  merge-table                the paper's Table 1: A, B, M1, M2, M3 (or --rows) over one set: accuracy, tokens, levels
      --data SET.jsonl --out DIR (--from B | --rows JSON) [--model DIR] [--max-tokens N] [--levels]
      [--scorer backbone|view] [--concurrency N] [--no-chat]
  grads                      d loss / d p of one sequence for the trainable kinds, as safetensors; prints {"loss"}
      --ids 1,2,3 --kinds o_proj,norms[,embed,head,qkv,mlp,all] --out FILE [--model DIR]
      (loss: transformers' model(ids, labels=ids).loss)
  freeze                     fine-tune only the chosen kinds (AdamW as torch's) and write a plugin
      --kinds o_proj,norms --out PLUGIN.safetensors (or DIR for qkv/mlp) (--data SET.jsonl | --ids 1,2,3)
      [--model DIR] [--steps N] [--lr X] [--wd X] [--batch N] [--seq N] [--warmup N] [--schedule constant|cosine]
      [--grad-accum N] [--seed N] [--checkpoint-every K] [--resume]
      (SET.jsonl: {"text"} | {"prompt", "completion"} | {"messages"} per line)
  freeze-table               the paper's Table 2: F1-F4 (or --rows) trained on one set, evaluated on another
      --data TRAIN.jsonl --eval SET.jsonl --out DIR [--rows JSON] [--steps N] [--lr X] [--batch N] [--levels]
  freeze-plan                trainable parameters of the Freeze module sets
      --model DIR [--json]

With no --model and no SFN_MODEL, the built-in model stories260K (a trained 260K-parameter TinyStories model) is used.`;

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
  // Plain prompts as transformers' tokenizer(text) encodes them (BOS where the tokenizer adds one).
  const ids = values.chat ? tokenizer.encode(tokenizer.applyChatTemplate([{ role: 'user', content: values.prompt }])) : tokenizer.encodePrompt(values.prompt);
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
      'reasoning-format': { type: 'string' },
    },
  });
  if (!values.data || !values.out) throw new UsageError('eval needs --data FILE.jsonl --out DIR');
  const format = choice<ReasoningFormat>('reasoning-format', values['reasoning-format'], 'SFN_REASONING_FORMAT', REASONING_FORMATS);
  let items;
  try {
    items = parseJsonl(readFileSync(values.data, 'utf8'));
  } catch (e) {
    throw new UsageError(`${values.data}: ${(e as Error).message}`);
  }
  const dir = resolveModelDir(values.model);
  const tok = ModelTokenizer.fromDir(dir);
  if (values.reasoning) {
    try {
      reasoningFormat(tok, format);
    } catch (e) {
      throw new UsageError(`--reasoning-format: ${(e as Error).message}`);
    }
  }
  const engine = await Engine.load(dir);
  const plugins: OverlaySpec[] = (values.plugin ?? []).map((path) => ({ type: 'file', path, id: cliDonor(path, '--plugin').id }));
  const view = stethoscopeView(engine, values.merge, values.destroy, plugins);
  const concurrency = int(values.concurrency, 'concurrency', 4)!;
  const settings: EvalSettings = {
    maxTokens: int(values['max-tokens'], 'max-tokens', 512)!,
    temperature: num(values.temperature, 'temperature') ?? 0,
    seed: int(values.seed, 'seed'),
    chat: !values['no-chat'],
    reasoning: values.reasoning ? { minThinkingTokens: int(values['min-thinking'], 'min-thinking'), maxThinkingTokens: int(values['max-thinking'], 'max-thinking'), wait: int(values.wait, 'wait'), format } : undefined,
    levels: values.levels!,
    concurrency,
  };
  const t0 = performance.now();
  const { summary, results } = await runEval(items, tok, localLab(engine, tok, concurrency), { run: view, scorer: engine.baseView }, settings, (done, total, last) => {
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
  grads: async (args) => (await import('./cli/commands/freeze.ts')).cmdGrads(args),
  freeze: async (args) => (await import('./cli/commands/freeze.ts')).cmdFreeze(args),
  'freeze-table': async (args) => (await import('./cli/commands/freeze.ts')).cmdFreezeTable(args),
  levels: async (args) => (await import('./cli/commands/lab.ts')).cmdLevels(args),
  'destruction-table': async (args) => (await import('./cli/commands/lab.ts')).cmdDestructionTable(args),
  'merge-table': async (args) => (await import('./cli/commands/lab.ts')).cmdMergeTable(args),
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
