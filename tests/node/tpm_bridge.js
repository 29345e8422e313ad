// A bridge from the Microsoft TPM simulator's TCP protocol, which tss.js speaks
// (`new Tpm(true, host, port)`), to swtpm, which takes raw TPM 2.0 commands on its server port.
//
// tss.js opens two connections: the command port (handshake, then each command framed with
// its locality and length, each response framed with its length and a trailing 0) and the
// platform port, the next one (power and NV signals, each acknowledged with 0). The bridge
// answers the handshake and the signals itself and relays every command to swtpm on one
// connection of its own. swtpm was started already (TPM2_Startup done), so tss.js's own
// Startup gets TPM_RC_INITIALIZE, which tss.js accepts.
//
// startBridge({host, port}, bindHost) listens on two consecutive free ports of bindHost and
// resolves with {host, port, close}.
'use strict';

const net = require('net');

const SEND_COMMAND = 8;
const HANDSHAKE = 15;
const SESSION_END = 20;
const STOP = 21;
const SERVER_VERSION = 1;
const TPM_PROPERTIES = 0x05; // a TPM 2.0 that keeps its state

function u32(value) {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value >>> 0);
  return buffer;
}

/** Reads exact byte counts from a socket, in order. */
class Reader {
  constructor(socket) {
    this.buffer = Buffer.alloc(0);
    this.waiting = null;
    this.closed = false;
    socket.on('data', (data) => {
      this.buffer = Buffer.concat([this.buffer, data]);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => {});
  }

  wake() {
    if (this.waiting) {
      const { count, resolve, reject } = this.waiting;
      if (this.buffer.length >= count) {
        this.waiting = null;
        const chunk = this.buffer.subarray(0, count);
        this.buffer = this.buffer.subarray(count);
        resolve(chunk);
      } else if (this.closed) {
        this.waiting = null;
        reject(new Error('connection closed'));
      }
    }
  }

  read(count) {
    return new Promise((resolve, reject) => {
      this.waiting = { count, resolve, reject };
      this.wake();
    });
  }
}

/** One raw TPM command to swtpm and its whole response (the size is in the header). */
async function relay(swtpm, reader, command) {
  swtpm.write(command);
  const header = await reader.read(10);
  const size = header.readUInt32BE(2);
  const rest = size > 10 ? await reader.read(size - 10) : Buffer.alloc(0);
  return Buffer.concat([header, rest]);
}

async function serveCommands(client, target) {
  const fromClient = new Reader(client);
  const swtpm = net.connect(target.port, target.host);
  const fromSwtpm = new Reader(swtpm);
  try {
    for (;;) {
      const command = (await fromClient.read(4)).readUInt32BE(0);
      if (command === HANDSHAKE) {
        await fromClient.read(4); // the client's version
        client.write(Buffer.concat([u32(SERVER_VERSION), u32(TPM_PROPERTIES), u32(0)]));
      } else if (command === SEND_COMMAND) {
        await fromClient.read(1); // locality
        const length = (await fromClient.read(4)).readUInt32BE(0);
        const response = await relay(swtpm, fromSwtpm, await fromClient.read(length));
        client.write(Buffer.concat([u32(response.length), response, u32(0)]));
      } else if (command === SESSION_END || command === STOP) {
        break;
      } else {
        client.write(u32(0));
      }
    }
  } catch (_) {
    // the client or swtpm went away
  } finally {
    client.destroy();
    swtpm.destroy();
  }
}

async function servePlatform(client) {
  const fromClient = new Reader(client);
  try {
    for (;;) {
      await fromClient.read(4); // power on, NV on, ...: all acknowledged
      client.write(u32(0));
    }
  } catch (_) {
    client.destroy();
  }
}

function listen(server, port, host) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.removeListener('error', reject);
      resolve(server.address().port);
    });
  });
}

function closeServer(server) {
  return new Promise((resolve) => server.close(() => resolve()));
}

async function startBridge(target, bindHost) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const commands = net.createServer((socket) => serveCommands(socket, target));
    const platform = net.createServer((socket) => servePlatform(socket));
    const port = await listen(commands, 0, bindHost);
    try {
      await listen(platform, port + 1, bindHost);
    } catch (_) {
      await closeServer(commands);
      continue;
    }
    return {
      host: bindHost,
      port,
      close: () => Promise.all([closeServer(commands), closeServer(platform)]),
    };
  }
  throw new Error(`no two consecutive free ports on ${bindHost}`);
}

module.exports = { startBridge };
