/**
 * The Node 24 binary (the Docker image's runtime), from the npm registry's `node@24` package through npx's cache:
 * the machines here run Node 20, and the registry is the one network they reach.
 */
import { execFile } from 'node:child_process';
import { dirname } from 'node:path';
import { promisify } from 'node:util';

let found: Promise<string> | null = null;

/** The absolute path of a Node 24 executable; fails with npx's output when it cannot be had. */
export function node24(): Promise<string> {
  found ??= promisify(execFile)('npx', ['-y', '-p', 'node@24', '--', 'node', '-p', 'process.execPath'], {
    env: { ...process.env, npm_config_prefer_offline: 'true', npm_config_loglevel: 'error' },
  }).then(({ stdout }) => {
    const path = stdout.trim().split('\n').at(-1)!;
    if (!path.startsWith('/')) throw new Error(`npx -p node@24 printed no path: ${stdout}`);
    return path;
  });
  return found;
}

/** PATH with Node 24's folder first, so `node` and `npx` in child processes are Node 24's. */
export async function pathWithNode24(): Promise<string> {
  return `${dirname(await node24())}:${process.env.PATH}`;
}
