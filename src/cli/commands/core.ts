/**
 * The model, generation, plugin and stethoscope commands of `sfn` (see `sfn` for their flags); imported only
 * when one of them runs, so that `sfn --help` loads none of the engine.
 */
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { OverlaySpec } from '../../views/overlays.ts';
import { Engine } from '../../engine/engine.ts';
import { generate } from '../../engine/generate.ts';
import { argmax } from '../../engine/sampler.ts';
import { ModelTokenizer } from '../../engine/tokenizer.ts';
import { REASONING_FORMATS, reasoningFormat, type ReasoningFormat } from '../../engine/prompt.ts';
import { makeModel, PRESETS, type Preset } from '../../model/make-model.ts';
import type { FloatDtype } from '../../model/dtype.ts';
import { readSpec } from '../../model/config.ts';
import { extractPlugin, parseModuleSets } from '../../plugins/extract.ts';
import { freezePlan, freezePlanTable } from '../../plugins/freeze-plan.ts';
import { exportView } from '../../stethoscope/export.ts';
import { checkpointSource, computeDelta, pluginSource } from '../../stethoscope/delta.ts';
import { writeDeltaOutputs } from '../../stethoscope/plots.ts';
import { parseJsonl, resultsJsonl, runEval, type EvalSettings } from '../../stethoscope/eval.ts';
import { localLab } from '../../stethoscope/local-lab.ts';

import { choice, cliDonor, engineOptions, int, num, resolveModelDir, stethoscopeView, tokenIds, UsageError } from '../common.ts';


export async function cmdMakeModel(args: string[]): Promise<void> {
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

export async function cmdLogits(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { model: { type: 'string' }, ids: { type: 'string' }, greedy: { type: 'string' }, threads: { type: 'string' }, device: { type: 'string' }, quantize: { type: 'string' }, merge: { type: 'string' }, destroy: { type: 'string' } },
  });
  if (!values.ids) throw new UsageError('logits needs --ids 1,2,3');
  const ids = tokenIds(values.ids);
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

export async function cmdGenerate(args: string[]): Promise<void> {
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

export async function cmdExtract(args: string[]): Promise<void> {
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

export async function cmdExport(args: string[]): Promise<void> {
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

export async function cmdDelta(args: string[]): Promise<void> {
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

export async function cmdEval(args: string[]): Promise<void> {
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
    // Thinking must not spend the whole budget: by default the answer gets 512 tokens beyond the thinking's cap.
    maxTokens: int(values['max-tokens'], 'max-tokens', 512 + (values.reasoning ? (int(values['max-thinking'], 'max-thinking') ?? 0) : 0))!,
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

export async function cmdFreezePlan(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { model: { type: 'string' }, json: { type: 'boolean', default: false } } });
  const plan = freezePlan(readSpec(resolveModelDir(values.model)).spec);
  process.stdout.write((values.json ? JSON.stringify(plan, null, 2) : freezePlanTable(plan)) + '\n');
}

