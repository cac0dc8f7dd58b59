/**
 * Donor checkpoints registered by an admin under a name: a directory under the model roots, recorded in
 * `<data-dir>/checkpoints.json` (written atomically). Merges name them in `from`; their tensors are read
 * lazily, when a merge first needs them.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../model/atomic.ts';

export interface RegisteredCheckpoint {
  name: string;
  path: string;
  registered: number;
}

export class CheckpointRegistry {
  private readonly file: string;
  private entries = new Map<string, RegisteredCheckpoint>();

  constructor(dataDir: string) {
    this.file = join(dataDir, 'checkpoints.json');
    if (existsSync(this.file)) {
      try {
        for (const e of JSON.parse(readFileSync(this.file, 'utf8')) as RegisteredCheckpoint[]) this.entries.set(e.name, e);
      } catch {
        /* an unreadable registry starts empty; the file is rewritten on the next registration */
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
