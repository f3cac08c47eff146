import { describe, expect, it } from 'vitest';
import { Etcd3 } from 'etcd3';
import { startEtcd } from '../helpers/etcd.js';

describe('etcd test harness', () => {
  it('starts a real etcd on a free port and stops it', async () => {
    const etcd = await startEtcd();
    const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
    try {
      await client.put('/probe').value('1');
      expect(await client.get('/probe').string()).toBe('1');
    } finally {
      client.close();
      await etcd.stop();
    }
    expect(etcd.process.exitCode !== null || etcd.process.signalCode !== null).toBe(true);
  });
});
