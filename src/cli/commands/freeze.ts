/**
 * `sfn grads` (the gradients of one sequence, to check against PyTorch from outside) and `sfn freeze` (a Freeze
 * run: chosen module kinds fine-tuned, written as a plugin).
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
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
import { localLab } from '../../stethoscope/local-lab.ts';
import { choice, int, num, resolveModelDir, stethoscopeView, tokenIds, UsageError } from '../common.ts';

const kindsOf = (v: string | undefined) => (v ?? '').split(',').map((s) => s.trim()).filter(Boolean);

export async function cmdGrads(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { model: { type: 'string' }, ids: { type: 'string' }, kinds: { type: 'string' }, out: { type: 'string' }, threads: { type: 'string' } } });
  if (!values.ids || !values.kinds || !values.out) throw new UsageError('grads needs --ids 1,2,3 --kinds o_proj,norms[,embed,head,...] --out FILE.safetensors');
  const dir = resolveModelDir(values.model);
  const { spec } = readSpec(dir);
  let names: Set<string>;
  try {
    names = trainableNames(spec, parseTrainKinds(kindsOf(values.kinds)));
  } catch (e) {
    throw new UsageError(`--kinds: ${(e as Error).message}`);
  }
  const seq = tokenIds(values.ids);
  if (seq.length < 2) throw new UsageError('--ids: give at least two tokens (one prediction)');
  const trainer = await Trainer.load(dir, names, { threads: int(values.threads, 'threads') });
  try {
    // labels = the ids shifted by one: transformers' model(ids, labels=ids).loss
    const r = await trainer.step([{ ids: seq, targets: seq.map(() => true) }]);
    const shapes = expectedParams(spec);
    writeSafetensors(values.out, [...r.grads].map(([n, g]) => ({ name: n, dtype: 'F32' as const, shape: shapes.get(n)!, data: new Uint8Array(g.buffer, g.byteOffset, g.byteLength) })));
    process.stdout.write(JSON.stringify({ loss: r.loss, tensors: r.grads.size }) + '\n');
  } finally {
    await trainer.release();
  }
}

export async function cmdFreeze(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' }, data: { type: 'string' }, ids: { type: 'string' }, kinds: { type: 'string' }, steps: { type: 'string' }, lr: { type: 'string' }, wd: { type: 'string' },
      batch: { type: 'string' }, seq: { type: 'string' }, warmup: { type: 'string' }, schedule: { type: 'string' }, 'grad-accum': { type: 'string' }, seed: { type: 'string' },
      'checkpoint-every': { type: 'string' }, resume: { type: 'boolean', default: false }, out: { type: 'string' }, description: { type: 'string' }, threads: { type: 'string' },
    },
  });
  if (!values.kinds || !values.out || (values.data === undefined) === (values.ids === undefined)) {
    throw new UsageError('freeze needs --kinds o_proj,norms --out PLUGIN.safetensors (or DIR) and one of --data SET.jsonl and --ids 1,2,3');
  }
  const dir = resolveModelDir(values.model);
  const seq = int(values.seq, 'seq', 512)!;
  let rows;
  try {
    if (values.ids) {
      const fixed = tokenIds(values.ids);
      rows = [{ ids: fixed, targets: fixed.map(() => true) }];
    } else rows = readTrainingFile(ModelTokenizer.fromDir(dir), values.data!, seq);
  } catch (e) {
    if (e instanceof FreezeError || e instanceof UsageError) throw new UsageError(`${values.data ?? '--ids'}: ${e.message}`);
    throw e;
  }
  const steps = int(values.steps, 'steps', 100)!;
  const t0 = performance.now();
  try {
    const r = await runFreeze(
      {
        model: dir,
        kinds: kindsOf(values.kinds),
        rows,
        steps,
        lr: num(values.lr, 'lr') ?? 1e-4,
        wd: num(values.wd, 'wd') ?? 0,
        batch: int(values.batch, 'batch', Math.min(8, rows.length))!,
        gradAccum: int(values['grad-accum'], 'grad-accum', 1)!,
        warmup: int(values.warmup, 'warmup', 0)!,
        schedule: choice('schedule', values.schedule, 'SFN_FREEZE_SCHEDULE', ['constant', 'cosine'] as const),
        seed: int(values.seed, 'seed', 0)!,
        checkpointEvery: int(values['checkpoint-every'], 'checkpoint-every', 0)!,
        out: values.out,
        resume: values.resume!,
        description: values.description,
        threads: int(values.threads, 'threads'),
      },
      (step, total, loss) => {
        if (step === total || step % Math.max(1, Math.floor(total / 20)) === 0) process.stderr.write(`sfn: step ${step}/${total} loss ${loss.toFixed(4)}\n`);
      },
    );
    process.stderr.write(`sfn: trained ${r.parameters} parameters (${r.kinds.join(', ')}) for ${r.steps} steps in ${((performance.now() - t0) / 1000).toFixed(1)} s; wrote ${r.files.join(', ')}\n`);
    // The whole curve only when short (the loss files hold it always).
    const curve = r.losses.length <= 32 ? { losses: r.losses } : { first_loss: r.losses[0] };
    process.stdout.write(JSON.stringify({ out: r.out, kind: r.kind, parameters: r.parameters, ...curve, final_loss: r.final_loss, steps_per_second: r.steps_per_second, tokens_per_second: r.tokens_per_second }) + '\n');
  } catch (e) {
    if (e instanceof FreezeError) throw new UsageError(`--${e.param}: ${e.message}`);
    throw e;
  }
}

export async function cmdFreezeTable(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' }, data: { type: 'string' }, eval: { type: 'string' }, out: { type: 'string' }, rows: { type: 'string' }, steps: { type: 'string' }, lr: { type: 'string' },
      wd: { type: 'string' }, batch: { type: 'string' }, seq: { type: 'string' }, warmup: { type: 'string' }, schedule: { type: 'string' }, seed: { type: 'string' },
      'max-tokens': { type: 'string' }, levels: { type: 'boolean', default: false }, 'no-chat': { type: 'boolean', default: false }, threads: { type: 'string' },
    },
  });
  if (!values.data || !values.eval || !values.out) throw new UsageError('freeze-table needs --data TRAIN.jsonl --eval SET.jsonl --out DIR');
  const dir = resolveModelDir(values.model);
  const tok = ModelTokenizer.fromDir(dir);
  let rows;
  let items;
  let tableRows = DEFAULT_TABLE2;
  try {
    rows = readTrainingFile(tok, values.data, int(values.seq, 'seq', 512)!);
    items = parseJsonl(readFileSync(values.eval, 'utf8'));
    if (values.rows) tableRows = FreezeTableRows.parse(JSON.parse(values.rows));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  mkdirSync(values.out, { recursive: true });
  const engine = await Engine.load(dir);
  try {
    const lab = localLab(engine, tok, 8);
    const { lines, curves } = await freezeTable(
      tableRows,
      async (row) => {
        const names = trainableNames(engine.spec, parseTrainKinds(row.kinds));
        const pluggable = [...names].every((n) => PLUGGABLE_KINDS.includes(parseName(n)!.kind));
        const out = pluggable ? join(values.out!, `${row.name}.safetensors`) : join(values.out!, row.name);
        const result = await runFreeze(
          {
            model: dir, kinds: row.kinds, rows: rows!, steps: int(values.steps, 'steps', 100)!, lr: num(values.lr, 'lr') ?? 1e-3, wd: num(values.wd, 'wd') ?? 0,
            batch: int(values.batch, 'batch', 8)!, gradAccum: 1, warmup: int(values.warmup, 'warmup', 0)!, schedule: choice('schedule', values.schedule, 'SFN_FREEZE_SCHEDULE', ['constant', 'cosine'] as const),
            seed: int(values.seed, 'seed', 0)!, checkpointEvery: 0, out, resume: false, threads: int(values.threads, 'threads'),
          },
          (step, total, loss) => step === total && process.stderr.write(`sfn: ${row.name} (${row.kinds.join(', ')}): ${total} steps, loss ${loss.toFixed(4)}\n`),
        );
        const view = pluggable
          ? stethoscopeView(engine, undefined, undefined, [{ type: 'file', path: out, id: `trained:${out}` }])
          : stethoscopeView(engine, JSON.stringify([{ modules: MODULE_KINDS.filter((k) => !(engine.spec.tieWordEmbeddings && k === 'lm_head')), layers: 'all', from: out }]));
        return { result, view };
      },
      engine.baseView,
      lab,
      tok,
      items,
      { maxTokens: int(values['max-tokens'], 'max-tokens', 64)!, temperature: 0, chat: !values['no-chat'], levels: values.levels!, concurrency: 8 },
    );
    const files = await writeFreezeTable(lines, curves, values.out);
    process.stderr.write(`sfn: wrote ${files.join(', ')} to ${values.out}\n`);
    process.stdout.write(freezeTableMarkdown(lines));
  } finally {
    await engine.release();
  }
}
