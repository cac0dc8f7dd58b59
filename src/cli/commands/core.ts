/**
 * The model, generation, plugin and stethoscope commands of `sfn` (see `sfn` for their flags); imported only
 * when one of them runs, so that `sfn --help` loads none of the engine.
 */
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { OverlaySpec } from '../../views/overlays.ts';
import { Engine } from '../../engine/engine.ts';
import { generate } from '../../engine/generate.ts';
import { argmax } from '../../engine/sampler.ts';
import { ModelTokenizer } from '../../engine/tokenizer.ts';
import { reasoningFormat } from '../../engine/prompt.ts';
import { makeModel } from '../../model/make-model.ts';
import type { FloatDtype } from '../../model/dtype.ts';
import { readSpec } from '../../model/config.ts';
import { extractPlugin, parseModuleSets } from '../../plugins/extract.ts';
import { freezePlan, freezePlanTable } from '../../plugins/freeze-plan.ts';
import { exportView } from '../../stethoscope/export.ts';
import { exportGguf } from '../../stethoscope/export-gguf.ts';
import type { GgufType } from '../../model/gguf.ts';
import { checkpointSource, computeDelta, pluginSource } from '../../stethoscope/delta.ts';
import { writeDeltaOutputs } from '../../stethoscope/plots.ts';
import { parseJsonl, resultsJsonl, runEval, type EvalSettings } from '../../stethoscope/eval.ts';
import { localClient } from '../../stethoscope/local-client.ts';

import { cliDonor, engineOptions, resolveModelDir, stethoscopeView, UsageError } from '../common.ts';
import { declaration } from '../declarations.ts';
import { parseOptions } from '../../util/options.ts';

export async function cmdMakeModel(args: string[]): Promise<void> {
  const { values, positionals } = parseOptions(declaration('make-model'), args);
  const [dir] = positionals;
  const shardMb = values['shard-mb'];
  // One line per tenth of the parameters: a 0.5B model takes about a minute, silence would look like a hang.
  let shown = 0;
  const progress = (done: number, total: number) => {
    const tenth = Math.floor((10 * done) / total);
    if (tenth <= shown) return;
    shown = tenth;
    process.stderr.write(`sfn: make-model: ${tenth * 10}% (${(done / 1e6).toFixed(1)}M of ${(total / 1e6).toFixed(1)}M parameters)\n`);
  };
  const spec = makeModel(dir, {
    progress,
    preset: values.preset,
    seed: values.seed,
    dtype: values.dtype.toUpperCase() as FloatDtype,
    shardBytes: shardMb ? shardMb * 1024 * 1024 : undefined,
  });
  process.stderr.write(`sfn: wrote a random ${values.preset} checkpoint (${spec.numLayers} layers, hidden ${spec.hiddenSize}) to ${dir}\n`);
}

export async function cmdLogits(args: string[]): Promise<void> {
  const { values } = parseOptions(declaration('logits'), args);
  const { ids, greedy: greedyN } = values;
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
  const { values } = parseOptions(declaration('generate'), args);
  const dir = resolveModelDir(values.model);
  const tokenizer = ModelTokenizer.fromDir(dir);
  const engine = await Engine.load(dir, engineOptions(values));
  // Plain prompts as transformers' tokenizer(text) encodes them (BOS where the tokenizer adds one).
  const ids = values.chat ? tokenizer.encode(tokenizer.applyChatTemplate([{ role: 'user', content: values.prompt }])) : tokenizer.encodePrompt(values.prompt);
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort());
  const it = generate(engine, tokenizer, ids, {
    maxTokens: values['max-tokens'],
    temperature: values.temperature,
    topP: values['top-p'],
    topK: values['top-k'],
    seed: values.seed,
    stop: values.stop.length ? values.stop : undefined,
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
  const { values } = parseOptions(declaration('extract'), args);
  let kinds;
  try {
    kinds = parseModuleSets(values.modules.join(','));
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
  const { values } = parseOptions(declaration('export'), args);
  const gguf = values.format === 'gguf';
  if (gguf && values.dtype === 'bf16') throw new UsageError('--dtype bf16: GGUF export writes f32, f16, q8_0 or q4_0');
  if (!gguf && values.dtype.startsWith('q')) throw new UsageError(`--dtype ${values.dtype}: block quantisation needs --format gguf`);
  if (gguf && values['shard-mb']) throw new UsageError('--shard-mb: a GGUF export is one file');
  const engine = await Engine.load(resolveModelDir(values.model));
  const plugins: OverlaySpec[] = values.plugin.map((path) => ({ type: 'file', path, id: cliDonor(path, '--plugin').id }));
  const view = stethoscopeView(engine, values.merge, values.destroy, plugins);
  const shardMb = values['shard-mb'];
  const { tensors } = gguf
    ? await exportGguf(engine, view, values.out, { type: values.dtype as GgufType })
    : await exportView(engine, view, values.out, { dtype: values.dtype.toUpperCase() as FloatDtype, shardBytes: shardMb ? shardMb * 1024 * 1024 : undefined });
  process.stderr.write(`sfn: exported ${tensors} tensors of the view to ${values.out}${gguf ? ` (GGUF, ${values.dtype})` : ''}\n`);
  await engine.release();
}

export async function cmdDelta(args: string[]): Promise<void> {
  const { values, positionals } = parseOptions(declaration('delta'), args);
  const [a, b] = positionals;
  const bSource = statSync(b).isDirectory() ? checkpointSource(b) : pluginSource(a, b);
  const aSource = checkpointSource(a);
  const t0 = performance.now();
  let last = 0;
  const report = await computeDelta(aSource, bSource, {
    bins: values.bins,
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
  const files = await writeDeltaOutputs(report, values.out, values.every);
  process.stderr.write(
    `${process.stderr.isTTY ? '\n' : ''}sfn: delta of ${report.modules.length} modules in ${((performance.now() - t0) / 1000).toFixed(1)} s; wrote ${files.join(', ')} to ${values.out}\n`,
  );
  for (const k of report.kinds) process.stderr.write(`  ${String(k.rank).padStart(2)}. ${k.kind.padEnd(26)} rel ||B-A|| ${k.rel_l2.toExponential(3)}  bimodality ${k.bimodality?.toFixed(3) ?? '-'}\n`);
}

export async function cmdEval(args: string[]): Promise<void> {
  const { values } = parseOptions(declaration('eval'), args);
  const format = values['reasoning-format'];
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
  const plugins: OverlaySpec[] = values.plugin.map((path) => ({ type: 'file', path, id: cliDonor(path, '--plugin').id }));
  const view = stethoscopeView(engine, values.merge, values.destroy, plugins);
  const concurrency = values.concurrency;
  const settings: EvalSettings = {
    // Thinking must not spend the whole budget: by default the answer gets 512 tokens beyond the thinking's cap.
    maxTokens: values['max-tokens'] ?? 512 + (values.reasoning ? (values['max-thinking'] ?? 0) : 0),
    temperature: values.temperature,
    seed: values.seed,
    chat: !values['no-chat'],
    reasoning: values.reasoning ? { minThinkingTokens: values['min-thinking'], maxThinkingTokens: values['max-thinking'], wait: values.wait, format } : undefined,
    levels: values.levels,
    concurrency,
  };
  const t0 = performance.now();
  const { summary, results } = await runEval(items, tok, localClient(engine, tok, concurrency), { run: view, scorer: engine.baseView }, settings, (done, total, last) => {
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
  const { values } = parseOptions(declaration('freeze-plan'), args);
  const plan = freezePlan(readSpec(resolveModelDir(values.model)).spec);
  process.stdout.write((values.json ? JSON.stringify(plan, null, 2) : freezePlanTable(plan)) + '\n');
}
