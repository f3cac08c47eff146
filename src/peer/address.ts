import { isIP } from 'node:net';
import { TorusError } from '../errors/torus-error.js';

/** Where a peer listens. `host` is a name, an IPv4 address or a bare (unbracketed) IPv6 address. */
export interface PeerAddress {
  readonly host: string;
  readonly port: number;
}

export const DEFAULT_PEER_PORT = 40000;

export interface ParsePeerAddressOptions {
  /** Accept port 0 (listen on any free port); never valid for an address others dial. */
  readonly allowPortZero?: boolean;
}

const HOSTNAME_BYTES_MAX = 253;
const LABEL_RE = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const PORT_RE = /^[0-9]{1,5}$/;
/** Torus accepted http:// for the peer address; tdp:// is its block-protocol scheme. */
const SCHEME_RE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;

function invalid(input: string, why: string): TorusError {
  return new TorusError('TORUS_ERR_PEER_ADDRESS_INVALID', `peer address "${input}": ${why}`, { details: { address: input } });
}

function isHostname(host: string): boolean {
  if (host.length === 0 || host.length > HOSTNAME_BYTES_MAX) return false;
  const labels = host.endsWith('.') ? host.slice(0, -1).split('.') : host.split('.');
  if (!labels.every((l) => LABEL_RE.test(l))) return false;
  // A name of digits and dots only would be a malformed IPv4 address (e.g. 10.0.0.256).
  return !labels.every((l) => /^[0-9]+$/.test(l));
}

function parsePort(input: string, text: string, opts: ParsePeerAddressOptions): number {
  if (!PORT_RE.test(text)) throw invalid(input, `port "${text}" is not a number`);
  const port = Number(text);
  if (port > 65535) throw invalid(input, `port ${port} is above 65535`);
  if (port === 0 && opts.allowPortZero !== true) throw invalid(input, 'port 0 is not a reachable port');
  return port;
}

/**
 * Parses the forms `--peer-address` takes: `http://host:port`,
 * `tdp://host:port`, `host:port`, `[v6]:port`, and any of them without the
 * port (DEFAULT_PEER_PORT). Unbracketed IPv6 is refused: `::1:4000` is ambiguous.
 */
export function parsePeerAddress(input: string, opts: ParsePeerAddressOptions = {}): PeerAddress {
  let rest = input.trim();
  if (rest.length === 0) throw invalid(input, 'empty');
  const scheme = SCHEME_RE.exec(rest);
  if (scheme !== null) {
    const name = scheme[1]!.toLowerCase();
    if (name !== 'http' && name !== 'tdp') throw invalid(input, `scheme "${name}" is not http or tdp`);
    rest = rest.slice(scheme[0].length);
    if (rest.endsWith('/')) rest = rest.slice(0, -1);
  }
  if (/[/?#@\s]/.test(rest)) throw invalid(input, 'only host and port are allowed (no path, query, user or spaces)');

  let host: string;
  let portText: string | undefined;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0) throw invalid(input, 'missing "]" after an IPv6 address');
    host = rest.slice(1, close);
    const after = rest.slice(close + 1);
    if (after.length > 0) {
      if (!after.startsWith(':')) throw invalid(input, 'expected ":port" after "]"');
      portText = after.slice(1);
    }
    if (isIP(host) !== 6) throw invalid(input, `"${host}" is not an IPv6 address`);
  } else {
    const colons = rest.split(':').length - 1;
    if (colons > 1) throw invalid(input, 'an IPv6 address must be written in brackets, as [::1]:40000');
    const colon = rest.indexOf(':');
    if (colon >= 0) {
      host = rest.slice(0, colon);
      portText = rest.slice(colon + 1);
    } else {
      host = rest;
    }
    if (host.length === 0) throw invalid(input, 'missing host');
    if (isIP(host) !== 4 && !isHostname(host)) throw invalid(input, `"${host}" is not a host name or IPv4 address`);
  }
  const port = portText === undefined ? DEFAULT_PEER_PORT : parsePort(input, portText, opts);
  return { host, port };
}

/** `host:port`, with IPv6 hosts in brackets; parsePeerAddress reads it back. */
export function formatPeerAddress(addr: PeerAddress): string {
  return isIP(addr.host) === 6 ? `[${addr.host}]:${addr.port}` : `${addr.host}:${addr.port}`;
}
