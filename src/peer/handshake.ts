import { TorusError } from '../errors/torus-error.js';
import { assert } from '../util/assert.js';
import { handshakeProof, proofMatches } from './auth.js';
import { decodeRejectPayload, encodeRejectPayload } from './codec.js';
import { decodeHelloBody, decodeHelloVersions, encodeHandshakeMessage, encodeHelloBody, type Hello, type HandshakeMessage } from './handshake-codec.js';
import {
  HELLO_FLAG_AUTH,
  HELLO_FLAGS_KNOWN,
  HandshakeKind,
  NONCE_BYTES,
  PROOF_LABEL_CLIENT,
  PROOF_LABEL_SERVER,
  PROTOCOL_VERSION_MAX,
  PROTOCOL_VERSION_MIN,
} from './protocol.js';

/** Who this side is; both sides of a connection must agree on all but the uuid. */
export interface HandshakeConfig {
  readonly clusterId: string;
  readonly peerUuid: string;
  /** This side's incarnation: new at every start of the process. */
  readonly incarnation: string;
  /**
   * The shared cluster secret. Empty only where authentication was turned
   * off explicitly (resolveSecret in auth.ts): then the HELLO says so and a
   * peer with a secret refuses the connection.
   */
  readonly secret: Buffer;
  readonly blockSize: number;
}

export interface HandshakeResult {
  readonly version: number;
  readonly remotePeerUuid: string;
  readonly remoteIncarnation: string;
}

/**
 * What to do after a handshake message: send `out`, then either wait for the
 * next message, start serving (`done`), or close the connection (`fail`).
 */
export type HandshakeStep =
  | { readonly kind: 'continue'; readonly out: Buffer[] }
  | { readonly kind: 'done'; readonly out: Buffer[]; readonly result: HandshakeResult }
  | { readonly kind: 'fail'; readonly out: Buffer[]; readonly error: TorusError };

function reject(error: TorusError): HandshakeStep {
  return { kind: 'fail', out: [encodeHandshakeMessage(HandshakeKind.REJECT, encodeRejectPayload(error.code, error.message))], error };
}

function failSilently(error: TorusError): HandshakeStep {
  return { kind: 'fail', out: [], error };
}

function protocolError(message: string): TorusError {
  return new TorusError('TORUS_ERR_PEER_PROTOCOL', message);
}

function myHello(cfg: HandshakeConfig, nonce: Buffer, versionMin: number, versionMax: number): Hello {
  return {
    versionMin,
    versionMax,
    flags: cfg.secret.length > 0 ? HELLO_FLAG_AUTH : 0,
    blockSize: cfg.blockSize,
    nonce,
    clusterId: cfg.clusterId,
    peerUuid: cfg.peerUuid,
    incarnation: cfg.incarnation,
  };
}

/** The settings both sides must share; null when they do. `me` names this side in messages. */
function mismatch(cfg: HandshakeConfig, remote: Hello, me: 'client' | 'server'): TorusError | null {
  const them = me === 'client' ? 'server' : 'client';
  if ((remote.flags & ~HELLO_FLAGS_KNOWN) !== 0) return protocolError(`${them} HELLO has unknown flags 0x${remote.flags.toString(16)}`);
  if (remote.clusterId !== cfg.clusterId) {
    return new TorusError('TORUS_ERR_PEER_AUTH', `${them} peer ${remote.peerUuid} belongs to cluster "${remote.clusterId}", not "${cfg.clusterId}"`);
  }
  const remoteAuth = (remote.flags & HELLO_FLAG_AUTH) !== 0;
  const localAuth = cfg.secret.length > 0;
  if (remoteAuth !== localAuth) {
    return new TorusError(
      'TORUS_ERR_PEER_AUTH',
      `a cluster secret is configured on the ${localAuth ? me : them} but not on the ${localAuth ? them : me} (peer ${remote.peerUuid})`,
    );
  }
  if (remote.blockSize !== cfg.blockSize) {
    return protocolError(`${them} peer ${remote.peerUuid} uses block size ${remote.blockSize}, this ${me} ${cfg.blockSize}`);
  }
  if (remote.incarnation.length === 0) return protocolError(`${them} peer ${remote.peerUuid} sent no incarnation`);
  return null;
}

function badProofError(who: string, peerUuid: string): TorusError {
  return new TorusError('TORUS_ERR_PEER_AUTH', `the ${who} (peer ${peerUuid}) does not know the cluster secret`);
}

/** The client side: send hello(), then feed each message from the server to receive(). */
export class ClientHandshake {
  private state: 'new' | 'hello-sent' | 'proof-sent' | 'over' = 'new';
  private helloBody: Buffer | null = null;
  private result: HandshakeResult | null = null;

  constructor(
    private readonly cfg: HandshakeConfig,
    private readonly nonce: Buffer,
  ) {
    assert(nonce.length === NONCE_BYTES, 'nonce has NONCE_BYTES');
    assert(cfg.incarnation.length > 0, 'an incarnation is set');
  }

  hello(): Buffer {
    assert(this.state === 'new', 'hello() is called once, first');
    this.state = 'hello-sent';
    this.helloBody = encodeHelloBody(myHello(this.cfg, this.nonce, PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX));
    return encodeHandshakeMessage(HandshakeKind.HELLO, this.helloBody);
  }

  receive(msg: HandshakeMessage): HandshakeStep {
    assert(this.state === 'hello-sent' || this.state === 'proof-sent', 'receive() between hello() and the end');
    const step = this.step(msg);
    if (step.kind !== 'continue') this.state = 'over';
    return step;
  }

  private step(msg: HandshakeMessage): HandshakeStep {
    if (msg.kind === HandshakeKind.REJECT) {
      const err = decodeRejectPayload(msg.body, { during: 'handshake' });
      if (this.state === 'hello-sent' && err.code === 'TORUS_ERR_PEER_PROTOCOL') {
        // A server of protocol 1 refuses our HELLO for its layout without
        // naming versions: say which this client speaks.
        const versions = `this client speaks protocol ${PROTOCOL_VERSION_MIN}..${PROTOCOL_VERSION_MAX}`;
        return failSilently(new TorusError(err.code, `the server refused the HELLO: ${err.message} (${versions})`, { details: err.details }));
      }
      return failSilently(err);
    }
    if (this.state === 'hello-sent') {
      if (msg.kind !== HandshakeKind.HELLO) return reject(protocolError(`expected the server HELLO, got message kind ${msg.kind}`));
      let decoded: ReturnType<typeof decodeHelloBody>;
      try {
        decoded = decodeHelloBody(msg.body, true);
      } catch (err) {
        return reject(err as TorusError);
      }
      const { hello, proof, signed } = decoded;
      if (hello.versionMin !== hello.versionMax || hello.versionMin < PROTOCOL_VERSION_MIN || hello.versionMin > PROTOCOL_VERSION_MAX) {
        return reject(protocolError(`the server chose protocol version ${hello.versionMin}..${hello.versionMax}, which this client does not speak`));
      }
      const bad = mismatch(this.cfg, hello, 'client');
      if (bad !== null) return reject(bad);
      const expected = handshakeProof(this.cfg.secret, PROOF_LABEL_SERVER, this.helloBody!, signed);
      if (!proofMatches(expected, proof!)) return reject(badProofError('server', hello.peerUuid));
      this.result = { version: hello.versionMin, remotePeerUuid: hello.peerUuid, remoteIncarnation: hello.incarnation };
      this.state = 'proof-sent';
      const mine = handshakeProof(this.cfg.secret, PROOF_LABEL_CLIENT, this.helloBody!, signed);
      return { kind: 'continue', out: [encodeHandshakeMessage(HandshakeKind.PROOF, mine)] };
    }
    if (msg.kind !== HandshakeKind.READY || msg.body.length !== 0) return reject(protocolError(`expected READY, got message kind ${msg.kind}`));
    return { kind: 'done', out: [], result: this.result! };
  }
}

/** The server side: feed each message from the client to receive(). */
export class ServerHandshake {
  private state: 'wait-hello' | 'wait-proof' | 'over' = 'wait-hello';
  private expectedProof: Buffer | null = null;
  private result: HandshakeResult | null = null;

  constructor(
    private readonly cfg: HandshakeConfig,
    private readonly nonce: Buffer,
  ) {
    assert(nonce.length === NONCE_BYTES, 'nonce has NONCE_BYTES');
    assert(cfg.incarnation.length > 0, 'an incarnation is set');
  }

  receive(msg: HandshakeMessage): HandshakeStep {
    assert(this.state !== 'over', 'receive() before the end');
    const step = this.step(msg);
    if (step.kind !== 'continue') this.state = 'over';
    return step;
  }

  private step(msg: HandshakeMessage): HandshakeStep {
    if (msg.kind === HandshakeKind.REJECT) return failSilently(decodeRejectPayload(msg.body, { during: 'handshake' }));
    if (this.state === 'wait-hello') {
      if (msg.kind !== HandshakeKind.HELLO) return reject(protocolError(`expected the client HELLO, got message kind ${msg.kind}`));
      let hello: Hello;
      let version: number;
      try {
        // Versions first: a HELLO of another protocol version has other fields after them.
        const range = decodeHelloVersions(msg.body);
        version = Math.min(PROTOCOL_VERSION_MAX, range.versionMax);
        if (version < Math.max(PROTOCOL_VERSION_MIN, range.versionMin)) {
          return reject(
            protocolError(
              `the client speaks protocol versions ${range.versionMin}..${range.versionMax}, this server ${PROTOCOL_VERSION_MIN}..${PROTOCOL_VERSION_MAX}`,
            ),
          );
        }
        hello = decodeHelloBody(msg.body, false).hello;
      } catch (err) {
        return reject(err as TorusError);
      }
      const bad = mismatch(this.cfg, hello, 'server');
      if (bad !== null) return reject(bad);
      const signed = encodeHelloBody(myHello(this.cfg, this.nonce, version, version));
      const proof = handshakeProof(this.cfg.secret, PROOF_LABEL_SERVER, msg.body, signed);
      this.expectedProof = handshakeProof(this.cfg.secret, PROOF_LABEL_CLIENT, msg.body, signed);
      this.result = { version, remotePeerUuid: hello.peerUuid, remoteIncarnation: hello.incarnation };
      this.state = 'wait-proof';
      return { kind: 'continue', out: [encodeHandshakeMessage(HandshakeKind.HELLO, Buffer.concat([signed, proof]))] };
    }
    if (msg.kind !== HandshakeKind.PROOF) return reject(protocolError(`expected PROOF, got message kind ${msg.kind}`));
    if (!proofMatches(this.expectedProof!, msg.body)) return reject(badProofError('client', this.result!.remotePeerUuid));
    return { kind: 'done', out: [encodeHandshakeMessage(HandshakeKind.READY, Buffer.alloc(0))], result: this.result! };
  }
}
