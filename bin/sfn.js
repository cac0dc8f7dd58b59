#!/usr/bin/env node
import { withMallocTuning } from './malloc.js';

// glibc's allocator, tuned before anything is allocated (see malloc.js): the process re-executes itself in place
// (same pid, for signals and containers) where Node can (22.15+, 24). On Node 20, set GLIBC_TUNABLES yourself.
const tuned = process.platform === 'linux' && typeof process.execve === 'function' ? withMallocTuning(process.env) : null;
if (tuned) process.execve(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], tuned);

// Runs the TypeScript CLI without a build step: Node 22.18+ and 24 strip the types themselves, except under
// node_modules (an installed package), where tsx (an optional dependency) registers its loader first.
if (!process.features.typescript || import.meta.url.includes('/node_modules/')) {
  const tsx = await import('tsx/esm/api').catch(() => null);
  if (!tsx) {
    console.error(`sfn: Node ${process.versions.node} cannot run TypeScript here and tsx is not installed; use Node 22.18+ or install with optional dependencies`);
    process.exit(1);
  }
  tsx.register();
}
const { main } = await import('../src/cli.ts');
process.exitCode = await main(process.argv.slice(2));
