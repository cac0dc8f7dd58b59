/**
 * The plugin store on disk. Content-addressed blobs (`blobs/<sha256>.safetensors`) and one manifest per
 * plugin id (`plugins/<id>.json`) naming its blob. Every write goes temp file -> fsync -> rename -> fsync of
 * the directory, and the manifest is written last: a crash leaves the old version or nothing, never a
 * partial plugin. At start the store is scanned; manifests whose blob is missing or does not hash to the
 * manifest, unreadable manifests, unreferenced blobs and temporary leftovers go to `quarantine/`, logged.
 *
 * Several servers may share one store (replicas on a ReadWriteMany volume): commits, deletes and the scan's
 * repairs hold a lock file, lookups notice other processes' manifests through the directory's mtime, and
 * temporary files carry their writer's host and pid so that a scan only takes those of dead writers.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { fsyncDir, fsyncFileAsync } from '../model/atomic.ts';
import { writeFileAtomic } from '../model/atomic.ts';
import { HOST, ownerGone, withLockFile } from './store-lock.ts';
import type { PluginSummary } from './validate.ts';

export const PLUGIN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export const Manifest = z.object({
  id: z.string().regex(PLUGIN_ID),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  size: z.number().int().nonnegative(),
  modules: z.array(z.string()),
  layers: z.array(z.number().int()),
  tensors: z.number().int(),
  tensor_bytes: z.number().int(),
  base_fingerprint: z.string().nullable(),
  created: z.number().int(),
  description: z.string(),
});
export type Manifest = z.infer<typeof Manifest>;

export function checkPluginId(id: string): string | null {
  if (!PLUGIN_ID.test(id) || id.includes('..')) return 'plugin ids are 1-64 characters of letters, digits, ".", "_" and "-", starting with a letter or digit';
  return null;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Thrown by commit when the id holds other bytes and overwrite was not asked for. */
export class PluginExistsError extends Error {
  override name = 'PluginExistsError';
}

/** Thrown by commit when the id is a name the server resolves to something else (a registered checkpoint). */
export class PluginNameTakenError extends Error {
  override name = 'PluginNameTakenError';
}

/** A temporary file untouched this long is a leftover whoever wrote it (uploads keep writing to theirs). */
const TEMP_STALE_MS = 15 * 60_000;
export class PluginStore {
  readonly pluginsDir: string;
  readonly blobsDir: string;
  readonly tmpDir: string;
  readonly quarantineDir: string;
  private readonly lockPath: string;
  private readonly manifests = new Map<string, Manifest>();
  /** What each manifest file looked like when read (mtime, size, inode), and the directory's. */
  private readonly stamps = new Map<string, string>();
  private dirStamp = '';

  /** What else an id would name (a registered checkpoint), or null: such ids cannot be committed. */
  reserved: (id: string) => string | null = () => null;

  readonly root: string;
  private readonly log: (s: string) => void;
  /** Quarantined entries older than this are deleted by the scan. */
  private readonly quarantineMaxAgeMs: number;
  constructor(root: string, log: (s: string) => void = (s) => console.log(s), quarantineMaxAgeMs: number = 7 * 24 * 3600_000) {
    this.root = root;
    this.log = log;
    this.quarantineMaxAgeMs = quarantineMaxAgeMs;
    this.pluginsDir = join(root, 'plugins');
    this.blobsDir = join(root, 'blobs');
    this.tmpDir = join(root, 'tmp');
    this.quarantineDir = join(root, 'quarantine');
    this.lockPath = join(root, 'store.lock');
    for (const d of [this.pluginsDir, this.blobsDir, this.tmpDir, this.quarantineDir]) mkdirSync(d, { recursive: true });
  }

  /** Checks every entry against its bytes; moves what does not hold up to quarantine. */
  async scan(): Promise<{ loaded: number; quarantined: string[] }> {
    const quarantined: string[] = [];
    const quarantine = (dir: string, name: string, why: string) => {
      const dest = join(this.quarantineDir, `${Date.now()}-${name}`);
      try {
        renameSync(join(dir, name), dest);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // another server took it first
        throw e;
      }
      quarantined.push(name);
      this.log(`sfn: plugin store: quarantined ${join(dir, name)} (${why}) -> ${dest}`);
    };
    const now = Date.now();
    const stale = (dir: string, name: string) => {
      try {
        return ownerGone(name) || now - statSync(join(dir, name)).mtimeMs > TEMP_STALE_MS;
      } catch {
        return false;
      }
    };
    for (const name of readdirSync(this.tmpDir)) {
      if (stale(this.tmpDir, name)) quarantine(this.tmpDir, name, 'temporary file left by an interrupted write');
      else this.log(`sfn: plugin store: left ${join(this.tmpDir, name)} alone (another server may be writing it)`);
    }
    for (const dir of [this.pluginsDir, this.blobsDir]) {
      for (const name of readdirSync(dir)) if ((name.startsWith('.') || name.endsWith('.tmp')) && stale(dir, name)) quarantine(dir, name, 'temporary file left by an interrupted write');
    }
    // Hashing is slow, so it runs outside the lock; a verdict is acted on only if the manifest is unchanged.
    const bad: { name: string; stamp: string; why: string; blob?: string }[] = [];
    for (const name of readdirSync(this.pluginsDir).filter((n) => n.endsWith('.json'))) {
      const stamp = this.fileStamp(name);
      if (!stamp) continue;
      let m: Manifest;
      try {
        m = this.readManifest(name);
      } catch (e) {
        bad.push({ name, stamp, why: `unreadable manifest: ${(e as Error).message}` });
        continue;
      }
      const blob = this.blobPath(m.sha256);
      if (!existsSync(blob)) bad.push({ name, stamp, why: 'its blob is missing' });
      else if (statSync(blob).size !== m.size || (await sha256File(blob)) !== m.sha256) bad.push({ name, stamp, why: 'its blob does not match the manifest', blob: `${m.sha256}.safetensors` });
    }
    await this.withLock(() => {
      for (const b of bad) {
        if (this.fileStamp(b.name) !== b.stamp) continue;
        quarantine(this.pluginsDir, b.name, b.why);
        if (b.blob && existsSync(join(this.blobsDir, b.blob))) quarantine(this.blobsDir, b.blob, 'bytes do not match their hash');
      }
      this.refresh(true);
      const referenced = new Set([...this.manifests.values()].map((m) => `${m.sha256}.safetensors`));
      for (const name of readdirSync(this.blobsDir)) if (!referenced.has(name) && !name.startsWith('.')) quarantine(this.blobsDir, name, 'no manifest refers to it');
    });
    this.pruneQuarantine();
    return { loaded: this.manifests.size, quarantined };
  }

  /** Deletes quarantined entries older than the retention (their name starts with the time they were moved). */
  private pruneQuarantine(): void {
    const now = Date.now();
    for (const name of readdirSync(this.quarantineDir)) {
      const moved = Number(/^(\d+)-/.exec(name)?.[1] ?? Number.NaN);
      const at = Number.isFinite(moved) ? moved : statSync(join(this.quarantineDir, name)).mtimeMs;
      if (now - at <= this.quarantineMaxAgeMs) continue;
      rmSync(join(this.quarantineDir, name), { recursive: true, force: true });
      this.log(`sfn: plugin store: deleted ${name} from quarantine (older than ${Math.round(this.quarantineMaxAgeMs / 86400_000)} days)`);
    }
  }

  blobPath(sha: string): string {
    return join(this.blobsDir, `${sha}.safetensors`);
  }

  /** A fresh temporary path inside the store (same filesystem, so a rename is atomic), named after its writer. */
  tempPath(): string {
    return join(this.tmpDir, `${HOST}~${process.pid}~${Date.now()}~${Math.random().toString(36).slice(2)}.tmp`);
  }

  get(id: string): Manifest | undefined {
    this.refresh();
    return this.manifests.get(id);
  }

  list(): Manifest[] {
    this.refresh();
    return [...this.manifests.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  /**
   * Moves an uploaded, validated temporary file in as plugin `id`. The blob is renamed into place first
   * (content-addressed: an identical blob may already be there), then the manifest: that rename is the commit.
   * Identical bytes under the id are a no-op (created: false); other bytes need `overwrite`.
   */
  async commit(tempFile: string, id: string, sha256: string, size: number, summary: PluginSummary, description: string, overwrite = true): Promise<{ created: boolean; manifest: Manifest }> {
    const taken = this.reserved(id);
    if (taken) throw new PluginNameTakenError(`"${id}" is ${taken}; plugin ids and checkpoint names share merges' "from"`);
    // The bytes reach the disk before the rename: a rename of unflushed bytes can commit an empty file. Flushing
    // hundreds of MB takes seconds, so it runs off this (the HTTP) thread and outside the lock.
    await fsyncFileAsync(tempFile);
    return this.withLock(() => {
      const previous = this.manifests.get(id);
      if (previous && previous.sha256 === sha256) {
        rmSync(tempFile, { force: true });
        return { created: false, manifest: previous };
      }
      if (previous && !overwrite) throw new PluginExistsError(`plugin "${id}" exists with other bytes; pass overwrite=true to replace it`);
      const blob = this.blobPath(sha256);
      if (existsSync(blob)) {
        // Fresh mtime: the blob is in use again (a later scan's staleness checks look at it).
        utimesSync(blob, new Date(), new Date());
        rmSync(tempFile, { force: true });
      } else {
        // The uploaded bytes reached the disk before the lock (above), the rename does before the manifest names it.
        renameSync(tempFile, blob);
        fsyncDir(this.blobsDir);
      }
      const m: Manifest = {
        id,
        sha256,
        size,
        modules: summary.modules,
        layers: summary.layers,
        tensors: summary.tensors,
        tensor_bytes: summary.tensorBytes,
        base_fingerprint: summary.baseFingerprint,
        created: Math.floor(Date.now() / 1000),
        description,
      };
      writeFileAtomic(join(this.pluginsDir, `${id}.json`), JSON.stringify(m, null, 2), this.tmpDir, this.tempPath());
      this.refresh(true);
      if (previous) this.dropBlobIfUnused(previous.sha256);
      return { created: true, manifest: m };
    });
  }

  /** Removes a plugin. Requests already running on it hold its tensors in memory and finish. */
  async delete(id: string): Promise<boolean> {
    return this.withLock(() => {
      const m = this.manifests.get(id);
      if (!m) return false;
      rmSync(join(this.pluginsDir, `${id}.json`));
      fsyncDir(this.pluginsDir);
      this.refresh(true);
      this.dropBlobIfUnused(m.sha256);
      return true;
    });
  }

  /** Under the lock, with manifests just refreshed. */
  private dropBlobIfUnused(sha: string): void {
    if (![...this.manifests.values()].some((m) => m.sha256 === sha)) {
      rmSync(this.blobPath(sha), { force: true });
      fsyncDir(this.blobsDir);
    }
  }

  private readManifest(name: string): Manifest {
    const m = Manifest.parse(JSON.parse(readFileSync(join(this.pluginsDir, name), 'utf8')));
    if (`${m.id}.json` !== name) throw new Error(`manifest id ${m.id} does not match its file name`);
    return m;
  }

  private fileStamp(name: string): string | null {
    try {
      const st = statSync(join(this.pluginsDir, name));
      return `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      return null;
    }
  }

  /**
   * Re-reads manifests that changed on disk (other servers sharing the store write them). Cheap when nothing
   * changed: one stat of the directory. Within 2 s of a change the files are checked anyway, for filesystems
   * with coarse timestamps. Unreadable manifests are skipped here; the start-up scan quarantines them.
   */
  private refresh(force = false): void {
    const st = statSync(this.pluginsDir);
    const dirStamp = `${st.mtimeMs}:${st.ino}`;
    if (!force && dirStamp === this.dirStamp && Date.now() - st.mtimeMs > 2000) return;
    this.dirStamp = dirStamp;
    const names = new Set(readdirSync(this.pluginsDir).filter((n) => n.endsWith('.json') && !n.startsWith('.')));
    for (const id of [...this.manifests.keys()]) {
      if (!names.has(`${id}.json`)) {
        this.manifests.delete(id);
        this.stamps.delete(`${id}.json`);
      }
    }
    for (const name of names) {
      const stamp = this.fileStamp(name);
      if (!stamp || this.stamps.get(name) === stamp) continue;
      try {
        const m = this.readManifest(name);
        this.manifests.set(m.id, m);
        this.stamps.set(name, stamp);
      } catch {
        this.manifests.delete(name.slice(0, -'.json'.length));
        this.stamps.delete(name);
      }
    }
  }

  /** Runs fn holding the store's lock file, on an up-to-date view of the manifests. */
  private withLock<T>(fn: () => T): Promise<T> {
    return withLockFile(this.lockPath, `the plugin store at ${this.root}`, this.log, () => {
      this.refresh(true);
      return fn();
    });
  }
}
