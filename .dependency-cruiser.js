// Import boundaries, checked by `npm run check` (dependency-cruiser). Each rule names what it
// forbids; a violation prints the rule's name, the importing module and the imported one.
//
// The parts of Bulkhead are the top-level folders of src/ (DESIGN.md §1, STYLE.md "Shape of the
// code"). A part's public surface is its `index.ts`: inside a part anything goes, across parts
// only the index. Low-level parts hold what every other part needs and depend on nothing above
// them; a new low-level folder goes into LOW_LEVEL.

/** Low-level parts: image, Center and Engine may all import them. */
const LOW_LEVEL = ['signing', 'durable'];
const lowLevel = `(${LOW_LEVEL.join('|')})`;

/** A module of src/ that is not a test (tests may import test support and reach further). */
const SOURCE = { path: '^src/', pathNot: '\\.test\\.ts$' };

/** @type {import('dependency-cruiser').IConfiguration} */
export default {
  forbidden: [
    {
      name: 'web-speaks-the-protocol-only',
      severity: 'error',
      comment:
        'The console and the switcher run in the browser: of src/ they import only the wire ' +
        'contract, src/protocol/index.ts.',
      from: { path: '^web/' },
      to: { path: '^src/', pathNot: '^src/protocol/index\\.ts$' },
    },
    {
      name: 'no-circular',
      severity: 'error',
      comment:
        'Modules import each other in a cycle. Move what both need into the lower one, or pass ' +
        'it in; a module that registers its siblings must not be imported back by them.',
      from: {},
      to: { circular: true },
    },
    {
      name: 'only-through-index',
      severity: 'error',
      comment:
        "A part of src/ imports another part only through that part's index.ts (export the " +
        'name there and import it from the index).',
      from: { path: '^src/([^/]+)/' },
      to: { path: '^src/', pathNot: ['^src/$1/', '^src/[^/]+/index\\.ts$'] },
    },
    {
      name: 'protocol-stands-alone',
      severity: 'error',
      comment: 'src/protocol is the wire contract every part imports; it imports no other part.',
      from: { path: '^src/protocol/' },
      to: { path: '^src/', pathNot: '^src/protocol/' },
    },
    {
      name: 'low-level-stays-low',
      severity: 'error',
      comment: `The low-level parts (${LOW_LEVEL.join(', ')}) import only protocol and each other.`,
      from: { path: `^src/${lowLevel}/` },
      to: { path: '^src/', pathNot: [`^src/${lowLevel}/`, '^src/protocol/'] },
    },
    {
      name: 'image-below-center-and-engine',
      severity: 'error',
      comment: 'src/image imports only protocol and the low-level parts.',
      from: { path: '^src/image/' },
      to: { path: '^src/', pathNot: ['^src/image/', '^src/protocol/', `^src/${lowLevel}/`] },
    },
    {
      name: 'engine-not-center',
      severity: 'error',
      comment: 'Engine talks to Center over HTTP only; shapes they share live in src/protocol.',
      from: { path: '^src/engine/' },
      to: { path: '^src/center/' },
    },
    {
      name: 'center-not-engine',
      severity: 'error',
      comment: 'Center talks to Engine over HTTP only; shapes they share live in src/protocol.',
      from: { path: '^src/center/' },
      to: { path: '^src/engine/' },
    },
    {
      name: 'volumes-below-update',
      severity: 'error',
      comment:
        "Engine's update transaction uses the volumes (src/engine/volumes/index.ts); volumes " +
        'never call back into update/. Types both need live in volumes/ or lower.',
      from: { path: '^src/engine/volumes/' },
      to: { path: '^src/engine/update/' },
    },
    {
      name: 'source-not-tests',
      severity: 'error',
      comment: 'Shipped code never imports test support or benchmarks.',
      from: SOURCE,
      to: { path: '^(test|bench)/' },
    },
    {
      name: 'no-unresolvable',
      severity: 'error',
      comment: 'An import that resolves to no file.',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^web/[^/]+/dist/' },
    // Type-only imports count: a cycle through types is still two modules that need each other.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
    },
    reporterOptions: { text: { highlightFocused: true } },
  },
};
