/**
 * The built-in model: stories260K, shipped in the repository (models/, with its licence), served and used by the
 * commands when no checkpoint is configured; nothing is downloaded.
 */
import { fileURLToPath } from 'node:url';

export const BUILTIN_NAME = 'stories260K';
export const BUILTIN_MODEL_DIR = fileURLToPath(new URL('../../models/stories260K', import.meta.url));

/** The model directory to use: --model, then SFN_MODEL, then the built-in model (with a notice). */
export function resolveModelDir(flag: string | undefined, log: (s: string) => void = (s) => process.stderr.write(s + '\n')): string {
  const dir = flag ?? process.env.SFN_MODEL;
  if (dir) return dir;
  log(
    `sfn: no model configured (--model or SFN_MODEL); using the built-in model ${BUILTIN_NAME} at ${BUILTIN_MODEL_DIR}: ` +
      `Karpathy's 260K-parameter TinyStories model (MIT), which writes short children's stories. Give --model DIR to serve your own checkpoint.`,
  );
  return BUILTIN_MODEL_DIR;
}
