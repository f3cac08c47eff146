// A minimal NBD client for the guest scripts: fixed newstyle handshake,
// NBD_OPT_GO, simple replies, READ / WRITE / FLUSH with several requests in
// flight. Plain JS on purpose (the guest runs under emulation, see
// scenarios.mjs); the wire encoders and constants are the product's own
// (dist/src/nbd), so a change to the codec cannot drift from this client.
import net from 'node:net';
import path from 'node:path';

export async function loadNbdClient(dist) {
  const codec = await import(path.join(dist, 'src/nbd/codec.js'));
  const p = await import(path.join(dist, 'src/nbd/protocol.js'));

  class ByteReader {
    constructor(socket) {
      this.chunks = [];
      this.length = 0;
      this.waiter = null;
      this.error = null;
      socket.on('data', (c) => {
        this.chunks.push(c);
        this.length += c.length;
        this.serve();
      });
      const end = (err) => {
        this.error ??= err ?? new Error('connection closed');
        this.serve();
      };
      socket.on('error', end);
      socket.on('close', () => end());
    }
    read(n) {
      return new Promise((resolve, reject) => {
        this.waiter = { n, resolve, reject };
        this.serve();
      });
    }
    serve() {
      const w = this.waiter;
      if (w === null) return;
      if (this.length >= w.n) {
        const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
        const out = all.subarray(0, w.n);
        const rest = all.subarray(w.n);
        this.chunks = rest.length > 0 ? [rest] : [];
        this.length = rest.length;
        this.waiter = null;
        w.resolve(out);
      } else if (this.error !== null) {
        this.waiter = null;
        w.reject(this.error);
      }
    }
  }

  class NbdClient {
    constructor(socket) {
      this.socket = socket;
      this.reader = new ByteReader(socket);
      this.pending = new Map();
      this.nextCookie = 1n;
      this.size = 0;
      this.failed = null;
    }

    /** Connects and negotiates `name` with NBD_OPT_GO; throws with the server's message when refused. */
    static async connect(host, port, name) {
      const socket = net.connect({ host, port });
      socket.setNoDelay(true);
      await new Promise((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      });
      const c = new NbdClient(socket);
      try {
        const g = await c.reader.read(p.GREETING_BYTES);
        if (g.readUInt32BE(0) !== p.NBD_MAGIC_HI || g.readUInt32BE(4) !== p.NBD_MAGIC_LO || g.readUInt32BE(8) !== p.IHAVEOPT_HI || g.readUInt32BE(12) !== p.IHAVEOPT_LO) {
          throw new Error(`bad NBD greeting ${g.toString('hex')}`);
        }
        const flags = Buffer.alloc(4);
        flags.writeUInt32BE(p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES, 0);
        const data = codec.encodeInfoRequest(name, []);
        socket.write(Buffer.concat([flags, codec.encodeOptionHeader(p.OPT_GO, data.length), data]));
        for (;;) {
          const h = codec.decodeOptionReplyHeader(await c.reader.read(p.OPTION_REPLY_HEADER_BYTES));
          if (!h.magicOk) throw new Error('bad NBD option reply magic');
          const body = h.length > 0 ? Buffer.from(await c.reader.read(h.length)) : Buffer.alloc(0);
          if (h.type === p.REP_INFO && body.readUInt16BE(0) === p.INFO_EXPORT) c.size = codec.readUint64(body, 2);
          if (h.type === p.REP_ACK) break;
          if (h.type >= 0x80000000) throw new Error(`NBD_OPT_GO refused (0x${h.type.toString(16)}): ${body.toString()}`);
        }
      } catch (err) {
        socket.destroy();
        throw err;
      }
      void c.replyLoop();
      return c;
    }

    async replyLoop() {
      try {
        for (;;) {
          const r = codec.decodeSimpleReply(await this.reader.read(p.SIMPLE_REPLY_BYTES));
          if (!r.magicOk) throw new Error('bad NBD reply magic (structured replies were not negotiated)');
          const req = this.pending.get(r.cookie);
          if (req === undefined) throw new Error(`NBD reply for unknown cookie ${r.cookie}`);
          this.pending.delete(r.cookie);
          // A simple reply carries no payload when the read failed.
          const data = req.type === p.CMD_READ && r.error === 0 ? Buffer.from(await this.reader.read(req.length)) : undefined;
          if (r.error !== 0) req.reject(Object.assign(new Error(`NBD ${req.what} failed with error ${r.error}`), { nbdError: r.error }));
          else req.resolve(data);
        }
      } catch (err) {
        this.failed = err;
        for (const req of this.pending.values()) req.reject(err);
        this.pending.clear();
        this.socket.destroy();
      }
    }

    request(type, offset, length, payload, what) {
      if (this.failed !== null) return Promise.reject(this.failed);
      const cookie = this.nextCookie++;
      const done = new Promise((resolve, reject) => this.pending.set(cookie, { type, length, what, resolve, reject }));
      const header = codec.encodeRequestHeader({ flags: 0, type, cookie, offset, length });
      this.socket.write(payload === undefined ? header : Buffer.concat([header, payload]));
      return done;
    }

    read(offset, length) {
      return this.request(p.CMD_READ, offset, length, undefined, `read ${offset}+${length}`);
    }
    write(offset, data) {
      return this.request(p.CMD_WRITE, offset, data.length, data, `write ${offset}+${data.length}`);
    }
    flush() {
      return this.request(p.CMD_FLUSH, 0, 0, undefined, 'flush');
    }
    /** NBD_CMD_DISC, then waits for the server to hang up. */
    async disconnect() {
      // A connection the server already broke (its torusd was killed) has nothing to end.
      if (this.socket.destroyed) return;
      const closed = new Promise((r) => this.socket.once('close', r));
      this.socket.end(codec.encodeRequestHeader({ flags: 0, type: p.CMD_DISC, cookie: 0n, offset: 0, length: 0 }));
      await closed;
    }
  }

  return NbdClient;
}
