/*
 * The machine's streaming read bandwidth, the ceiling of a batch-1 decode step (which reads every weight once):
 * `stream-read MIB THREADS REPS HUGE` fills MIB MiB, then REPS times has THREADS threads read their slices at
 * once, and prints each pass in GB/s. HUGE=1 asks for transparent huge pages (madvise), as sfn's weights have
 * (glibc.malloc.hugetlb=1); HUGE=0 keeps 4 KiB pages, as an mmapped GGUF has. Built by bench/stream-read.ts.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

/* Eight 32-byte accumulators: the compiler emits the widest loads the CPU has (-march=native). */
typedef uint64_t v4 __attribute__((vector_size(32)));

struct slice { const v4 *p; size_t n; pthread_barrier_t *start; uint64_t out; };

static void *reader(void *arg) {
  struct slice *s = arg;
  pthread_barrier_wait(s->start);
  v4 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
  for (size_t i = 0; i + 8 <= s->n; i += 8) {
    a0 ^= s->p[i]; a1 ^= s->p[i + 1]; a2 ^= s->p[i + 2]; a3 ^= s->p[i + 3];
    a4 ^= s->p[i + 4]; a5 ^= s->p[i + 5]; a6 ^= s->p[i + 6]; a7 ^= s->p[i + 7];
  }
  v4 a = a0 ^ a1 ^ a2 ^ a3 ^ a4 ^ a5 ^ a6 ^ a7;
  s->out = a[0] ^ a[1] ^ a[2] ^ a[3]; /* used, so the loads stay */
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc != 5) { fprintf(stderr, "usage: stream-read MIB THREADS REPS HUGE\n"); return 2; }
  size_t bytes = (size_t)atol(argv[1]) << 20;
  int threads = atoi(argv[2]), reps = atoi(argv[3]), huge = atoi(argv[4]);
  if (bytes == 0 || threads < 1 || threads > 256 || reps < 1) { fprintf(stderr, "stream-read: bad arguments\n"); return 2; }
  v4 *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) { perror("mmap"); return 1; }
  madvise(buf, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  size_t n = bytes / sizeof(v4);
  for (size_t i = 0; i < n; i++) buf[i] = (v4){i, i + 1, i + 2, i + 3};
  uint64_t check = 0;
  for (int r = 0; r < reps; r++) {
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, threads + 1);
    pthread_t th[256];
    struct slice s[256];
    size_t per = n / threads / 8 * 8;
    for (int t = 0; t < threads; t++) {
      s[t] = (struct slice){buf + t * per, per, &start, 0};
      pthread_create(&th[t], NULL, reader, &s[t]);
    }
    pthread_barrier_wait(&start);
    double t0 = now();
    for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
    double dt = now() - t0;
    for (int t = 0; t < threads; t++) check ^= s[t].out;
    pthread_barrier_destroy(&start);
    printf("%.3f\n", (double)(per * threads * sizeof(v4)) / dt / 1e9);
  }
  fprintf(stderr, "checksum %llu\n", (unsigned long long)check);
  return 0;
}
