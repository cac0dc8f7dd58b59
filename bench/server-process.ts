/** `sfn serve` as a child process for the load and fault scripts: started, waited for, and never left behind. */
import { type ChildProcess, spawn } from 'node:child_process';
import { withMallocTuning } from '../bin/malloc.js';

export interface ServerProcess {
  child: ChildProcess;
  url: string;
  /** Seconds from spawn to "model loaded". */
  readySeconds: number;
}

/** Spawns `sfn serve ARGS` and resolves once the model is loaded; whatever ends this script kills it. */
export async function serverProcess(args: string[], timeoutMs: number): Promise<ServerProcess> {
  // glibc's allocator as bin/sfn.js tunes it itself on Node 24 (it cannot re-execute on Node 20).
  const env = withMallocTuning(process.env) ?? process.env;
  const child = spawn(process.execPath, ['bin/sfn.js', 'serve', ...args], { cwd: new URL('..', import.meta.url).pathname, stdio: ['ignore', 'pipe', 'pipe'], env });
  process.once('exit', () => child.exitCode === null && child.kill('SIGKILL'));
  process.once('SIGINT', () => process.exit(130));
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const t0 = Date.now();
  while (!/model loaded/.test(out)) {
    if (Date.now() - t0 > timeoutMs || child.exitCode !== null) throw new Error(`the server did not start:\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, url: /listening on (http:\/\/\S+),/.exec(out)![1], readySeconds: (Date.now() - t0) / 1000 };
}
