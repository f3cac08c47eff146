import { createHmac, timingSafeEqual } from 'node:crypto';
import { TorusError } from '../errors/torus-error.js';
import { PROOF_BYTES } from './protocol.js';

/**
 * Proof that one side of a handshake knows the cluster secret: an HMAC over
 * the role label and both HELLO bodies (so both nonces, both uuids, both
 * incarnations and the cluster id). The label keeps a server proof from
 * being replayed as a client proof; the nonces keep an old proof from being
 * replayed at all. With authentication turned off (an empty secret, tests
 * only) the proof still guards against a corrupted handshake.
 */
export function handshakeProof(secret: Buffer, label: string, clientHelloBody: Buffer, serverHelloBody: Buffer): Buffer {
  const mac = createHmac('sha256', secret);
  mac.update(label, 'ascii');
  mac.update(clientHelloBody);
  mac.update(serverHelloBody);
  return mac.digest();
}

export function proofMatches(expected: Buffer, received: Buffer): boolean {
  return received.length === PROOF_BYTES && expected.length === PROOF_BYTES && timingSafeEqual(expected, received);
}

/**
 * The secret a peer client or server authenticates with. Authentication is
 * on by default: an empty secret is refused unless the caller turned it off
 * explicitly with `insecure: true` (tests only; a cluster always has a
 * secret), so a missing secret file cannot silently open the peer port.
 */
export function resolveSecret(secret: string | Buffer, insecure: boolean | undefined, who: string): Buffer {
  const buf = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret;
  if (buf.length === 0 && insecure !== true) {
    throw new TorusError('TORUS_ERR_PEER_AUTH', `no cluster secret: the ${who} refuses to run without authentication`);
  }
  return buf;
}
