/**
 * What every `sfn` command shares: usage errors, the model directory (with the built-in model as default), typed
 * flag readers, and the view that `--plugin` / `--merge` / `--destroy` describe (the API's JSON).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import type { Engine } from '../engine/engine.ts';
import type { Device, EngineOptions, Quantize } from '../engine/session.ts';
import type { DonorRef } from '../views/build.ts';
import { resolveDestroy, resolveMerge } from '../views/resolve.ts';
import { SpecError } from '../views/spec.ts';
import { OverlayLoader, type OverlaySpec } from '../views/overlays.ts';

export class UsageError extends Error {}

export { BUILTIN_MODEL_DIR, BUILTIN_NAME, resolveModelDir } from '../model/builtin.ts';



export function int(v: string | undefined, name: string, dflt?: number): number | undefined {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new UsageError(`--${name} must be an integer, got "${v}"`);
  return n;
}

/** One of `allowed`: the flag, else the environment variable, else the first allowed value. */
export function choice<T extends string>(name: string, flag: string | undefined, env: string, allowed: readonly T[]): T {
  const v = flag ?? (process.env[env] || allowed[0]);
  if (!(allowed as readonly string[]).includes(v)) throw new UsageError(`--${name} must be ${allowed.join(' or ')}, got "${v}"`);
  return v as T;
}

/** --threads, --device (SFN_DEVICE) and --quantize (SFN_QUANTIZE), as `generate` and `logits` take them. */
export function engineOptions(values: { threads?: string; device?: string; quantize?: string }): EngineOptions {
  return {
    threads: int(values.threads, 'threads'),
    device: choice<Device>('device', values.device, 'SFN_DEVICE', ['cpu', 'cuda']),
    quantize: choice<Quantize>('quantize', values.quantize, 'SFN_QUANTIZE', ['none', 'int4']),
  };
}

export function num(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got "${v}"`);
  return n;
}

/** A donor for `--merge` on the command line: a safetensors file (a plugin) or a checkpoint directory. */
export function cliDonor(from: string, param: string): DonorRef {
  if (!existsSync(from)) throw new UsageError(`${param}: "${from}" does not exist`);
  if (statSync(from).isDirectory()) return { kind: 'dir', path: from, id: `dir:${resolvePath(from)}` };
  return { kind: 'file', path: from, id: createHash('sha256').update(readFileSync(from)).digest('hex') };
}

/** A flag's (or a file line's) JSON, or a usage error naming where it came from. */
export function json(text: string, flag: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${flag}: not JSON: ${(e as Error).message}`);
  }
}

/** `--ids 1,2,3` as token ids. */
export function tokenIds(v: string, flag = '--ids'): number[] {
  return v.split(',').map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`${flag}: "${s}" is not a token id`);
    return n;
  });
}

/** The view `--merge` / `--destroy` describe (the same JSON the API takes), or the backbone. */
export function stethoscopeView(engine: Engine, merge?: string, destroy?: string, plugins: OverlaySpec[] = []) {
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

