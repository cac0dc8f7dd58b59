/**
 * Checkpoint directories a request may name: only inside the configured model roots (`--model-root`), with
 * no escape through `..`, absolute paths or symbolic links.
 */
import { existsSync, realpathSync, statSync } from 'node:fs';
import { join, resolve, sep } from 'node:path';
import { checkpointFiles } from '../model/checkpoint.ts';
import { ApiError, badRequest } from './errors.ts';

/** The checkpoint directory `p` names under one of the roots, or undefined. */
export function findUnderRoots(roots: string[], p: string): string | undefined {
  for (const root of roots) {
    const r = resolve(root);
    const full = resolve(r, p);
    if (!(full === r || full.startsWith(r + sep)) || !existsSync(join(full, 'config.json')) || !statSync(full).isDirectory()) continue;
    // Compared as the filesystem resolves them: a symbolic link inside a root must not lead out of it.
    // Files too: a Hugging Face cache links weights to ../../blobs, which is fine while it stays in the root.
    const realRoot = realpathSync(r);
    const inside = (q: string) => {
      const real = realpathSync(q);
      return real === realRoot || real.startsWith(realRoot + sep);
    };
    let files: string[];
    try {
      files = checkpointFiles(full).files;
    } catch {
      files = [];
    }
    if (inside(full) && [join(full, 'config.json'), ...files].every(inside)) return realpathSync(full);
  }
  return undefined;
}

/** Like findUnderRoots, but a 403 when no roots are configured and a 400 naming `param` when not found. */
export function requireUnderRoots(roots: string[], p: string, param: string): string {
  if (roots.length === 0) throw new ApiError(403, 'no model roots are configured (--model-root / SFN_MODEL_ROOTS)', 'permission_error', 'no_model_roots', param);
  const dir = findUnderRoots(roots, p);
  if (!dir) throw badRequest(`${param}: "${p}" is not a checkpoint directory under the model roots`, param);
  return dir;
}
