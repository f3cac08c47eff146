import { describe, expect, it } from 'vitest';
import type { RequestHeader } from '../../src/nbd/codec.js';
import * as P from '../../src/nbd/protocol.js';
import { payloadBytes, validateRequest, type ValidationContext } from '../../src/nbd/validate.js';

const MiB = 1024 * 1024;
const ctx: ValidationContext = {
  exportSize: 64 * MiB,
  readOnly: false,
  structuredReplies: true,
  blockStatusContext: true,
  payloadBytesMax: 32 * MiB,
  payloadDiscardBytesMax: 128 * MiB,
};

function req(type: number, over: Partial<RequestHeader> = {}): RequestHeader {
  return { magic: P.REQUEST_MAGIC, flags: 0, type, cookie: 1n, offset: 0, length: 4096, ...over };
}

function errnoOf(h: RequestHeader, c: ValidationContext = ctx): number | 'ok' | 'fatal' {
  const v = validateRequest(h, c);
  return v.kind === 'error' ? v.errno : v.kind;
}

describe('validateRequest', () => {
  it('accepts well-formed requests of every command', () => {
    for (const t of [P.CMD_READ, P.CMD_WRITE, P.CMD_TRIM, P.CMD_CACHE, P.CMD_WRITE_ZEROES, P.CMD_BLOCK_STATUS]) {
      expect(errnoOf(req(t))).toBe('ok');
    }
    expect(errnoOf(req(P.CMD_FLUSH, { length: 0 }))).toBe('ok');
    expect(errnoOf(req(P.CMD_DISC, { length: 0 }))).toBe('ok');
  });

  it('treats a bad magic as a malformed stream', () => {
    expect(errnoOf(req(P.CMD_READ, { magic: 0x25609514 }))).toBe('fatal');
  });

  it('treats a WRITE payload beyond the discard bound as a malformed stream', () => {
    expect(errnoOf(req(P.CMD_WRITE, { length: 128 * MiB + 1 }))).toBe('fatal');
    // within the bound: refused but the stream goes on
    expect(errnoOf(req(P.CMD_WRITE, { length: 32 * MiB + 1 }))).toBe(P.NBD_EINVAL);
    // a huge READ has no payload: just refused
    expect(errnoOf(req(P.CMD_READ, { length: 0xffffffff }))).toBe(P.NBD_EINVAL);
  });

  it('refuses unknown commands and unknown flags', () => {
    expect(errnoOf(req(8))).toBe(P.NBD_EINVAL);
    expect(errnoOf(req(0xffff))).toBe(P.NBD_EINVAL);
    expect(errnoOf(req(P.CMD_READ, { flags: 1 << 5 }))).toBe(P.NBD_EINVAL);
    expect(errnoOf(req(P.CMD_READ, { flags: 0x8000 }))).toBe(P.NBD_EINVAL);
  });

  it('accepts FUA on any command and ignores it where nothing is written', () => {
    for (const t of [P.CMD_READ, P.CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES, P.CMD_CACHE, P.CMD_BLOCK_STATUS]) {
      expect(errnoOf(req(t, { flags: P.CMD_FLAG_FUA }))).toBe('ok');
    }
    expect(errnoOf(req(P.CMD_FLUSH, { flags: P.CMD_FLAG_FUA, length: 0 }))).toBe('ok');
  });

  it('allows NO_HOLE and FAST_ZERO only on WRITE_ZEROES', () => {
    expect(errnoOf(req(P.CMD_WRITE_ZEROES, { flags: P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_FAST_ZERO | P.CMD_FLAG_FUA }))).toBe('ok');
    for (const t of [P.CMD_READ, P.CMD_WRITE, P.CMD_TRIM, P.CMD_CACHE, P.CMD_BLOCK_STATUS, P.CMD_FLUSH]) {
      expect(errnoOf(req(t, { flags: P.CMD_FLAG_NO_HOLE }))).toBe(P.NBD_EINVAL);
      expect(errnoOf(req(t, { flags: P.CMD_FLAG_FAST_ZERO }))).toBe(P.NBD_EINVAL);
    }
  });

  it('allows REQ_ONE only on BLOCK_STATUS', () => {
    expect(errnoOf(req(P.CMD_BLOCK_STATUS, { flags: P.CMD_FLAG_REQ_ONE }))).toBe('ok');
    for (const t of [P.CMD_READ, P.CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES, P.CMD_CACHE]) {
      expect(errnoOf(req(t, { flags: P.CMD_FLAG_REQ_ONE }))).toBe(P.NBD_EINVAL);
    }
  });

  it('allows DF only on READ and only with structured replies', () => {
    expect(errnoOf(req(P.CMD_READ, { flags: P.CMD_FLAG_DF }))).toBe('ok');
    expect(errnoOf(req(P.CMD_READ, { flags: P.CMD_FLAG_DF }), { ...ctx, structuredReplies: false })).toBe(P.NBD_EINVAL);
    for (const t of [P.CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES, P.CMD_CACHE, P.CMD_BLOCK_STATUS]) {
      expect(errnoOf(req(t, { flags: P.CMD_FLAG_DF }))).toBe(P.NBD_EINVAL);
    }
  });

  it('refuses BLOCK_STATUS without a negotiated meta context', () => {
    expect(errnoOf(req(P.CMD_BLOCK_STATUS), { ...ctx, blockStatusContext: false })).toBe(P.NBD_EINVAL);
  });

  it('refuses writes of any kind on a read-only export with EPERM, but allows reads', () => {
    const ro = { ...ctx, readOnly: true };
    expect(errnoOf(req(P.CMD_WRITE), ro)).toBe(P.NBD_EPERM);
    expect(errnoOf(req(P.CMD_TRIM), ro)).toBe(P.NBD_EPERM);
    expect(errnoOf(req(P.CMD_WRITE_ZEROES), ro)).toBe(P.NBD_EPERM);
    expect(errnoOf(req(P.CMD_READ), ro)).toBe('ok');
    expect(errnoOf(req(P.CMD_CACHE), ro)).toBe('ok');
    expect(errnoOf(req(P.CMD_FLUSH, { length: 0 }), ro)).toBe('ok');
  });

  it('refuses zero-length data commands', () => {
    for (const t of [P.CMD_READ, P.CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES, P.CMD_CACHE, P.CMD_BLOCK_STATUS]) {
      expect(errnoOf(req(t, { length: 0 }))).toBe(P.NBD_EINVAL);
    }
  });

  it('limits READ and WRITE to the maximum payload but not TRIM, WRITE_ZEROES, CACHE or BLOCK_STATUS', () => {
    expect(errnoOf(req(P.CMD_READ, { length: 32 * MiB }))).toBe('ok');
    expect(errnoOf(req(P.CMD_READ, { length: 32 * MiB + 1 }))).toBe(P.NBD_EINVAL);
    expect(errnoOf(req(P.CMD_WRITE, { length: 32 * MiB + 1 }))).toBe(P.NBD_EINVAL);
    for (const t of [P.CMD_TRIM, P.CMD_WRITE_ZEROES, P.CMD_CACHE, P.CMD_BLOCK_STATUS]) {
      expect(errnoOf(req(t, { length: 64 * MiB }))).toBe('ok');
    }
  });

  it('refuses ranges beyond the end: ENOSPC for writes and zeroes, EINVAL otherwise', () => {
    const end = 64 * MiB;
    expect(errnoOf(req(P.CMD_READ, { offset: end - 4096 }))).toBe('ok');
    expect(errnoOf(req(P.CMD_READ, { offset: end - 4095 }))).toBe(P.NBD_EINVAL);
    expect(errnoOf(req(P.CMD_READ, { offset: end + 1, length: 1 }))).toBe(P.NBD_EINVAL);
    expect(errnoOf(req(P.CMD_WRITE, { offset: end - 1, length: 2 }))).toBe(P.NBD_ENOSPC);
    expect(errnoOf(req(P.CMD_WRITE_ZEROES, { offset: end, length: 1 }))).toBe(P.NBD_ENOSPC);
    expect(errnoOf(req(P.CMD_TRIM, { offset: end, length: 1 }))).toBe(P.NBD_EINVAL);
    expect(errnoOf(req(P.CMD_CACHE, { offset: end, length: 1 }))).toBe(P.NBD_EINVAL);
    expect(errnoOf(req(P.CMD_BLOCK_STATUS, { offset: end - 1, length: 2 }))).toBe(P.NBD_EINVAL);
    // offsets beyond 2^53 (imprecise numbers) are still out of range
    expect(errnoOf(req(P.CMD_READ, { offset: 2 ** 64 - 1, length: 1 }))).toBe(P.NBD_EINVAL);
  });

  it('ignores offset and length on FLUSH and DISC', () => {
    expect(errnoOf(req(P.CMD_FLUSH, { offset: 5, length: 7 }))).toBe('ok');
    expect(errnoOf(req(P.CMD_DISC, { offset: 2 ** 60, length: 7 }))).toBe('ok');
  });

  it('only WRITE carries a payload', () => {
    expect(payloadBytes(req(P.CMD_WRITE, { length: 512 }))).toBe(512);
    for (const t of [P.CMD_READ, P.CMD_TRIM, P.CMD_WRITE_ZEROES, P.CMD_CACHE, P.CMD_BLOCK_STATUS, P.CMD_FLUSH, 99]) {
      expect(payloadBytes(req(t, { length: 512 }))).toBe(0);
    }
  });
});
