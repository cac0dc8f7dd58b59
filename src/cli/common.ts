/**
 * What every `sfn` command shares: usage errors, the model directory (with the built-in model as default), engine
 * options, JSON flags, and the view that `--plugin` / `--merge` / `--destroy` describe (the API's JSON).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import type { Engine } from '../engine/engine.ts';
import type { Device, EngineOptions, Quantize } from '../engine/session.ts';
import { sessionCacheSetting } from '../engine/session-cache.ts';
import { sessionCacheDir } from '../util/cache-dir.ts';
import type { DonorRef } from '../views/build.ts';
import { resolveDestroy, resolveMerge } from '../views/resolve.ts';
import { SpecError } from '../views/spec.ts';
import { OverlayLoader, type OverlaySpec } from '../views/overlays.ts';

export class UsageError extends Error {}

export { BUILTIN_MODEL_DIR, BUILTIN_NAME, resolveModelDir } from '../model/builtin.ts';

/** --threads, --device, --quantize and the session cache (declared once with the server's), as `generate` and `logits` take them. */
export function engineOptions(values: { threads?: number; device: string; quantize: string; 'session-cache'?: string; 'session-cache-gb': number }): EngineOptions {
  const sessionCache = sessionCacheSetting(values['session-cache'] ?? sessionCacheDir(), values['session-cache-gb'] * 1024 ** 3);
  return { threads: values.threads, device: values.device as Device, quantize: values.quantize as Quantize, sessionCache };
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
