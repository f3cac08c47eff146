import { createRequire } from 'node:module';

/**
 * node:http, loaded through require. An ESM import of node:http builds the
 * module's namespace, which reads every export, and the lazy ones
 * (WebSocket, CloseEvent, MessageEvent) load Node's bundled undici: about
 * 70 more internal modules, 6 MiB of anonymous memory and 7 MiB more of the
 * node binary paged in, for a web client torusd never uses (issue 7's RSS
 * budget; measured on Node 24). require returns the same module without
 * reading them. Types come from `import type` as usual.
 */
const http = createRequire(import.meta.url)('node:http') as typeof import('node:http');

export default http;
