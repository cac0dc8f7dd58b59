/**
 * Donor checkpoints registered by an admin under a name: a directory under the model roots, recorded in
 * `<data-dir>/checkpoints.json` (written atomically). Merges name them in `from`; their tensors are read
 * lazily, when a merge first needs them.
 */
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { writeFileAtomic } from '../model/atomic.ts';

export interface RegisteredCheckpoint {
  name: string;
  path: string;
  registered: number;
}

export class CheckpointRegistry {
  private readonly file: string;
  private entries = new Map<string, RegisteredCheckpoint>();

  constructor(dataDir: string, log: (s: string) => void = (s) => console.log(s)) {
    this.file = join(dataDir, 'checkpoints.json');
    if (existsSync(this.file)) {
      try {
        const list = JSON.parse(readFileSync(this.file, 'utf8')) as RegisteredCheckpoint[];
        if (!Array.isArray(list) || list.some((e) => typeof e?.name !== 'string' || typeof e?.path !== 'string')) throw new Error('not a list of {name, path}');
        for (const e of list) this.entries.set(e.name, e);
      } catch (e) {
        // Kept for a human rather than overwritten by the next registration: moved aside, loudly.
        const dest = join(dataDir, 'quarantine', `${Date.now()}-checkpoints.json`);
        mkdirSync(dirname(dest), { recursive: true });
        renameSync(this.file, dest);
        log(`sfn: WARNING: the checkpoint registry ${this.file} is unreadable (${(e as Error).message}); moved to ${dest}, starting with no registered checkpoints`);
      }
    }
  }

  get(name: string): RegisteredCheckpoint | undefined {
    return this.entries.get(name);
  }

  list(): RegisteredCheckpoint[] {
    return [...this.entries.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  register(name: string, path: string): RegisteredCheckpoint {
    const e = { name, path, registered: Math.floor(Date.now() / 1000) };
    this.entries.set(name, e);
    this.save();
    return e;
  }

  remove(name: string): boolean {
    const had = this.entries.delete(name);
    if (had) this.save();
    return had;
  }

  private save(): void {
    writeFileAtomic(this.file, JSON.stringify(this.list(), null, 2));
  }
}
