/**
 * The machine's streaming read bandwidth from bench/stream-read.c, built here with the system's C compiler
 * (cached under the sfn cache directory by a hash of the source). A batch-1 decode step reads every weight
 * once, so this is about its ceiling (the bandwidth moves from minute to minute: an engine may read faster than a
 * median taken around it): both engines' decode is reported against it in the same run. onnxruntime's own MatMul
 * (bench:engine's roofline) is not a ceiling: it is the kernel sfn decodes with.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cacheDir } from '../src/util/cache-dir.ts';
import { median } from './stats.ts';

const SOURCE = new URL('./stream-read.c', import.meta.url).pathname;

/**
 * The probe's binary, built on first use into `dir` (by `cc`, or $CC); the compiler's complaint where it fails
 * (nothing is left behind then).
 */
export function streamReadBinary(dir = join(cacheDir(), 'bench'), cc = process.env.CC ?? 'cc'): { path: string } | { error: string } {
  const source = readFileSync(SOURCE);
  const path = join(dir, `stream-read-${createHash('sha256').update(source).digest('hex').slice(0, 16)}`);
  if (existsSync(path)) return { path };
  mkdirSync(dir, { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    execFileSync(cc, ['-O2', '-march=native', '-pthread', SOURCE, '-o', tmp], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    rmSync(tmp, { force: true });
    const said = String((err as { stderr?: Buffer }).stderr ?? '').trim();
    return { error: (said || (err as Error).message).split('\n')[0] };
  }
  renameSync(tmp, path);
  return { path };
}

/** Median GB/s of `reps` passes of `threads` threads over `mib` MiB, in huge pages or 4 KiB ones. */
export function streamRead(binary: string, opts: { mib: number; threads: number; reps: number; huge: boolean }): number {
  const out = execFileSync(binary, [String(opts.mib), String(opts.threads), String(opts.reps), opts.huge ? '1' : '0'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return median(out.trim().split('\n').map(Number));
}
