import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { DEFAULT_PEER_PORT, formatPeerAddress, parsePeerAddress } from '../../src/peer/address.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return isTorusError(err) ? err.code : String(err);
  }
}

describe('parsePeerAddress', () => {
  it.each([
    ['http://127.0.0.1:40000', '127.0.0.1', 40000],
    ['tdp://127.0.0.1:4100', '127.0.0.1', 4100],
    ['HTTP://node-1.example.com:1', 'node-1.example.com', 1],
    ['http://10.0.0.1:40000/', '10.0.0.1', 40000],
    ['127.0.0.1:40001', '127.0.0.1', 40001],
    ['localhost:65535', 'localhost', 65535],
    ['[::1]:40000', '::1', 40000],
    ['tdp://[fe80::1]:7', 'fe80::1', 7],
    ['[2001:db8::42]', '2001:db8::42', DEFAULT_PEER_PORT],
    ['node-1', 'node-1', DEFAULT_PEER_PORT],
    ['torus-0.torus.default.svc.cluster.local', 'torus-0.torus.default.svc.cluster.local', DEFAULT_PEER_PORT],
    ['http://10.1.2.3', '10.1.2.3', DEFAULT_PEER_PORT],
    ['  192.168.1.1:40000\n', '192.168.1.1', 40000],
    ['host.:80', 'host.', 80],
    ['0.0.0.0:40000', '0.0.0.0', 40000],
  ])('%j -> %s port %d', (input, host, port) => {
    expect(parsePeerAddress(input)).toEqual({ host, port });
  });

  it('defaults the port to 40000', () => {
    expect(DEFAULT_PEER_PORT).toBe(40000);
  });

  it.each([
    '',
    '   ',
    ':40000',
    'http://',
    'http://:40000',
    'https://host:40000',
    'tcp://host:40000',
    'host:',
    'host:0',
    'host:65536',
    'host:99999999',
    'host:-1',
    'host:+80',
    'host:80a',
    'host:0x50',
    'host:4 0',
    'host:40000:1',
    '::1',
    '::1:40000',
    '[::1',
    '[::1]40000',
    '[::1]:',
    '[not-v6]:1',
    '[127.0.0.1]:1',
    'http://host:40000/path',
    'host/path',
    'user@host:40000',
    'host?x=1',
    'ho st:1',
    'under_score:1',
    '-leading:1',
    'trailing-:1',
    'a..b:1',
    '.host:1',
    '10.0.0.256:1',
    '1.2.3:1',
    `${'a'.repeat(64)}.com:1`,
    `${'a.'.repeat(127)}ab:1`,
  ])('refuses %j with TORUS_ERR_PEER_ADDRESS_INVALID', (input) => {
    expect(codeOf(() => parsePeerAddress(input))).toBe('TORUS_ERR_PEER_ADDRESS_INVALID');
  });

  it('accepts port 0 only when asked (listeners)', () => {
    expect(parsePeerAddress('127.0.0.1:0', { allowPortZero: true })).toEqual({ host: '127.0.0.1', port: 0 });
  });

  it('names the input in the error', () => {
    try {
      parsePeerAddress('bad host');
      expect.unreachable();
    } catch (err) {
      expect(String((err as Error).message)).toContain('"bad host"');
    }
  });
});

describe('formatPeerAddress', () => {
  it.each([
    [{ host: '127.0.0.1', port: 40000 }, '127.0.0.1:40000'],
    [{ host: 'node-1', port: 1 }, 'node-1:1'],
    [{ host: '::1', port: 40000 }, '[::1]:40000'],
    [{ host: 'fe80::1', port: 7 }, '[fe80::1]:7'],
  ])('%j -> %s and back', (addr, text) => {
    expect(formatPeerAddress(addr)).toBe(text);
    expect(parsePeerAddress(text)).toEqual(addr);
  });

  it('round-trips every accepted form to its canonical host:port', () => {
    for (const input of ['http://a:1', 'tdp://[::2]:3', 'b', '[::3]']) {
      const addr = parsePeerAddress(input);
      expect(parsePeerAddress(formatPeerAddress(addr))).toEqual(addr);
    }
  });
});
