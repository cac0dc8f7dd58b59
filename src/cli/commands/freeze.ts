/**
 * `sfn grads` (the gradients of one sequence, to check against PyTorch from outside) and `sfn freeze` (a Freeze
 * run: chosen module kinds fine-tuned, written as a plugin).
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Engine } from '../../engine/engine.ts';
import { Trainer } from '../../engine/trainer.ts';
import { ModelTokenizer } from '../../engine/tokenizer.ts';
import { readSpec } from '../../model/config.ts';
import { expectedParams, MODULE_KINDS, parseName, PLUGGABLE_KINDS } from '../../model/names.ts';
import { writeSafetensors } from '../../model/safetensors.ts';
import { runFreeze } from '../../stethoscope/freeze.ts';
import { readTrainingFile } from '../../stethoscope/freeze-data.ts';
import { FreezeError, parseTrainKinds, trainableNames } from '../../stethoscope/freeze-sets.ts';
import { parseJsonl } from '../../stethoscope/eval.ts';
import { DEFAULT_TABLE2, freezeTable, freezeTableMarkdown, FreezeTableRows, writeFreezeTable } from '../../stethoscope/freeze-table.ts';
import { localClient } from '../../stethoscope/local-client.ts';
import { parseOptions } from '../../util/options.ts';
import { resolveModelDir, stethoscopeView, UsageError } from '../common.ts';
import { declaration } from '../declarations.ts';

export async function cmdGrads(args: string[]): Promise<void> {
  const { values } = parseOptions(declaration('grads'), args);
  const dir = resolveModelDir(values.model);
  const { spec } = readSpec(dir);
  let names: Set<string>;
  try {
    names = trainableNames(spec, parseTrainKinds(values.kinds));
  } catch (e) {
    throw new UsageError(`--kinds: ${(e as Error).message}`);
  }
  const seq = values.ids;
  if (seq.length < 2) throw new UsageError('--ids: give at least two tokens (one prediction)');
  const trainer = await Trainer.load(dir, names, { threads: values.threads });
  try {
    // labels = the ids shifted by one: transformers' model(ids, labels=ids).loss
    const r = await trainer.step([{ ids: seq, targets: seq.map(() => true) }]);
    const shapes = expectedParams(spec);
    writeSafetensors(
      values.out,
      [...r.grads].map(([n, g]) => ({ name: n, dtype: 'F32' as const, shape: shapes.get(n)!, data: new Uint8Array(g.buffer, g.byteOffset, g.byteLength) })),
    );
    process.stdout.write(JSON.stringify({ loss: r.loss, tensors: r.grads.size }) + '\n');
  } finally {
    await trainer.release();
  }
}

export async function cmdFreeze(args: string[]): Promise<void> {
  const { values } = parseOptions(declaration('freeze'), args);
  if ((values.data === undefined) === (values.ids === undefined)) throw new UsageError('freeze: give exactly one of --data SET.jsonl and --ids 1,2,3');
  const dir = resolveModelDir(values.model);
  const seq = values.seq;
  let rows;
  try {
    if (values.ids) {
      const fixed = values.ids;
      rows = [{ ids: fixed, targets: fixed.map(() => true) }];
    } else rows = readTrainingFile(ModelTokenizer.fromDir(dir), values.data!, seq);
  } catch (e) {
    if (e instanceof FreezeError || e instanceof UsageError) throw new UsageError(`${values.data ?? '--ids'}: ${e.message}`);
    throw e;
  }
  const steps = values.steps;
  const t0 = performance.now();
  try {
    const r = await runFreeze(
      {
        model: dir,
        kinds: values.kinds,
        rows,
        steps,
        lr: values.lr,
        wd: values.wd,
        batch: values.batch ?? Math.min(8, rows.length),
        gradAccum: values['grad-accum'],
        warmup: values.warmup,
        schedule: values.schedule,
        seed: values.seed,
        checkpointEvery: values['checkpoint-every'],
        out: values.out,
        resume: values.resume,
        description: values.description,
        threads: values.threads,
      },
      (step, total, loss) => {
        if (step === total || step % Math.max(1, Math.floor(total / 20)) === 0) process.stderr.write(`sfn: step ${step}/${total} loss ${loss.toFixed(4)}\n`);
      },
    );
    process.stderr.write(`sfn: trained ${r.parameters} parameters (${r.kinds.join(', ')}) for ${r.steps} steps in ${((performance.now() - t0) / 1000).toFixed(1)} s; wrote ${r.files.join(', ')}\n`);
    // The whole curve only when short (the loss files hold it always).
    const curve = r.losses.length <= 32 ? { losses: r.losses } : { first_loss: r.losses[0] };
    process.stdout.write(
      JSON.stringify({ out: r.out, kind: r.kind, parameters: r.parameters, ...curve, final_loss: r.final_loss, steps_per_second: r.steps_per_second, tokens_per_second: r.tokens_per_second }) + '\n',
    );
  } catch (e) {
    if (e instanceof FreezeError) throw new UsageError(`--${e.param}: ${e.message}`);
    throw e;
  }
}

export async function cmdFreezeTable(args: string[]): Promise<void> {
  const { values } = parseOptions(declaration('freeze-table'), args);
  const dir = resolveModelDir(values.model);
  const tok = ModelTokenizer.fromDir(dir);
  let rows;
  let items;
  let tableRows = DEFAULT_TABLE2;
  try {
    rows = readTrainingFile(tok, values.data, values.seq);
    items = parseJsonl(readFileSync(values.eval, 'utf8'));
    if (values.rows) tableRows = FreezeTableRows.parse(JSON.parse(values.rows));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  mkdirSync(values.out, { recursive: true });
  const engine = await Engine.load(dir);
  try {
    const client = localClient(engine, tok, 8);
    const { lines, curves } = await freezeTable(
      tableRows,
      async (row) => {
        const names = trainableNames(engine.spec, parseTrainKinds(row.kinds));
        const pluggable = [...names].every((n) => PLUGGABLE_KINDS.includes(parseName(n)!.kind));
        const out = pluggable ? join(values.out, `${row.name}.safetensors`) : join(values.out, row.name);
        const result = await runFreeze(
          {
            model: dir,
            kinds: row.kinds,
            rows: rows!,
            steps: values.steps,
            lr: values.lr,
            wd: values.wd,
            batch: values.batch,
            gradAccum: 1,
            warmup: values.warmup,
            schedule: values.schedule,
            seed: values.seed,
            checkpointEvery: 0,
            out,
            resume: false,
            threads: values.threads,
          },
          (step, total, loss) => step === total && process.stderr.write(`sfn: ${row.name} (${row.kinds.join(', ')}): ${total} steps, loss ${loss.toFixed(4)}\n`),
        );
        const view = pluggable
          ? stethoscopeView(engine, undefined, undefined, [{ type: 'file', path: out, id: `trained:${out}` }])
          : stethoscopeView(engine, JSON.stringify([{ modules: MODULE_KINDS.filter((k) => !(engine.spec.tieWordEmbeddings && k === 'lm_head')), layers: 'all', from: out }]));
        return { result, view };
      },
      engine.baseView,
      client,
      tok,
      items,
      { maxTokens: values['max-tokens'], temperature: 0, chat: !values['no-chat'], levels: values.levels, concurrency: 8 },
    );
    const files = await writeFreezeTable(lines, curves, values.out);
    process.stderr.write(`sfn: wrote ${files.join(', ')} to ${values.out}\n`);
    process.stdout.write(freezeTableMarkdown(lines));
  } finally {
    await engine.release();
  }
}
