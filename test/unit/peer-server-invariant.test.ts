/**
 * A replica that breaks an invariant while serving a peer request: the
 * server reports it to its hook and answers nothing (util/invariant.ts),
 * while ordinary errors still go back as error replies. In process, over a
 * stream pair: no network.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { TorusError } from '../../src/errors/torus-error.js';
import { blockRef } from '../../src/model/block-ref.js';
import { PeerServer } from '../../src/peer/server.js';
import { FakeReplica } from '../helpers/fake-replica.js';
import { streamPair } from '../helpers/nbd-stream-pair.js';
import { CLUSTER, Cleanups, SECRET, SERVER_UUID, codeOf, makeClient, quietLogger } from '../helpers/peer-harness.js';

const BS = 4096;
const CTX = { ringVersion: 0 };
const REF = blockRef(1, 1, 0);

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

function setup(replica: FakeReplica) {
  const broken: Array<{ err: TorusError; context: Record<string, unknown> }> = [];
  const server = new PeerServer({
    replica,
    blockSize: BS,
    logger: quietLogger,
    clusterId: CLUSTER,
    peerUuid: SERVER_UUID,
    incarnation: 'server-incarnation-1',
    secret: SECRET,
    onInvariantBroken: (err, context) => broken.push({ err, context }),
  });
  cleanups.add(() => server.close());
  let connections = 0;
  const client = makeClient(cleanups, { host: 'pair', port: 1 }, BS, {
    // Every (re)connection is a new stream pair handed to the server.
    connect: () => {
      const [mine, theirs] = streamPair();
      server.handleConnection(theirs, { host: 'pair', port: ++connections });
      return mine;
    },
  });
  return { server, client, broken, connections: () => connections };
}

describe('PeerServer and broken invariants', () => {
  it('reports an assertion failure of the replica to the hook, sends no error reply, and cuts the connection', async () => {
    const fake = new FakeReplica(BS);
    const replica = Object.assign(Object.create(fake) as FakeReplica, {
      verify: async () => {
        throw new TorusError('TORUS_ERR_ASSERTION', 'assertion failed: a copy has a version');
      },
    });
    const { client, broken, connections } = setup(replica);
    expect((await client.hello(CTX)).uuid).toBe('fake-peer');
    // The client learns nothing from the server but that the connection went.
    expect(await codeOf(client.verify(CTX, REF))).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(broken).toHaveLength(1);
    expect(broken[0]!.err.message).toBe('assertion failed: a copy has a version');
    expect(broken[0]!.context).toMatchObject({ module: 'peer-server', remote: 'pair:1', opcode: 'VERIFY' });
    expect(typeof broken[0]!.context['requestId']).toBe('number');
    expect(connections()).toBe(1);
  });

  it('takes an answer the protocol cannot carry for an assertion failure too', async () => {
    const fake = new FakeReplica(BS);
    const replica = Object.assign(Object.create(fake) as FakeReplica, { meta: async () => [] });
    const { client, broken } = setup(replica);
    expect(await codeOf(client.meta(CTX, [REF]))).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(broken.map((b) => [b.err.code, b.context['opcode']])).toEqual([['TORUS_ERR_ASSERTION', 'META']]);
  });

  it('still answers ordinary errors with an error reply, and the connection lives', async () => {
    const fake = new FakeReplica(BS);
    const replica = Object.assign(Object.create(fake) as FakeReplica, {
      verify: async () => {
        throw new TorusError('TORUS_ERR_STORE_IO', 'EIO reading the block file');
      },
      flush: async () => {
        throw new TorusError('TORUS_ERR_STORE_NO_SPACE', 'data dir full');
      },
    });
    const { client, broken, connections } = setup(replica);
    expect(await codeOf(client.verify(CTX, REF))).toBe('TORUS_ERR_STORE_IO');
    expect(await codeOf(client.flush(CTX))).toBe('TORUS_ERR_STORE_NO_SPACE');
    expect((await client.hello(CTX)).uuid).toBe('fake-peer');
    expect(broken).toEqual([]);
    expect(connections()).toBe(1);
  });
});
