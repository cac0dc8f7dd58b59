/**
 * The serving session as onnxruntime optimised it, kept on disk: the model after graph optimisation, with its
 * initializers and their prepacked forms in one data file that onnxruntime maps instead of copying. Building
 * the session from the checkpoint spends most of a load copying, optimising and prepacking weights (47 s of a
 * 1.5B load); a cached one opens in ~2 s at 0.5B (12 s and more at 1.5B, most of it onnxruntime taking in the
 * saved prepacked weights) and its weights are paged in from the file as they are used.
 *
 * An entry is keyed by everything its bytes depend on: the backbone's fingerprint, the session's kind and
 * quantisation, onnxruntime's version, this CPU (prepacked layouts and the optimiser's choices are ISA-specific)
 * and the source of the code that builds the graph. It is written into a temporary directory and renamed into
 * place whole, with `entry.json` (the files and their sizes) written last: a directory without it, or whose
 * files do not have those sizes, is not an entry. Least recently used entries go past a size budget.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, statfsSync, utimesSync, writeFileSync } from 'node:fs';
import { arch, cpus } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { z } from 'zod';

/** Bumped when an entry's layout changes (a change to the graph's code changes the key by itself). */
const FORMAT = 1;
const MODEL = 'model.onnx';
const DATA = 'weights.data';
const ENTRY = 'entry.json';
/** The model as sfn built it, which onnxruntime optimises into the entry; removed before the entry is committed. */
export const SOURCE_MODEL = 'source.onnx';
export const SOURCE_DATA = 'source.data';
/** A temporary directory this old is a write that died (a 1.5B entry took 1.5 minutes to write). */
const STALE_TMP_MS = 60 * 60 * 1000;

/** The sources whose text decides what a session's graph is. */
const GRAPH_SOURCES = ['graph.ts', 'onnx.ts', 'quantize.ts', 'session.ts', 'layout.ts', 'session-cache.ts'];

const Entry = z.object({
  format: z.literal(FORMAT),
  key: z.string(),
  files: z.record(z.string(), z.number().int().min(0)),
  /** What the key was made of, for someone looking at the directory. */
  made: z.record(z.string(), z.unknown()),
});

/** The engine's setting from a `--session-cache` value ('off', or a directory) and a budget in bytes. */
export function sessionCacheSetting(dir: string, maxBytes: number): SessionCacheOptions | undefined {
  return dir === 'off' ? undefined : { dir, maxBytes };
}

export interface SessionCacheOptions {
  /** The directory that holds the entries. */
  dir: string;
  /** Entries past this many bytes in all are removed, least recently used first (never the one just written). */
  maxBytes: number;
}

/** Where onnxruntime writes a new entry: `optimizedModelFilePath` and the data file's name beside it. */
export interface PendingEntry {
  key: string;
  tmp: string;
  modelPath: string;
  dataName: string;
}

let codeHash: string | undefined;
/** sha256 over the graph-building sources: editing any of them makes every earlier entry a miss. */
function graphCodeHash(): string {
  if (codeHash) return codeHash;
  const h = createHash('sha256');
  for (const f of GRAPH_SOURCES) h.update(f).update(readFileSync(new URL(`./${f}`, import.meta.url)));
  codeHash = h.digest('hex');
  return codeHash;
}

/** The CPU as the optimiser and the prepacking kernels see it: model and feature flags. */
function cpuIdentity(): string {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const first = info.split('\n\n')[0];
    const field = (k: string) => first.match(new RegExp(`^${k}\\s*:\\s*(.*)$`, 'm'))?.[1] ?? '';
    return `${arch()} ${field('vendor_id')} ${field('model name')} ${field('flags')}`;
  } catch {
    return `${arch()} ${cpus()[0]?.model ?? ''}`;
  }
}

export class SessionCache {
  readonly dir: string;
  private readonly maxBytes: number;
  private readonly warn: (message: string) => void;

  constructor(options: SessionCacheOptions, warn: (message: string) => void) {
    this.dir = options.dir;
    this.maxBytes = options.maxBytes;
    this.warn = warn;
  }

  /** The key of a session over this backbone, built the way `made` says (kind, quantisation). */
  key(fingerprint: string, made: Record<string, string>): { key: string; made: Record<string, unknown> } {
    const all = {
      format: FORMAT,
      fingerprint,
      ...made,
      onnxruntime: ort.env.versions.common,
      cpu: createHash('sha256').update(cpuIdentity()).digest('hex').slice(0, 16),
      code: graphCodeHash().slice(0, 16),
    };
    return { key: createHash('sha256').update(JSON.stringify(all)).digest('hex').slice(0, 32), made: all };
  }

  /** The entry's model file when it is whole (and marks it used); null otherwise. */
  find(key: string): string | null {
    const dir = join(this.dir, key);
    const entryPath = join(dir, ENTRY);
    if (!existsSync(dir)) return null;
    try {
      // Entries arrive whole (renamed in with entry.json): a directory without one lost it since.
      if (!existsSync(entryPath)) throw new Error(`it has no ${ENTRY}`);
      const entry = this.readEntry(key);
      if (entry.key !== key) throw new Error(`it names key ${entry.key}`);
      for (const [f, size] of Object.entries(entry.files)) {
        const actual = statSync(join(dir, f)).size;
        if (actual !== size) throw new Error(`${f} has ${actual} bytes, ${size} were written`);
      }
      const now = new Date();
      utimesSync(entryPath, now, now);
      return join(dir, MODEL);
    } catch (e) {
      this.discard(key, (e as Error).message);
      return null;
    }
  }

  /** Removes a broken entry. */
  discard(key: string, why: string): void {
    this.warn(`sfn: warning: the session cache entry ${join(this.dir, key)} is unusable (${why}); rebuilding it`);
    this.remove(key);
  }

  private readEntry(key: string): z.infer<typeof Entry> {
    return Entry.parse(JSON.parse(readFileSync(join(this.dir, key, ENTRY), 'utf8')));
  }

  /**
   * Moves an entry aside (so that no reader sees it half-deleted), then deletes it; false when another process
   * removed or replaced it meanwhile. A process that has it open keeps its mapping until it closes.
   */
  private remove(key: string): boolean {
    const aside = join(this.dir, `.tmp-removed-${key}-${randomBytes(4).toString('hex')}`);
    try {
      renameSync(join(this.dir, key), aside);
    } catch {
      return false;
    }
    try {
      rmSync(aside, { recursive: true, force: true });
    } catch {
      // Left aside: the next write's sweep of old temporaries takes it.
    }
    return true;
  }

  /**
   * A temporary directory for onnxruntime to write a new entry into, or null (with a warning) when the disk
   * lacks room for `bytes` (the source model's weights, then the initializers and their prepacked copies) or the
   * directory cannot be written.
   */
  begin(key: string, bytes: number): PendingEntry | null {
    try {
      mkdirSync(this.dir, { recursive: true });
      this.sweepTemporaries();
      const { bavail, bsize } = statfsSync(this.dir);
      const free = bavail * bsize;
      if (free < bytes + 1024 ** 3) {
        this.warn(`sfn: warning: not caching the optimised session: ${this.dir} has ${(free / 1024 ** 3).toFixed(1)} GiB free, it needs about ${(bytes / 1024 ** 3).toFixed(1)}`);
        return null;
      }
      const tmp = join(this.dir, `.tmp-${key}-${process.pid}-${randomBytes(4).toString('hex')}`);
      mkdirSync(tmp);
      return { key, tmp, modelPath: join(tmp, MODEL), dataName: DATA };
    } catch (e) {
      this.warn(`sfn: warning: not caching the optimised session: ${(e as Error).message}`);
      return null;
    }
  }

  /** Makes what onnxruntime wrote an entry (durably, then renamed into place), and prunes to the budget. */
  commit(p: PendingEntry, made: Record<string, unknown>): boolean {
    try {
      const files: Record<string, number> = {};
      // Unlinked while onnxruntime still maps it: the mapping keeps the data until the session is released.
      for (const f of [SOURCE_MODEL, SOURCE_DATA]) rmSync(join(p.tmp, f), { force: true });
      for (const f of readdirSync(p.tmp)) {
        const path = join(p.tmp, f);
        const fd = openSync(path, 'r+');
        try {
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
        files[f] = statSync(path).size;
      }
      if (!(MODEL in files)) throw new Error('onnxruntime wrote no model file');
      writeFileSync(join(p.tmp, ENTRY), `${JSON.stringify({ format: FORMAT, key: p.key, files, made }, null, 2)}\n`);
      try {
        renameSync(p.tmp, join(this.dir, p.key));
      } catch (e) {
        // Another process wrote the same entry first: theirs stays.
        if (!['ENOTEMPTY', 'EEXIST'].includes((e as NodeJS.ErrnoException).code ?? '')) throw e;
        rmSync(p.tmp, { recursive: true, force: true });
      }
      this.prune(p.key);
      return true;
    } catch (e) {
      this.abandon(p);
      this.warn(`sfn: warning: the optimised session was not cached: ${(e as Error).message}`);
      return false;
    }
  }

  abandon(p: PendingEntry): void {
    rmSync(p.tmp, { recursive: true, force: true });
  }

  /** Every whole entry: key, bytes and last use. */
  entries(): { key: string; bytes: number; used: number }[] {
    if (!existsSync(this.dir)) return [];
    const out: { key: string; bytes: number; used: number }[] = [];
    for (const name of readdirSync(this.dir)) {
      if (name.startsWith('.')) continue;
      try {
        const entry = this.readEntry(name);
        out.push({ key: name, bytes: Object.values(entry.files).reduce((a, b) => a + b, 0), used: statSync(join(this.dir, name, ENTRY)).mtimeMs });
      } catch {
        // Not an entry (being renamed in or out, or not ours): left alone.
      }
    }
    return out;
  }

  /** Removes least recently used entries until the rest fit the budget; `keep` stays whatever its size. */
  private prune(keep: string): void {
    const oldestFirst = this.entries().sort((a, b) => a.used - b.used);
    let total = oldestFirst.reduce((a, e) => a + e.bytes, 0);
    for (const e of oldestFirst) {
      if (total <= this.maxBytes) break;
      if (e.key !== keep && this.remove(e.key)) total -= e.bytes;
    }
  }

  /** Temporary directories of writes that died (a crash or a kill mid-write). */
  private sweepTemporaries(): void {
    const now = Date.now();
    for (const name of readdirSync(this.dir)) {
      if (!name.startsWith('.tmp-')) continue;
      const path = join(this.dir, name);
      try {
        if (now - statSync(path).mtimeMs > STALE_TMP_MS) rmSync(path, { recursive: true, force: true });
      } catch {
        // Gone already.
      }
    }
  }
}
