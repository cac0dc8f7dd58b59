// glibc keeps memory freed below its mmap threshold in its heap, and the threshold moves up (to 32 MiB) as large
// blocks are freed. A model's load frees gigabytes (weights decoded in JS, copied into onnxruntime, prepacked), so
// what stayed resident after it was a matter of chance: 2.5, 3.4 or 3.8 GB for the same 0.5B model. With the
// threshold fixed at 1 MiB every large block goes back to the system when freed (2.5 GB after every load).
export const MALLOC_TUNABLE = 'glibc.malloc.mmap_threshold=1048576';

/** `env` with the tunable added to GLIBC_TUNABLES, or null where that already sets an mmap threshold. */
export function withMallocTuning(env) {
  const current = env.GLIBC_TUNABLES ?? '';
  if (current.includes('glibc.malloc.mmap_threshold=')) return null;
  return { ...env, GLIBC_TUNABLES: current ? `${current}:${MALLOC_TUNABLE}` : MALLOC_TUNABLE };
}
