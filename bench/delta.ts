/**
 * Delta benchmark: a delta report over two Qwen2.5-0.5B-shaped checkpoints (made once, cached outside the
 * repo), against the raw read speed of the same files in the same process, and its memory against the
 * largest tensor (the bound: memory follows the largest tensor, not the model). Prints JSON.
 *
 *   npm run bench:delta [-- --preset qwen2.5-0.5b]
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { checkpointFiles } from '../src/model/checkpoint.ts';
import { readSpec } from '../src/model/config.ts';
import { cachedModel, PRESETS, type Preset } from '../src/model/make-model.ts';
import { expectedParams } from '../src/model/names.ts';
import { checkpointSource, computeDelta } from '../src/stethoscope/delta.ts';

const { values } = parseArgs({ options: { preset: { type: 'string', default: 'qwen2.5-0.5b' } } });
const preset = values.preset as Preset;
if (!(preset in PRESETS)) throw new Error(`--preset must be one of ${Object.keys(PRESETS)}`);
const log = (s: string) => process.stderr.write(`bench: ${s}\n`);

/** Reads every byte of the files in 64 MiB chunks; returns bytes and seconds. */
function rawRead(files: string[]): { bytes: number; seconds: number } {
  const buf = Buffer.alloc(64 << 20);
  let bytes = 0;
  const t0 = performance.now();
  for (const f of files) {
    const fd = openSync(f, 'r');
    let n: number;
    while ((n = readSync(fd, buf, 0, buf.length, null)) > 0) bytes += n;
    closeSync(fd);
  }
  return { bytes, seconds: (performance.now() - t0) / 1000 };
}

async function main() {
  const a = cachedModel(preset, 0).dir;
  const b = cachedModel(preset, 1).dir;
  const files = [...checkpointFiles(a).files, ...checkpointFiles(b).files];
  const spec = readSpec(a).spec;
  const largest = Math.max(...[...expectedParams(spec).values()].map((s) => s.reduce((x, y) => x * y, 1)));
  rawRead(files); // warm the page cache so both measurements read from memory alike
  const raw1 = rawRead(files);
  const rssBefore = process.memoryUsage().rss;
  const t0 = performance.now();
  const report = await computeDelta(checkpointSource(a), checkpointSource(b), { bins: 50 });
  const deltaS = (performance.now() - t0) / 1000;
  const peak = process.resourceUsage().maxRSS * 1024;
  const raw2 = rawRead(files);
  const rawS = Math.min(raw1.seconds, raw2.seconds);
  log(`delta ${deltaS.toFixed(1)} s, raw read ${rawS.toFixed(1)} s`);
  process.stdout.write(
    JSON.stringify(
      {
        bench: 'delta',
        preset,
        modules: report.modules.length,
        file_bytes: raw1.bytes,
        delta: { seconds: +deltaS.toFixed(2), mb_per_s: +(raw1.bytes / 1e6 / deltaS).toFixed(1) },
        raw_read: { seconds: +rawS.toFixed(2), mb_per_s: +(raw1.bytes / 1e6 / rawS).toFixed(1) },
        ratio_delta_to_raw: +(rawS / deltaS).toFixed(3),
        memory: {
          rss_before_bytes: rssBefore,
          peak_rss_bytes: peak,
          growth_bytes: peak - rssBefore,
          largest_tensor_f32_bytes: largest * 4,
          growth_over_largest_tensor: +((peak - rssBefore) / (largest * 4)).toFixed(2),
          model_f32_bytes: [...expectedParams(spec).values()].reduce((x, s) => x + s.reduce((p, q) => p * q, 1) * 4, 0),
        },
      },
      null,
      2,
    ) + '\n',
  );
}

await main();
