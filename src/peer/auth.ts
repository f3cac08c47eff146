import { createHmac, timingSafeEqual } from 'node:crypto';
import { PROOF_BYTES } from './protocol.js';

/**
 * Proof that one side of a handshake knows the cluster secret: an HMAC over
 * the role label and both HELLO bodies (so both nonces, both uuids and the
 * cluster id). The label keeps a server proof from being replayed as a
 * client proof; the nonces keep an old proof from being replayed at all.
 * An empty secret (no auth configured) still yields a proof, which then only
 * guards against a corrupted handshake.
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
