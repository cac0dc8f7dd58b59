/**
 * Freeze training speed: median time of one training step (forward + backward of the training graph) for the
 * built-in model and a Qwen2.5-0.5B-shaped checkpoint (made once, cached outside the repo), with o_proj + norms
 * trainable and with every kind, against PyTorch on the same CPU, the same shapes and the same trainable tensors
 * (bench/freeze_torch.py, run with Debian's python3-torch when it is installed; the row says so when it is not).
 * Rounds alternate sfn and torch so that the machine's drift hits both. Prints JSON.
 *
 *   npm run bench:freeze [-- --steps 5 --rounds 2 --presets builtin,qwen2.5-0.5b] [--no-torch]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BUILTIN_MODEL_DIR } from '../src/cli/common.ts';
import { Rng } from '../src/util/random.ts';
import { Trainer } from '../src/engine/trainer.ts';
import { readSpec } from '../src/model/config.ts';
import { cachedModel, type Preset } from '../src/model/make-model.ts';
import { parseTrainKinds, trainableNames } from '../src/stethoscope/freeze-sets.ts';

const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '2' },
    presets: { type: 'string', default: 'builtin,qwen2.5-0.5b' },
    'no-torch': { type: 'boolean', default: false },
  },
});
const steps = Number(values.steps);
const rounds = Number(values.rounds);
const threads = availableParallelism();
const log = (s: string) => process.stderr.write(`bench: ${s}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const SHAPES: Record<string, { batch: number; seq: number }> = { builtin: { batch: 16, seq: 64 }, 'qwen2.5-0.5b': { batch: 2, seq: 128 } };
// Debian's python3-torch lives in the system interpreter, which a pyenv or venv python3 may shadow.
const python = ['python3', '/usr/bin/python3'].find((p) => spawnSync(p, ['-c', 'import torch, numpy'], { encoding: 'utf8' }).status === 0);
const torchOk = python !== undefined && !values['no-torch'];

async function sfnSteps(dir: string, kinds: string[], batch: number, seq: number): Promise<number[]> {
  const spec = readSpec(dir).spec;
  const trainer = await Trainer.load(dir, trainableNames(spec, parseTrainKinds(kinds)), { threads });
  const rng = new Rng(0);
  const rows = Array.from({ length: batch }, () => {
    const ids = Array.from({ length: seq }, () => 3 + (rng.nextUint32() % (spec.vocabSize - 3)));
    return { ids, targets: ids.map(() => true) };
  });
  const times: number[] = [];
  try {
    for (let i = 0; i <= steps; i++) {
      const t0 = performance.now();
      await trainer.step(rows);
      if (i > 0) times.push((performance.now() - t0) / 1000);
    }
  } finally {
    await trainer.release();
  }
  return times;
}

function torchSteps(dir: string, kinds: string[], batch: number, seq: number): number | null {
  if (!torchOk) return null;
  const out = execFileSync(python!, [join(import.meta.dirname, 'freeze_torch.py'), dir, kinds.join(','), String(batch), String(seq), String(steps), String(threads)], {
    encoding: 'utf8',
    maxBuffer: 1 << 20,
  });
  return JSON.parse(out.trim().split('\n').at(-1)!).median_s;
}

async function main() {
  const rows = [];
  for (const preset of values.presets!.split(',')) {
    const dir = preset === 'builtin' ? BUILTIN_MODEL_DIR : cachedModel(preset as Preset, 0).dir;
    const { batch, seq } = SHAPES[preset] ?? { batch: 4, seq: 128 };
    const result: Record<string, unknown> = { model: preset, batch, seq };
    const medians: Record<string, number> = {};
    for (const kinds of [['o_proj', 'norms'], ['all']]) {
      const key = kinds.join('+');
      const ours: number[] = [];
      const theirs: number[] = [];
      for (let r = 0; r < rounds; r++) {
        log(`${preset} ${key}: round ${r + 1}/${rounds}`);
        ours.push(median(await sfnSteps(dir, kinds, batch, seq)));
        const t = torchSteps(dir, kinds, batch, seq);
        if (t !== null) theirs.push(t);
      }
      medians[key] = median(ours);
      result[key] = {
        sfn_step_s: +median(ours).toFixed(4),
        sfn_tokens_per_s: +((batch * seq) / median(ours)).toFixed(1),
        torch_step_s: theirs.length ? +median(theirs).toFixed(4) : null,
        torch_tokens_per_s: theirs.length ? +((batch * seq) / median(theirs)).toFixed(1) : null,
        sfn_vs_torch: theirs.length ? +(median(theirs) / median(ours)).toFixed(3) : values['no-torch'] ? 'skipped (--no-torch)' : 'python3-torch not installed (apt-get install python3-torch)',
        rounds: ours.map((x, i) => ({ sfn_s: +x.toFixed(4), torch_s: theirs[i] === undefined ? null : +theirs[i].toFixed(4) })),
      };
    }
    result.o_proj_speedup_over_all = +(medians.all / medians['o_proj+norms']).toFixed(3);
    rows.push(result);
  }
  process.stdout.write(JSON.stringify({ bench: 'freeze', threads, steps, rounds, rows }, null, 2) + '\n');
}

await main();
