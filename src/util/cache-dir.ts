/** sfn's cache root: generated models and optimised sessions live under it, outside any repository. */
import { join } from 'node:path';

export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.SFN_CACHE_DIR ?? join(env.XDG_CACHE_HOME ?? join(env.HOME ?? '/tmp', '.cache'), 'sfn');
}

/** Where optimised serving sessions are cached when `--session-cache` names no directory. */
export function sessionCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(cacheDir(env), 'sessions');
}
