/**
 * The plugin store's lock: a file created exclusively, naming its holder (`host~pid`); one left by a process
 * known to be gone, or older than any holder keeps it, is broken. Works across replicas sharing a volume.
 */
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';

export const HOST = hostname().replace(/[^A-Za-z0-9.-]/g, '_');

/** The lock is held for renames and small writes only; one older than this was left by a dead process. */
const LOCK_STALE_MS = 30_000;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Whether a temporary or lock name `host~pid~...` belongs to a process known to be gone: one of this host's
 * that has exited, or this very pid (a restarted container's pid 1 had the same pid as its predecessor).
 */
export function ownerGone(name: string): boolean {
  const [host, pid] = name.replace(/^\./, '').split('~');
  return host === HOST && /^\d+$/.test(pid ?? '') && (Number(pid) === process.pid || !alive(Number(pid)));
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Runs fn holding the lock file at `path` (`what` names the locked thing in messages). */
export function withLockFile<T>(path: string, what: string, log: (s: string) => void, fn: () => T): T {
  const me = `${HOST}~${process.pid}`;
  const t0 = Date.now();
  for (;;) {
    try {
      writeFileSync(path, me, { flag: 'wx' });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let holder: string;
    let age: number;
    try {
      holder = readFileSync(path, 'utf8');
      age = Date.now() - statSync(path).mtimeMs;
    } catch {
      continue; // released meanwhile
    }
    if (ownerGone(holder) || age > LOCK_STALE_MS) {
      log(`sfn: ${what}: breaking a lock left by ${holder || 'an unknown process'} (${Math.round(age / 1000)} s old)`);
      rmSync(path, { force: true });
      continue;
    }
    if (Date.now() - t0 > 2 * LOCK_STALE_MS) throw new Error(`${what} stays locked by ${holder}`);
    sleepSync(5);
  }
  try {
    return fn();
  } finally {
    rmSync(path, { force: true });
  }
}
