import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ChunkEntry } from './chunk-index.ts';
import type { PackFrame } from './pack-plan.ts';
import { planPull, reuseOf, type PartialFile, type PullFacts, type PullStep } from './pull-plan.ts';

const K = 4096;

/** A chunk list of 4 KiB entries: a letter is a chunk's digest, `_` a hole. */
function image(layout: string): ChunkEntry[] {
  return [...layout].map((c, i) => ({
    offset: i * K,
    length: K,
    digest: c === '_' ? null : c,
  }));
}

const seed = (path: string, layout: string) => ({ path, entries: image(layout) });

function frame(chunks: string, offset = 0): PackFrame {
  return {
    offset,
    bytes: (chunks.length * K) / 2,
    rawBytes: chunks.length * K,
    refs: [],
    chunks: [...chunks],
  };
}

function facts(over: Partial<Omit<PullFacts, 'target'>> & { target: string }): PullFacts {
  return {
    seeds: [],
    journal: null,
    partial: null,
    placed: new Set(),
    hasParent: false,
    pack: null,
    ...over,
    target: image(over.target),
  };
}

const sparse: PartialFile = { clonedFrom: null, done: new Set() };

/** Where the plan takes each target entry from, in target order. */
function sources(steps: readonly PullStep[], size: number): string[] {
  const from = Array.from({ length: size }, () => 'in place');
  for (const step of steps) {
    const mark = (at: number[], label: string) => {
      for (const i of at) {
        assert.equal(from[i], 'in place', `entry ${i} is planned twice`);
        from[i] = label;
      }
    };
    if (step.action === 'zeroHoles') mark(step.at, 'zeros');
    if (step.action === 'copyFromSeeds') for (const c of step.chunks) mark(c.at, c.seed);
    if (step.action === 'fetchFrames') for (const c of step.chunks) mark(c.at, 'pack');
    if (step.action === 'fetchChunks') for (const c of step.chunks) mark(c.at, 'store');
  }
  return from;
}

test('the first step sets up the partial file: resumed, or started on the best base', () => {
  const cases: { name: string; facts: PullFacts; expect: PullStep }[] = [
    {
      name: 'fresh pull, no seed: a sparse file',
      facts: facts({ target: 'AB_C' }),
      expect: { action: 'startPartial', base: null },
    },
    {
      name: 'the seed holding most of the target at the same offsets is the base',
      facts: facts({
        target: 'ABCD',
        seeds: [seed('/s/shifted', 'xABC'), seed('/s/few', 'Axxx'), seed('/s/most', 'ABxx')],
      }),
      expect: { action: 'startPartial', base: '/s/most' },
    },
    {
      name: 'a seed that holds nothing in place is no base',
      facts: facts({ target: 'ABCD', seeds: [seed('/s/shifted', 'xABC')] }),
      expect: { action: 'startPartial', base: null },
    },
    {
      name: 'a sparse partial file is resumed whatever the seeds',
      facts: facts({
        target: 'ABCD',
        seeds: [seed('/s/a', 'ABxx')],
        journal: { base: null, done: new Set(['C']) },
      }),
      expect: { action: 'resumePartial', clonedFrom: null, done: new Set(['C']) },
    },
    {
      name: 'a clone is resumed when its base is still the best seed',
      facts: facts({
        target: 'ABCD',
        seeds: [seed('/s/a', 'ABxx')],
        journal: { base: '/s/a', done: new Set(['C']) },
      }),
      expect: { action: 'resumePartial', clonedFrom: '/s/a', done: new Set(['C']) },
    },
    {
      name: 'a clone of another seed starts over',
      facts: facts({
        target: 'ABCD',
        seeds: [seed('/s/a', 'ABxx'), seed('/s/b', 'ABCx')],
        journal: { base: '/s/a', done: new Set(['D']) },
      }),
      expect: { action: 'startPartial', base: '/s/b' },
    },
  ];
  for (const c of cases) assert.deepEqual(planPull(c.facts), [c.expect], c.name);
});

test('the plan takes every chunk from exactly one place', () => {
  const cases: { name: string; facts: PullFacts; expect: string[] }[] = [
    {
      name: 'fresh pull, no seed: holes are free, the rest comes from the store',
      facts: facts({ target: 'AB_C', partial: sparse }),
      expect: ['store', 'store', 'in place', 'store'],
    },
    {
      name: 'a seed that covers all, at other offsets: everything is copied',
      facts: facts({ target: 'ABC', seeds: [seed('/s', 'CAB')], partial: sparse }),
      expect: ['/s', '/s', '/s'],
    },
    {
      name: 'a clone of a seed that covers all: nothing to do',
      facts: facts({ target: 'AB_C', seeds: [seed('/s', 'AB_C')], partial: clone('/s') }),
      expect: ['in place', 'in place', 'in place', 'in place'],
    },
    {
      name: 'a clone: what moved is copied, holes over the base data are zeroed',
      facts: facts({ target: 'AC_B', seeds: [seed('/s', 'ABxx')], partial: clone('/s') }),
      expect: ['in place', 'store', 'zeros', '/s'],
    },
    {
      name: 'partial resume: journaled chunks stay, holes of the sparse file too',
      facts: facts({ target: 'ABC_D', partial: { clonedFrom: null, done: new Set(['A', 'C']) } }),
      expect: ['in place', 'store', 'in place', 'in place', 'store'],
    },
    {
      name: 'resume of a clone: the base in place, journaled chunks, its holes zeroed again',
      facts: facts({
        target: 'AB_C',
        seeds: [seed('/s', 'Axxx')],
        partial: { clonedFrom: '/s', done: new Set(['C']) },
      }),
      expect: ['in place', 'store', 'zeros', 'in place'],
    },
    {
      name: 'a chunk two seeds hold is copied from the first',
      facts: facts({
        target: 'ABC',
        seeds: [seed('/s/1', 'xxB'), seed('/s/2', 'BAx')],
        partial: sparse,
      }),
      expect: ['/s/2', '/s/1', 'store'],
    },
    {
      name: 'a pack covers some: its frames, the rest one by one',
      facts: facts({
        target: 'ABCDE',
        seeds: [seed('/s', 'Axxxx')],
        partial: sparse,
        hasParent: true,
        pack: [frame('BC'), frame('xyD', K)],
      }),
      expect: ['/s', 'pack', 'pack', 'store', 'store'],
    },
    {
      name: 'a used pack: what it did not deliver comes from the store',
      facts: facts({
        target: 'ABCD',
        partial: sparse,
        placed: new Set([0, 1]),
        hasParent: true,
        pack: [],
      }),
      expect: ['in place', 'in place', 'store', 'store'],
    },
  ];
  for (const c of cases) {
    assert.deepEqual(sources(planPull(c.facts), c.facts.target.length), c.expect, c.name);
  }
});

function clone(path: string): PartialFile {
  return { clonedFrom: path, done: new Set() };
}

test('steps come in order: zeros, seeds, then the pack index before any download', () => {
  const f = facts({
    target: 'A_BC',
    seeds: [seed('/s', 'AxBx')],
    partial: clone('/s'),
    hasParent: true,
  });
  assert.deepEqual(planPull(f), [{ action: 'zeroHoles', at: [1] }, { action: 'readPackIndex' }]);
  // Nothing left to download: the pack index is not read at all.
  assert.deepEqual(
    planPull({ ...f, placed: new Set([1]), target: image('A_BA') }).map((s) => s.action),
    ['copyFromSeeds'],
  );
});

test('a chunk is fetched once and written everywhere it occurs', () => {
  const steps = planPull(facts({ target: 'ABAB_A', partial: sparse }));
  assert.deepEqual(steps, [
    {
      action: 'fetchChunks',
      chunks: [
        { digest: 'A', length: K, at: [0, 2, 5] },
        { digest: 'B', length: K, at: [1, 3] },
      ],
    },
  ]);
});

test('a pack frame that holds little of what is missing is not worth its download', () => {
  const big = {
    offset: 0,
    bytes: 40 * K,
    rawBytes: 100 * K,
    chunks: [...'Bxxxxxxxxx'],
    refs: [],
  };
  const steps = planPull(
    facts({ target: 'AB', partial: sparse, hasParent: true, pack: [big, frame('A', 50 * K)] }),
  );
  assert.deepEqual(
    steps.map((s) => [s.action, s.action === 'fetchFrames' ? s.frames.map((f) => f.offset) : []]),
    [
      ['fetchFrames', [50 * K]],
      ['fetchChunks', []],
    ],
  );
});

test('a plan applied leaves nothing to plan', () => {
  let f = facts({
    target: 'AB_CDA',
    seeds: [seed('/s', 'ABxx')],
    journal: null,
    hasParent: true,
  });
  const placed = new Set<number>();
  for (let round = 0; round < 8; round++) {
    const steps = planPull(f);
    if (steps.length === 0) break;
    for (const step of steps) {
      if (step.action === 'startPartial') f = { ...f, partial: clone(step.base!) };
      if (step.action === 'readPackIndex') f = { ...f, pack: [frame('CD')] };
      if (step.action === 'fetchFrames') f = { ...f, pack: [] };
      if (step.action === 'zeroHoles') for (const i of step.at) placed.add(i);
      if ('chunks' in step) for (const c of step.chunks) for (const i of c.at) placed.add(i);
    }
    f = { ...f, placed: new Set(placed) };
  }
  assert.deepEqual(planPull(f), []);
  assert.deepEqual([...placed].sort(), [2, 3, 4, 5]);
});

test('reuse counts data chunks in place at the start or held by a seed', () => {
  const f = facts({
    target: 'AB_CA',
    seeds: [seed('/s', 'AxxxC')],
    partial: { clonedFrom: '/s', done: new Set(['B']) },
  });
  // A in place (base), B journaled, C from the seed, the second A too; the hole is no data.
  assert.deepEqual(reuseOf(f), { chunks: 4, bytes: 4 * K });
  assert.deepEqual(reuseOf(facts({ target: 'AB', partial: sparse })), { chunks: 0, bytes: 0 });
});
