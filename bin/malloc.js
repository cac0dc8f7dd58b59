// glibc keeps memory freed below its mmap threshold in its heap, and the threshold moves up (to 32 MiB) as large
// blocks are freed. A model's load frees gigabytes (weights decoded in JS, copied into onnxruntime, prepacked), so
// what stayed resident after it was a matter of chance: 2.5, 3.4 or 3.8 GB for the same 0.5B model. With the
// threshold fixed at 1 MiB every large block goes back to the system when freed (2.5 GB after every load).
// hugetlb=1 asks for transparent huge pages on those blocks (where the kernel's THP mode is madvise or always):
// onnxruntime prepacks every weight into fresh memory at each session open, and faulting it in 2 MiB pages rather
// than 4 KiB ones took a 1.5B load from the session cache from 11.5-13.1 s to 6.8-8.9 s and an uncached 0.5B load
// from 18.6 s to 12.4-14.3 s, with decode unchanged and 0.04 GB more resident (docs/benchmarks.md).
export const MALLOC_TUNABLES = ['glibc.malloc.mmap_threshold=1048576', 'glibc.malloc.hugetlb=1'];

/** `env` with the tunables added to GLIBC_TUNABLES, each unless it already sets that tunable; null when none is added. */
export function withMallocTuning(env) {
  const current = env.GLIBC_TUNABLES ?? '';
  const set = new Set(current.split(':').map((t) => t.split('=')[0]));
  const add = MALLOC_TUNABLES.filter((t) => !set.has(t.split('=')[0]));
  if (add.length === 0) return null;
  return { ...env, GLIBC_TUNABLES: [...(current ? [current] : []), ...add].join(':') };
}
