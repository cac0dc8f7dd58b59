/**
 * What a load learnt by reading a whole checkpoint, its fingerprint and the pluggable weights' largest |value|,
 * kept beside the session cache so that a later load that maps its cached session need not read and hash every
 * byte again (at 1.5B: 3-4.5 s of hashing, and the entry's pages that reading 3 GB pushed out of the page cache;
 * a hit took 10.7 s instead of 20.4). A memo holds while the checkpoint's files are the ones it was taken from:
 * same device, inode, size, modification and change times in nanoseconds, as git's index checks its work tree.
 * The change time cannot be set back by a writer, so a file rewritten in place (even with its old mtime) misses.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../model/atomic.ts';
import { checkpointFiles } from '../model/checkpoint.ts';

const FORMAT = 1;
/** Under the session cache's directory; not an entry, so its upkeep leaves it alone. */
export const MEMO_DIR = 'checkpoints';

const FileStat = z.object({ path: z.string(), dev: z.string(), ino: z.string(), size: z.string(), mtimeNs: z.string(), ctimeNs: z.string() });
type FileStat = z.infer<typeof FileStat>;

const Memo = z.object({
  format: z.literal(FORMAT),
  dir: z.string(),
  files: z.array(FileStat),
  fingerprint: z.string(),
  maxAbs: z.record(z.string(), z.number()),
});

export interface CheckpointFacts {
  fingerprint: string;
  maxAbs: ReadonlyMap<string, number>;
}

/** Every file a load's fingerprint depends on: config.json, the shard index when there is one, the shards. */
function sourceFiles(dir: string): string[] {
  const { files, index } = checkpointFiles(dir);
  return [join(dir, 'config.json'), ...(index ? [index] : []), ...files].map((f) => resolve(f));
}

function stats(dir: string): FileStat[] {
  return sourceFiles(dir).map((path) => {
    const s = statSync(path, { bigint: true });
    return { path, dev: String(s.dev), ino: String(s.ino), size: String(s.size), mtimeNs: String(s.mtimeNs), ctimeNs: String(s.ctimeNs) };
  });
}

const same = (a: FileStat[], b: FileStat[]) => JSON.stringify(a) === JSON.stringify(b);

export class CheckpointMemo {
  private readonly path: string;
  private readonly dir: string;
  /** The files as they were before the read that the facts will come from. */
  private readonly before: FileStat[];

  /** `cacheDir`: the session cache's directory. Stats the checkpoint's files now, before anything reads them. */
  constructor(cacheDir: string, checkpointDir: string) {
    this.dir = resolve(checkpointDir);
    this.path = join(cacheDir, MEMO_DIR, `${createHash('sha256').update(this.dir).digest('hex').slice(0, 32)}.json`);
    this.before = stats(this.dir);
  }

  /** The facts recorded for these very files, or null (none yet, changed files, or an unreadable memo). */
  find(): CheckpointFacts | null {
    try {
      if (!existsSync(this.path)) return null;
      const memo = Memo.parse(JSON.parse(readFileSync(this.path, 'utf8')));
      if (memo.dir !== this.dir || !same(memo.files, this.before)) return null;
      return { fingerprint: memo.fingerprint, maxAbs: new Map(Object.entries(memo.maxAbs)) };
    } catch {
      return null;
    }
  }

  /**
   * Records facts read from the files stated at construction, unless they changed during that read (then the
   * facts may mix two versions). Best effort: a memo that cannot be written only costs the next load a read.
   */
  save(facts: CheckpointFacts): void {
    try {
      if (!same(stats(this.dir), this.before)) return;
      // JSON has no infinities: a checkpoint holding one is simply read again next time.
      if ([...facts.maxAbs.values()].some((v) => !Number.isFinite(v))) return;
      mkdirSync(join(this.path, '..'), { recursive: true });
      const memo = { format: FORMAT, dir: this.dir, files: this.before, fingerprint: facts.fingerprint, maxAbs: Object.fromEntries(facts.maxAbs) };
      writeFileAtomic(this.path, `${JSON.stringify(memo, null, 1)}\n`);
    } catch {
      // Read-only or full disk: the next load reads the checkpoint again.
    }
  }
}
