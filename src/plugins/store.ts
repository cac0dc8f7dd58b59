/**
 * The plugin store on disk. Content-addressed blobs (`blobs/<sha256>.safetensors`) and one manifest per
 * plugin id (`plugins/<id>.json`) naming its blob. Every write goes temp file -> fsync -> rename -> fsync of
 * the directory, and the manifest is written last: a crash leaves the old version or nothing, never a
 * partial plugin. At start the store is scanned; manifests whose blob is missing or does not hash to the
 * manifest, unreadable manifests, unreferenced blobs and temporary leftovers go to `quarantine/`, logged.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { fsyncDir } from '../model/atomic.ts';
import { writeFileAtomic } from '../model/atomic.ts';
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

export class PluginStore {
  readonly pluginsDir: string;
  readonly blobsDir: string;
  readonly tmpDir: string;
  readonly quarantineDir: string;
  private readonly manifests = new Map<string, Manifest>();

  constructor(
    readonly root: string,
    private readonly log: (s: string) => void = (s) => console.log(s),
  ) {
    this.pluginsDir = join(root, 'plugins');
    this.blobsDir = join(root, 'blobs');
    this.tmpDir = join(root, 'tmp');
    this.quarantineDir = join(root, 'quarantine');
    for (const d of [this.pluginsDir, this.blobsDir, this.tmpDir, this.quarantineDir]) mkdirSync(d, { recursive: true });
  }

  /** Checks every entry against its bytes; moves what does not hold up to quarantine. */
  async scan(): Promise<{ loaded: number; quarantined: string[] }> {
    const quarantined: string[] = [];
    const quarantine = (dir: string, name: string, why: string) => {
      const dest = join(this.quarantineDir, `${Date.now()}-${name}`);
      renameSync(join(dir, name), dest);
      quarantined.push(name);
      this.log(`sfn: plugin store: quarantined ${join(dir, name)} (${why}) -> ${dest}`);
    };
    for (const name of readdirSync(this.tmpDir)) quarantine(this.tmpDir, name, 'temporary file left by an interrupted write');
    for (const dir of [this.pluginsDir, this.blobsDir]) {
      for (const name of readdirSync(dir)) if (name.startsWith('.') || name.endsWith('.tmp')) quarantine(dir, name, 'temporary file left by an interrupted write');
    }
    this.manifests.clear();
    for (const name of readdirSync(this.pluginsDir).filter((n) => n.endsWith('.json'))) {
      let m: Manifest;
      try {
        m = Manifest.parse(JSON.parse(readFileSync(join(this.pluginsDir, name), 'utf8')));
        if (`${m.id}.json` !== name) throw new Error(`manifest id ${m.id} does not match its file name`);
      } catch (e) {
        quarantine(this.pluginsDir, name, `unreadable manifest: ${(e as Error).message}`);
        continue;
      }
      const blob = this.blobPath(m.sha256);
      if (!existsSync(blob)) {
        quarantine(this.pluginsDir, name, 'its blob is missing');
        continue;
      }
      if (statSync(blob).size !== m.size || (await sha256File(blob)) !== m.sha256) {
        quarantine(this.pluginsDir, name, 'its blob does not match the manifest');
        if (existsSync(blob)) quarantine(this.blobsDir, `${m.sha256}.safetensors`, 'bytes do not match their hash');
        continue;
      }
      this.manifests.set(m.id, m);
    }
    const referenced = new Set([...this.manifests.values()].map((m) => `${m.sha256}.safetensors`));
    for (const name of readdirSync(this.blobsDir)) if (!referenced.has(name)) quarantine(this.blobsDir, name, 'no manifest refers to it');
    return { loaded: this.manifests.size, quarantined };
  }

  blobPath(sha: string): string {
    return join(this.blobsDir, `${sha}.safetensors`);
  }

  /** A fresh temporary path inside the store (same filesystem, so a rename is atomic). */
  tempPath(): string {
    return join(this.tmpDir, `${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}.tmp`);
  }

  get(id: string): Manifest | undefined {
    return this.manifests.get(id);
  }

  list(): Manifest[] {
    return [...this.manifests.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  bySha(sha: string): Manifest[] {
    return this.list().filter((m) => m.sha256 === sha);
  }

  /**
   * Moves an uploaded, validated temporary file in as plugin `id`. The blob is renamed into place first
   * (content-addressed: an identical blob may already be there), then the manifest: that rename is the commit.
   */
  commit(tempFile: string, id: string, sha256: string, size: number, summary: PluginSummary, description: string): Manifest {
    const blob = this.blobPath(sha256);
    if (existsSync(blob)) rmSync(tempFile, { force: true });
    else {
      renameSync(tempFile, blob);
      fsyncDir(this.blobsDir);
    }
    const previous = this.manifests.get(id);
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
    writeFileAtomic(join(this.pluginsDir, `${id}.json`), JSON.stringify(m, null, 2), this.tmpDir);
    this.manifests.set(id, m);
    if (previous && previous.sha256 !== sha256) this.dropBlobIfUnused(previous.sha256);
    return m;
  }

  /** Removes a plugin. Requests already running on it hold its tensors in memory and finish. */
  delete(id: string): boolean {
    const m = this.manifests.get(id);
    if (!m) return false;
    rmSync(join(this.pluginsDir, `${id}.json`));
    fsyncDir(this.pluginsDir);
    this.manifests.delete(id);
    this.dropBlobIfUnused(m.sha256);
    return true;
  }

  private dropBlobIfUnused(sha: string): void {
    if (this.bySha(sha).length === 0) {
      rmSync(this.blobPath(sha), { force: true });
      fsyncDir(this.blobsDir);
    }
  }
}
