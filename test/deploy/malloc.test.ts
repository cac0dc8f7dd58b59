/**
 * bin/malloc.js: the glibc tunables bin/sfn.js re-executes itself with. Each is added unless the environment
 * already sets that tunable, and nothing at all (null: no re-execution, so no loop) once both are there.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { withMallocTuning } from '../../bin/malloc.js';

describe('withMallocTuning', () => {
  it('adds the mmap threshold and huge pages to an environment without GLIBC_TUNABLES, keeping the rest', () => {
    const env = withMallocTuning({ PATH: '/bin' });
    assert.deepEqual(env, { PATH: '/bin', GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=1048576:glibc.malloc.hugetlb=1' });
  });

  it("keeps the user's own setting of either tunable and adds only the other", () => {
    assert.equal(withMallocTuning({ GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=65536' })?.GLIBC_TUNABLES, 'glibc.malloc.mmap_threshold=65536:glibc.malloc.hugetlb=1');
    assert.equal(withMallocTuning({ GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0' })?.GLIBC_TUNABLES, 'glibc.malloc.hugetlb=0:glibc.malloc.mmap_threshold=1048576');
    assert.equal(withMallocTuning({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' })?.GLIBC_TUNABLES, 'glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=1048576:glibc.malloc.hugetlb=1');
  });

  it('returns null once both are set, so that the re-executed process does not re-execute again', () => {
    const once = withMallocTuning({});
    assert.ok(once);
    assert.equal(withMallocTuning(once), null);
    assert.equal(withMallocTuning({ GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0:glibc.malloc.mmap_threshold=1' }), null);
  });
});
