/**
 * The plugin store's lock, from proper-lockfile: a directory created atomically (mkdir works on NFS, the usual
 * backing of a shared volume, where O_EXCL may not), its mtime refreshed while held, a holder that stopped
 * refreshing it broken as stale, and a compromised lock (taken over or removed) reported instead of going on.
 * Waiting is asynchronous: nothing sleeps on the HTTP thread. An owner file beside it names the holder
 * (`host~pid`), so a lock left by a process of this host known to be dead is broken at once.
 */
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import lockfile from 'proper-lockfile';

export const HOST = hostname().replace(/[^A-Za-z0-9.-]/g, '_');

/** A holder that has not refreshed the lock for this long is gone (it refreshes every STALE_MS / 2). */
const STALE_MS = 10_000;

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

/** The holder of a lock at `path`: named in `<path>.owner` beside the lock directory (or, from older versions, in a plain lock file). */
function holderOf(path: string): string | null {
  try {
    return readFileSync(statSync(path).isDirectory() ? `${path}.owner` : path, 'utf8').trim();
  } catch {
    return null;
  }
}

/** Locks this process holds now: its own pid in an owner file is then a live holder, not a predecessor's. */
const heldHere = new Set<string>();

/** Runs fn holding the lock at `path` (`what` names the locked thing in messages). */
export async function withLockFile<T>(path: string, what: string, log: (s: string) => void, fn: () => T | Promise<T>): Promise<T> {
  const holder = holderOf(path);
  if (holder !== null && !heldHere.has(path) && ownerGone(holder)) {
    log(`sfn: ${what}: breaking a lock left by ${holder} (that process has exited)`);
    rmSync(path, { recursive: true, force: true });
    rmSync(`${path}.owner`, { force: true });
  }
  let compromised: Error | null = null;
  let release: () => Promise<void>;
  try {
    release = await lockfile.lock(path, {
      lockfilePath: path,
      realpath: false,
      stale: STALE_MS,
      // Long enough for a holder that is merely slow (a scan's renames, a commit), short enough for an upload.
      retries: { retries: 200, factor: 1.2, minTimeout: 5, maxTimeout: 250 },
      onCompromised: (e) => {
        compromised = e;
        log(`sfn: ${what}: WARNING: the lock was compromised (${e.message})`);
      },
    });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOCKED') throw new Error(`${what} stays locked by ${holderOf(path) ?? 'another process'}`);
    throw e;
  }
  heldHere.add(path);
  try {
    writeFileSync(`${path}.owner`, `${HOST}~${process.pid}`);
    const out = await fn();
    if (compromised) throw new Error(`${what}: the lock was lost while held (${(compromised as Error).message}); the operation may not have completed`);
    return out;
  } finally {
    rmSync(`${path}.owner`, { force: true });
    heldHere.delete(path);
    await release().catch(() => {});
  }
}
