/**
 * Atomic file writes: a temporary file in the same directory (or filesystem), fsync, rename, fsync of the
 * directory. A crash leaves the old file or the new one, never a partial one.
 */
import { close, closeSync, fsync, fsyncSync, open, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** Writes `chunks` (or one string) to `path` atomically; the temporary file lives in `tmpDir` (or at `tmpPath`). */
export function writeFileAtomic(path: string, content: string | Iterable<Uint8Array>, tmpDir = dirname(path), tmpPath?: string): void {
  const tmp = tmpPath ?? join(tmpDir, `.${basename(path)}.${process.pid}.${Date.now()}.${Math.random().toString(36).slice(2)}.tmp`);
  const fd = openSync(tmp, 'w');
  try {
    for (const chunk of typeof content === 'string' ? [Buffer.from(content)] : content) writeAll(fd, chunk);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  try {
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  fsyncDir(dirname(path));
}

/**
 * Writes all of `bytes`, at the file's offset `position` when given: one write() may move fewer (at most ~2 GiB on
 * Linux, less than a 7B float32 embedding).
 */
export function writeAll(fd: number, bytes: Uint8Array, position?: number): void {
  for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done, position === undefined ? null : position + done);
}

/** Flushes a file's bytes to disk (before it is renamed into place: a rename of unflushed bytes can commit an empty file). */
export function fsyncFile(path: string): void {
  const fd = openSync(path, 'r+');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** fsyncFile off the calling thread (libuv's pool): flushing hundreds of MB takes seconds. */
export async function fsyncFileAsync(path: string): Promise<void> {
  const fd = await new Promise<number>((res, rej) => open(path, 'r+', (e, f) => (e ? rej(e) : res(f))));
  try {
    await new Promise<void>((res, rej) => fsync(fd, (e) => (e ? rej(e) : res())));
  } finally {
    await new Promise<void>((res) => close(fd, () => res()));
  }
}

/** Makes a rename durable; some filesystems refuse fsync on a directory, which is then all we can do. */
export function fsyncDir(dir: string): void {
  let fd = -1;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    /* best effort */
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}
