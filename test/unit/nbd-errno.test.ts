import { describe, expect, it } from 'vitest';
import { TorusError } from '../../src/errors/torus-error.js';
import { errnoName, errorMessage, optionReplyName, toNbdErrno, toOptionError } from '../../src/nbd/errno.js';
import { resolveLimits, DEFAULT_NBD_LIMITS } from '../../src/nbd/limits.js';
import * as P from '../../src/nbd/protocol.js';

const te = (code: ConstructorParameters<typeof TorusError>[0]) => new TorusError(code, 'm');

describe('toNbdErrno', () => {
  it('maps torus error codes', () => {
    expect(toNbdErrno(te('TORUS_ERR_STORE_NO_SPACE'))).toBe(P.NBD_ENOSPC);
    expect(toNbdErrno(te('TORUS_ERR_IO_OUT_OF_RANGE'))).toBe(P.NBD_EINVAL);
    expect(toNbdErrno(te('TORUS_ERR_VOLUME_READ_ONLY'))).toBe(P.NBD_EPERM);
    expect(toNbdErrno(te('TORUS_ERR_VOLUME_LOCK_LOST'))).toBe(P.NBD_EIO);
    expect(toNbdErrno(te('TORUS_ERR_VOLUME_FENCED'))).toBe(P.NBD_EIO);
    expect(toNbdErrno(te('TORUS_ERR_STORE_BUSY'))).toBe(P.NBD_ENOMEM);
    expect(toNbdErrno(te('TORUS_ERR_STORE_CLOSED'))).toBe(P.NBD_ESHUTDOWN);
    expect(toNbdErrno(te('TORUS_ERR_NBD_UNSUPPORTED'))).toBe(P.NBD_ENOTSUP);
    expect(toNbdErrno(te('TORUS_ERR_STORE_CRC_MISMATCH'))).toBe(P.NBD_EIO);
    expect(toNbdErrno(te('TORUS_ERR_ETCD_UNAVAILABLE'))).toBe(P.NBD_EIO);
  });

  it('maps system errors and falls back to EIO', () => {
    const sys = (code: string) => Object.assign(new Error(code), { code });
    expect(toNbdErrno(sys('ENOSPC'))).toBe(P.NBD_ENOSPC);
    expect(toNbdErrno(sys('EDQUOT'))).toBe(P.NBD_ENOSPC);
    expect(toNbdErrno(sys('EROFS'))).toBe(P.NBD_EPERM);
    expect(toNbdErrno(sys('EOPNOTSUPP'))).toBe(P.NBD_ENOTSUP);
    expect(toNbdErrno(sys('ECONNRESET'))).toBe(P.NBD_EIO);
    expect(toNbdErrno(new Error('x'))).toBe(P.NBD_EIO);
    expect(toNbdErrno('string')).toBe(P.NBD_EIO);
    expect(toNbdErrno(null)).toBe(P.NBD_EIO);
  });

  it('names errnos and formats messages', () => {
    expect(errnoName(P.NBD_ENOSPC)).toBe('ENOSPC');
    expect(errnoName(P.NBD_EOVERFLOW)).toBe('EOVERFLOW');
    expect(errnoName(99)).toBe('E99');
    expect(errorMessage(new TorusError('TORUS_ERR_VOLUME_IN_USE', 'held by a:1'))).toBe('TORUS_ERR_VOLUME_IN_USE: held by a:1');
    expect(errorMessage(new Error('plain'))).toBe('plain');
  });
});

describe('toOptionError', () => {
  it('refuses a volume in use by policy, naming the holder', () => {
    const e = toOptionError(new TorusError('TORUS_ERR_VOLUME_IN_USE', 'volume v is in use by 10.0.0.7:4321'));
    expect(e.type).toBe(P.REP_ERR_POLICY);
    expect(e.message).toContain('10.0.0.7:4321');
    expect(e.aboutExport).toBe(true);
  });

  it('answers NBD_REP_ERR_UNKNOWN only when the export does not exist', () => {
    for (const code of ['TORUS_ERR_NBD_EXPORT_UNKNOWN', 'TORUS_ERR_VOLUME_NOT_FOUND', 'TORUS_ERR_NAME_INVALID'] as const) {
      expect(toOptionError(te(code)), code).toEqual({ type: P.REP_ERR_UNKNOWN, message: `${code}: m`, aboutExport: true });
    }
  });

  it('answers failures to open an existing export now (etcd, lease, races, timeouts) with POLICY, never UNKNOWN, and carries the code', () => {
    for (const code of ['TORUS_ERR_ETCD_UNAVAILABLE', 'TORUS_ERR_ETCD_FAILED', 'TORUS_ERR_TIMEOUT', 'TORUS_ERR_SESSION_LOST', 'TORUS_ERR_CLUSTER_CONFLICT', 'TORUS_ERR_RING_EMPTY'] as const) {
      const e = toOptionError(te(code));
      expect(e.type, code).toBe(P.REP_ERR_POLICY);
      expect(e.message).toBe(`${code}: m`);
      expect(e.aboutExport, code).toBe(false);
    }
    for (const code of ['TORUS_ERR_VOLUME_FENCED', 'TORUS_ERR_VOLUME_READ_ONLY'] as const) {
      expect(toOptionError(te(code)), code).toEqual({ type: P.REP_ERR_POLICY, message: `${code}: m`, aboutExport: true });
    }
  });

  it('answers a server going down with NBD_REP_ERR_SHUTDOWN', () => {
    expect(toOptionError(te('TORUS_ERR_STORE_CLOSED'))).toEqual({ type: P.REP_ERR_SHUTDOWN, message: 'TORUS_ERR_STORE_CLOSED: m', aboutExport: false });
  });

  it('answers an error that is not a TorusError (a bug) with POLICY and a stable code', () => {
    const e = toOptionError(new Error('boom'));
    expect(e.type).toBe(P.REP_ERR_POLICY);
    expect(e.message).toMatch(/^TORUS_ERR_ASSERTION: .*boom/);
    expect(e.aboutExport).toBe(false);
  });

  it('names option error replies as the spec does', () => {
    expect(optionReplyName(P.REP_ERR_UNKNOWN)).toBe('NBD_REP_ERR_UNKNOWN');
    expect(optionReplyName(P.REP_ERR_POLICY)).toBe('NBD_REP_ERR_POLICY');
    expect(optionReplyName(P.REP_ERR_SHUTDOWN)).toBe('NBD_REP_ERR_SHUTDOWN');
    expect(optionReplyName(0x8000_00ff)).toBe('NBD_REP_ERR_0x800000ff');
  });
});

describe('resolveLimits', () => {
  it('fills defaults and rejects nonsense', () => {
    expect(resolveLimits(undefined)).toEqual(DEFAULT_NBD_LIMITS);
    expect(resolveLimits({ inflightMax: 4, optionsMax: undefined }).inflightMax).toBe(4);
    expect(() => resolveLimits({ inflightMax: 0 })).toThrow(/inflightMax/);
    expect(() => resolveLimits({ handshakeTimeoutMs: 1.5 })).toThrow(/handshakeTimeoutMs/);
    expect(() => resolveLimits({ payloadBytesMax: 2 ** 32 })).toThrow(/payloadBytesMax/);
    expect(() => resolveLimits({ payloadBytesMax: 1024, payloadDiscardBytesMax: 512 })).toThrow(/payloadDiscardBytesMax/);
  });
});
