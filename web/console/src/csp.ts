import { z } from 'zod';

// zod compiles object parsers with `new Function` once it finds eval allowed, and finding out
// (a `new Function` it catches) is itself a violation of the page's CSP (script-src 'self', no
// 'unsafe-eval'), reported by the browser. Its plain parsers need no eval. Imported by main.tsx
// before anything else: the protocol's modules already parse while they load.
z.config({ jitless: true });
