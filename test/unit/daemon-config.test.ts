import { describe, expect, it } from 'vitest';
import { DEFAULTS, resolveDaemonConfig } from '../../src/daemon/config.js';
import { isTorusError } from '../../src/errors/torus-error.js';

describe('torusd configuration', () => {
  it('has the Torus defaults', () => {
    const c = resolveDaemonConfig({}, {});
    expect(c.etcdEndpoints).toEqual(['127.0.0.1:2379']);
    expect(c.dataDir).toBe('torus-data');
    expect(c.size).toEqual({ bytes: 2 ** 30 });
    expect(c.peerAddress).toEqual({ host: '127.0.0.1', port: 40000 });
    expect(c.http).toEqual({ host: '127.0.0.1', port: 4321 });
    expect(c.nbd).toEqual({ host: '127.0.0.1', port: 10809 });
    expect(c.autoJoin).toBe(false);
  });

  it('has the replication defaults the docs give: --replica-timeout 8s, --down-out-interval 10m, --rebalance-rate 100MiB', () => {
    expect([DEFAULTS.replicaTimeout, DEFAULTS.downOutInterval, DEFAULTS.rebalanceRate]).toEqual(['8s', '10m', '100MiB']);
    const c = resolveDaemonConfig({}, {});
    expect(c.replicaTimeoutMs).toBe(8_000);
    expect(c.downOutIntervalMs).toBe(10 * 60_000);
    expect(c.rebalanceBytesPerSec).toBe(100 * 2 ** 20);
    // 0 means never for the down-out interval; a copy rate of 0 is refused (there is no "unlimited").
    expect(resolveDaemonConfig({ downOutInterval: '0' }, {}).downOutIntervalMs).toBe(0);
    expect(() => resolveDaemonConfig({ rebalanceRate: '0' }, {})).toThrow(expect.objectContaining({ code: 'TORUS_ERR_ARG_INVALID' }));
    expect(() => resolveDaemonConfig({ replicaTimeout: '0' }, {})).toThrow(expect.objectContaining({ code: 'TORUS_ERR_ARG_INVALID' }));
  });

  it('checkpoints every 60 s unless told, never less than every 100 ms, never "0"', () => {
    expect(resolveDaemonConfig({}, {}).checkpointIntervalMs).toBe(60_000);
    expect(resolveDaemonConfig({ checkpointInterval: '700ms' }, {}).checkpointIntervalMs).toBe(700);
    for (const bad of ['0', '50ms', 'soon']) {
      expect(() => resolveDaemonConfig({ checkpointInterval: bad }, {})).toThrow(expect.objectContaining({ code: 'TORUS_ERR_ARG_INVALID', message: expect.stringMatching(/--checkpoint-interval/) }));
    }
  });

  it('reads the Torus container environment, and flags win', () => {
    const env = { ETCD_HOST: 'etcd', ETCD_PORT: '2479', STORAGE_SIZE: '20GiB', LISTEN_HOST: '10.1.2.3', LISTEN_HTTP_PORT: '5000', AUTO_JOIN: '1', DEBUG_INIT: 'true' };
    const c = resolveDaemonConfig({}, env);
    expect(c.etcdEndpoints).toEqual(['etcd:2479']);
    expect(c.size).toEqual({ bytes: 20 * 2 ** 30 });
    expect(c.peerAddress).toEqual({ host: '10.1.2.3', port: 40000 });
    expect(c.http).toEqual({ host: '10.1.2.3', port: 5000 });
    expect(c.autoJoin).toBe(true);
    expect(c.debugInit).toBe(true);
    const f = resolveDaemonConfig({ etcd: 'other:1', size: '50%', peerAddress: 'tdp://peer:41000', autoJoin: false }, env);
    expect(f.etcdEndpoints).toEqual(['other:1']);
    expect(f.size).toEqual({ percent: 50 });
    expect(f.peerAddress).toEqual({ host: 'peer', port: 41000 });
    expect(f.autoJoin).toBe(false);
  });

  it('rejects malformed values with stable codes', () => {
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return isTorusError(err) ? err.code : 'not a TorusError';
      }
      return 'no error';
    };
    expect(code(() => resolveDaemonConfig({ size: 'lots' }, {}))).toBe('TORUS_ERR_SIZE_INVALID');
    expect(code(() => resolveDaemonConfig({ etcd: 'nohostport' }, {}))).toBe('TORUS_ERR_ARG_INVALID');
    expect(code(() => resolveDaemonConfig({ port: '99999' }, {}))).toBe('TORUS_ERR_ARG_INVALID');
    expect(code(() => resolveDaemonConfig({ nbdAddress: '10809' }, {}))).toBe('TORUS_ERR_ARG_INVALID');
    expect(code(() => resolveDaemonConfig({ peerAddress: 'ftp//x' }, {}))).toBe('TORUS_ERR_PEER_ADDRESS_INVALID');
  });
});
