import { z } from 'zod';

/*
 * Zod compiles its object parsers with `new Function` when it may, and finds out whether it
 * may by trying once: under Center's Content-Security-Policy (no 'unsafe-eval') that try is
 * refused and reported as a policy violation, even though zod then parses without it. Turned
 * off here, before any schema of the protocol is built (this module is imported first).
 */
z.config({ jitless: true });
