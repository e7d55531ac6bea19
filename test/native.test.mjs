// The native addon on real sockets: every call, its errors, the poller's life cycle (in child
// processes and workers), and the process's fd count, unchanged at the end of every test.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { once } from 'node:events';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import util from 'node:util';
import { forOtherUser } from './helpers.mjs';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const native = require('node-gyp-build')(root);

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;

let tmp;
/** What a child running as uid 65534 needs, in a dir it can read (the checkout may be under a 0700 dir). */
let nobody;

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-native-'));
  nobody = forOtherUser(fs.mkdtempSync(path.join(os.tmpdir(), 'handover-native-nobody-')));
  // The first child process makes libuv open its signal pipe for good: do it before any count.
  await runChild('');
});

after(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.rmSync(nobody.cwd, { recursive: true, force: true });
});

function fdCount() {
  return fs.readdirSync('/proc/self/fd').length;
}

/** A test that fails when it leaves the process with more or fewer fds than it found. */
function fdTest(name, fn, options = {}) {
  test(name, options, async (t) => {
    const before = fdCount();
    await fn(t);
    assert.equal(fdCount(), before, 'the fd count changed');
  });
}

function fdFlags(fd) {
  const match = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return parseInt(match[1], 8);
}

function closeAll(fds) {
  for (const fd of fds) native.close(fd);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs fn, expects a Node-shaped system error, and returns it. */
function assertSystemError(fn, code, syscall) {
  let caught;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof Error, `expected an error with code ${code}`);
  assert.equal(caught.code, code);
  assert.equal(caught.syscall, syscall);
  assert.equal(typeof caught.errno, 'number');
  assert.ok(caught.errno < 0, 'errno is negative, as in Node');
  assert.equal(util.getSystemErrorName(caught.errno), code, 'code is the name Node gives that errno');
  assert.match(caught.message, new RegExp(`^${syscall}: [A-Z]`));
  return caught;
}

function assertArgError(fn, ErrorClass, code) {
  assert.throws(fn, (err) => err instanceof ErrorClass && err.code === code);
}

function tempFile(name, contents) {
  const file = path.join(tmp, name);
  fs.writeFileSync(file, contents);
  return file;
}

function listen(server, ...args) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(...args, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function closeServer(server) {
  return new Promise((resolve) => server.close(() => resolve()));
}

async function destroySocket(socket) {
  if (socket.destroyed && socket.closed) return;
  const closed = once(socket, 'close');
  socket.destroy();
  await closed;
}

/** Runs a CommonJS script in a fresh node; NATIVE in it is the addon. Kills it (by pid) after 15 s. */
function runChild(script, nodeArgs = []) {
  const prelude = script === '' ? '' : `const NATIVE = require(${JSON.stringify(path.join(root, 'node_modules', 'node-gyp-build'))})(${JSON.stringify(root)});\n`;
  return runNode(process.execPath, [...nodeArgs, '-e', prelude + script], { cwd: root });
}

/** Runs a CommonJS script as uid 65534 (nobody), from copies it can reach; NATIVE in it is the addon. */
function runChildAsNobody(script) {
  const prelude = `const NATIVE = require(${JSON.stringify(nobody.addon)});\n`;
  return runNode(nobody.node, ['-e', prelude + script], { cwd: nobody.cwd, uid: 65534, gid: 65534 });
}

function runNode(node, args, spawnOptions) {
  return new Promise((resolve, reject) => {
    const child = spawn(node, args, { stdio: ['ignore', 'pipe', 'pipe'], ...spawnOptions });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => process.kill(child.pid, 'SIGKILL'), 15_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/**
 * The fd of this process that holds the UDP socket bound to `port`, found from outside Node (whose
 * dgram keeps its handle private since Node 26): the socket's inode in /proc/net/udp, then the fd
 * in /proc/self/fd that links to it.
 */
function udpSocketFd(port) {
  const hexPort = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const inodes = new Set();
  for (const line of fs.readFileSync('/proc/net/udp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length > 9 && fields[1].endsWith(hexPort)) inodes.add(`socket:[${fields[9]}]`);
  }
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let target;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the fd readdir itself used, closed since
    }
    if (inodes.has(target)) return Number(fd);
  }
  throw new Error(`no fd of ours holds a UDP socket on port ${port}`);
}

describe('exports', () => {
  test('match the Binding interface', () => {
    assert.equal(native.MAX_FDS_PER_MESSAGE, 253);
    const functions = ['seqpacketPair', 'seqpacketListen', 'seqpacketConnect', 'unixStreamListen', 'unixStreamConnect', 'accept', 'sendmsg', 'recvmsg', 'peerCredentials', 'socketInfo', 'checkConnections', 'epollCreate', 'epollAdd', 'epollDelete', 'epollWait', 'dup', 'close', 'setNonBlocking', 'notify', 'unixDatagramBind', 'createPoller', 'reapChild', 'setChildSubreaper'];
    for (const name of functions) assert.equal(typeof native[name], 'function', name);
    assert.deepEqual(Object.keys(native).sort(), ['MAX_FDS_PER_MESSAGE', ...functions].sort());
  });
});

describe('notify, unixDatagramBind', () => {
  fdTest('one datagram to a path or an abstract name, with fds attached; ENOENT where nobody listens', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-native-'));
    const socketPath = path.join(dir, 'notify.sock');
    const receiver = native.unixDatagramBind(socketPath);
    assert.deepEqual(native.socketInfo(receiver), { type: 'dgram', family: 'unix', listening: false, path: socketPath });
    const buffer = Buffer.alloc(256);
    assert.equal(native.notify(socketPath, Buffer.from('READY=1'), [], 1000), 7);
    const first = native.recvmsg(receiver, buffer, 4);
    assert.deepEqual([buffer.toString('utf8', 0, first.bytes), first.fds], ['READY=1', []]);
    const file = fs.openSync(fileURLToPath(import.meta.url), 'r');
    native.notify(socketPath, Buffer.from('FDSTORE=1\nFDNAME=x'), [file], 1000);
    const second = native.recvmsg(receiver, buffer, 4);
    assert.equal(buffer.toString('utf8', 0, second.bytes), 'FDSTORE=1\nFDNAME=x');
    assert.equal(second.fds.length, 1);
    assert.equal(fs.fstatSync(second.fds[0]).ino, fs.fstatSync(file).ino, 'the fd arrived with the message');
    closeAll([second.fds[0], file]);
    const abstract = `\0handover-native-${process.pid}-${Date.now()}`;
    const abstractReceiver = native.unixDatagramBind(abstract);
    native.notify(abstract, Buffer.from('STOPPING=1'), [], 1000);
    const third = native.recvmsg(abstractReceiver, buffer, 4);
    assert.equal(buffer.toString('utf8', 0, third.bytes), 'STOPPING=1');
    assert.equal(native.recvmsg(receiver, buffer, 4), null, 'nothing else arrived');
    closeAll([receiver, abstractReceiver]);
    assert.throws(() => native.notify(path.join(dir, 'nobody.sock'), Buffer.from('READY=1'), [], 1000), { code: 'ENOENT', syscall: 'sendmsg' });
    assert.throws(() => native.notify(socketPath, Buffer.from('READY=1'), [], 0), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => native.notify(socketPath, 'READY=1', [], 1000), { code: 'ERR_INVALID_ARG_TYPE' });
    fs.rmSync(dir, { recursive: true, force: true });
  });

  fdTest('a receiver whose queue is full: the send gives up after timeoutMs with EAGAIN', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-native-'));
    const socketPath = path.join(dir, 'notify.sock');
    const receiver = native.unixDatagramBind(socketPath);
    let error;
    for (let sent = 0; sent < 100_000 && error === undefined; sent++) {
      try {
        native.notify(socketPath, Buffer.alloc(1024), [], 20);
      } catch (err) {
        error = err;
      }
    }
    assert.equal(error?.code, 'EAGAIN');
    closeAll([receiver]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('unixStreamListen, unixStreamConnect', () => {
  fdTest('a unix stream listener bound by us: live, connectable, and stale once closed', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-native-'));
    const socketPath = path.join(dir, 's.sock');
    const listener = native.unixStreamListen(socketPath, 8);
    assert.deepEqual(native.socketInfo(listener), { type: 'stream', family: 'unix', listening: true, path: socketPath });
    const client = native.unixStreamConnect(socketPath);
    assert.equal(native.socketInfo(client).type, 'stream');
    const accepted = native.accept(listener);
    assert.ok(accepted >= 0);
    closeAll([client, accepted, listener]);
    assert.ok(fs.existsSync(socketPath), 'closing the fd does not unlink the path');
    assert.throws(() => native.unixStreamConnect(socketPath), { code: 'ECONNREFUSED' });
    assert.throws(() => native.unixStreamListen(socketPath, 8), { code: 'EADDRINUSE' });
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('seqpacketPair, sendmsg, recvmsg', () => {
  fdTest('a pair is two non-blocking, close-on-exec seqpacket sockets', () => {
    const pair = native.seqpacketPair();
    assert.equal(pair.length, 2);
    for (const fd of pair) {
      assert.ok(Number.isInteger(fd) && fd >= 0);
      assert.equal(fdFlags(fd) & O_NONBLOCK, O_NONBLOCK);
      assert.equal(fdFlags(fd) & O_CLOEXEC, O_CLOEXEC);
      assert.deepEqual(native.socketInfo(fd), { type: 'seqpacket', family: 'unix', listening: false, path: '' });
    }
    closeAll(pair);
  });

  fdTest('a file fd sent over the pair reads the same file', () => {
    const file = tempFile('sent.txt', 'hello through SCM_RIGHTS');
    const fileFd = fs.openSync(file, 'r');
    const [a, b] = native.seqpacketPair();
    assert.equal(native.sendmsg(a, Buffer.from('file'), [fileFd]), 4);
    const buffer = Buffer.alloc(64);
    const message = native.recvmsg(b, buffer, 1);
    assert.equal(message.bytes, 4);
    assert.equal(buffer.subarray(0, 4).toString(), 'file');
    assert.equal(message.fds.length, 1);
    const [received] = message.fds;
    assert.notEqual(received, fileFd);
    assert.equal(fdFlags(received) & O_CLOEXEC, O_CLOEXEC, 'MSG_CMSG_CLOEXEC');
    const out = Buffer.alloc(64);
    const read = fs.readSync(received, out, 0, out.length, 0);
    assert.equal(out.subarray(0, read).toString(), 'hello through SCM_RIGHTS');
    fs.closeSync(fileFd);
    closeAll([received, a, b]);
  });

  fdTest('message boundaries are kept', () => {
    const [a, b] = native.seqpacketPair();
    for (const word of ['one', 'two', 'three']) native.sendmsg(a, Buffer.from(word), []);
    const buffer = Buffer.alloc(64);
    for (const word of ['one', 'two', 'three']) {
      const message = native.recvmsg(b, buffer, 4);
      assert.deepEqual(message, { bytes: word.length, fds: [] });
      assert.equal(buffer.subarray(0, message.bytes).toString(), word);
    }
    assert.equal(native.recvmsg(b, buffer, 4), null);
    closeAll([a, b]);
  });

  fdTest('a zero-byte message still carries its fds', () => {
    const [a, b] = native.seqpacketPair();
    assert.equal(native.sendmsg(a, Buffer.alloc(0), [a]), 0);
    const message = native.recvmsg(b, Buffer.alloc(8), 1);
    assert.equal(message.bytes, 0);
    assert.equal(message.fds.length, 1);
    closeAll([...message.fds, a, b]);
  });

  fdTest('253 fds travel in one message', () => {
    const fileFd = fs.openSync(tempFile('many.txt', 'x'), 'r');
    const [a, b] = native.seqpacketPair();
    const fds = new Array(253).fill(fileFd);
    assert.equal(native.sendmsg(a, Buffer.from('many'), fds), 4);
    const message = native.recvmsg(b, Buffer.alloc(16), native.MAX_FDS_PER_MESSAGE);
    assert.equal(message.bytes, 4);
    assert.equal(message.fds.length, 253);
    assert.equal(new Set(message.fds).size, 253);
    closeAll(message.fds);
    fs.closeSync(fileFd);
    closeAll([a, b]);
  });

  fdTest('254 fds are refused before any syscall', () => {
    const [a, b] = native.seqpacketPair();
    assertArgError(() => native.sendmsg(a, Buffer.from('x'), new Array(254).fill(a)), RangeError, 'ERR_OUT_OF_RANGE');
    assert.equal(native.recvmsg(b, Buffer.alloc(8), 253), null);
    closeAll([a, b]);
  });

  fdTest('more fds than maxFds: EMSGSIZE, every arrived fd closed, the message consumed', () => {
    const fileFd = fs.openSync(tempFile('ctrunc.txt', 'x'), 'r');
    const [a, b] = native.seqpacketPair();
    const before = fdCount();
    // 3 into room for 2 (the kernel truncates), 2 into room for 1 (CMSG_SPACE padding fits 2),
    // 1 into room for none.
    for (const [sent, room] of [[3, 2], [2, 1], [1, 0]]) {
      native.sendmsg(a, Buffer.from('fds'), new Array(sent).fill(fileFd));
      assertSystemError(() => native.recvmsg(b, Buffer.alloc(16), room), 'EMSGSIZE', 'recvmsg');
      assert.equal(fdCount(), before, `no fd left behind after ${sent} into ${room}`);
    }
    native.sendmsg(a, Buffer.from('next'), []);
    assert.deepEqual(native.recvmsg(b, Buffer.alloc(16), 0), { bytes: 4, fds: [] });
    fs.closeSync(fileFd);
    closeAll([a, b]);
  });

  fdTest('a message larger than the buffer: EMSGSIZE and its fds closed', () => {
    const [a, b] = native.seqpacketPair();
    const before = fdCount();
    native.sendmsg(a, Buffer.alloc(10, 1), [a, b]);
    assertSystemError(() => native.recvmsg(b, Buffer.alloc(4), 4), 'EMSGSIZE', 'recvmsg');
    assert.equal(fdCount(), before);
    assert.equal(native.recvmsg(b, Buffer.alloc(16), 4), null, 'the truncated message is gone');
    closeAll([a, b]);
  });

  fdTest('EAGAIN: recvmsg returns null, sendmsg -1', () => {
    const [a, b] = native.seqpacketPair();
    assert.equal(native.recvmsg(a, Buffer.alloc(16), 4), null);
    const chunk = Buffer.alloc(32 * 1024);
    let sent = 0;
    let result = 0;
    while (sent < 10_000 && (result = native.sendmsg(a, chunk, [])) !== -1) {
      assert.equal(result, chunk.length);
      sent++;
    }
    assert.equal(result, -1, 'the send buffer filled up');
    assert.ok(sent > 0);
    const buffer = Buffer.alloc(chunk.length);
    for (let i = 0; i < sent; i++) assert.equal(native.recvmsg(b, buffer, 0).bytes, chunk.length);
    assert.equal(native.recvmsg(b, buffer, 0), null);
    assert.equal(native.sendmsg(a, chunk, []), chunk.length, 'room again once drained');
    closeAll([a, b]);
  });

  fdTest('peer closed: recvmsg gives 0 bytes and no fds, sendmsg EPIPE', () => {
    const [a, b] = native.seqpacketPair();
    native.close(a);
    assert.deepEqual(native.recvmsg(b, Buffer.alloc(16), 4), { bytes: 0, fds: [] });
    assertSystemError(() => native.sendmsg(b, Buffer.from('x'), []), 'EPIPE', 'sendmsg');
    native.close(b);
  });

  fdTest('sendmsg of a closed fd in the list: EBADF', () => {
    const [a, b] = native.seqpacketPair();
    const spare = native.dup(a);
    native.close(spare);
    assertSystemError(() => native.sendmsg(a, Buffer.from('x'), [spare]), 'EBADF', 'sendmsg');
    closeAll([a, b]);
  });
});

describe('seqpacketListen, seqpacketConnect, accept', () => {
  fdTest('listen, connect, accept, talk both ways', () => {
    const socketPath = path.join(tmp, 'control.sock');
    const listener = native.seqpacketListen(socketPath, 8);
    assert.deepEqual(native.socketInfo(listener), { type: 'seqpacket', family: 'unix', listening: true, path: socketPath });
    assert.equal(fdFlags(listener) & (O_NONBLOCK | O_CLOEXEC), O_NONBLOCK | O_CLOEXEC);
    assert.equal(native.accept(listener), -1, 'nothing pending');

    const client = native.seqpacketConnect(socketPath);
    const server = native.accept(listener);
    assert.ok(server >= 0);
    for (const fd of [client, server]) assert.equal(fdFlags(fd) & (O_NONBLOCK | O_CLOEXEC), O_NONBLOCK | O_CLOEXEC);
    assert.deepEqual(native.socketInfo(client), { type: 'seqpacket', family: 'unix', listening: false, path: '' });
    assert.deepEqual(native.socketInfo(server), { type: 'seqpacket', family: 'unix', listening: false, path: socketPath });
    assert.equal(native.accept(listener), -1);

    const buffer = Buffer.alloc(16);
    native.sendmsg(client, Buffer.from('hello'), []);
    assert.deepEqual(native.recvmsg(server, buffer, 1), { bytes: 5, fds: [] });
    native.sendmsg(server, Buffer.from('back'), [server]);
    const reply = native.recvmsg(client, buffer, 1);
    assert.equal(reply.bytes, 4);
    assert.equal(reply.fds.length, 1);
    closeAll([...reply.fds, client, server, listener]);
    fs.unlinkSync(socketPath);
  });

  fdTest('connect to a missing path: ENOENT', () => {
    const err = assertSystemError(() => native.seqpacketConnect(path.join(tmp, 'missing.sock')), 'ENOENT', 'connect');
    assert.equal(err.errno, -2);
    assert.equal(err.message, 'connect: No such file or directory');
    assert.equal(err.path, path.join(tmp, 'missing.sock'));
  });

  fdTest('connect to a stale socket file: ECONNREFUSED', () => {
    const socketPath = path.join(tmp, 'stale.sock');
    native.close(native.seqpacketListen(socketPath, 1));
    assert.ok(fs.statSync(socketPath).isSocket(), 'the file stays');
    assertSystemError(() => native.seqpacketConnect(socketPath), 'ECONNREFUSED', 'connect');
    fs.unlinkSync(socketPath);
  });

  fdTest('listen where a file exists: EADDRINUSE (nothing is unlinked)', () => {
    const socketPath = tempFile('taken.sock', '');
    assertSystemError(() => native.seqpacketListen(socketPath, 1), 'EADDRINUSE', 'bind');
    assert.equal(fs.readFileSync(socketPath, 'utf8'), '');
    fs.unlinkSync(socketPath);
  });

  fdTest('a path longer than sun_path: ENAMETOOLONG', () => {
    const long = path.join(tmp, 'x'.repeat(120));
    assertSystemError(() => native.seqpacketListen(long, 1), 'ENAMETOOLONG', 'bind');
    assertSystemError(() => native.seqpacketConnect(long), 'ENAMETOOLONG', 'connect');
  });

  fdTest('connect without permission: EACCES', async () => {
    // The tmp dir is 0700: another user cannot reach the socket in it.
    const dir = path.join(tmp, 'closed');
    fs.mkdirSync(dir, { mode: 0o700 });
    const socketPath = path.join(dir, 's.sock');
    const listener = native.seqpacketListen(socketPath, 1);
    try {
      if (process.getuid() === 0) {
        // root ignores permissions: ask as nobody.
        const result = await runChildAsNobody(
          `try { NATIVE.seqpacketConnect(${JSON.stringify(socketPath)}); console.log('connected'); } catch (err) { console.log(err.code, err.syscall); }`,
        );
        assert.equal(result.stderr, '');
        assert.equal(result.stdout, 'EACCES connect\n');
      } else {
        fs.chmodSync(dir, 0);
        assertSystemError(() => native.seqpacketConnect(socketPath), 'EACCES', 'connect');
      }
    } finally {
      fs.chmodSync(dir, 0o700);
      native.close(listener);
      fs.rmSync(dir, { recursive: true });
    }
  });

  fdTest('an abstract name (leading NUL) needs no file', () => {
    const name = `\0handover-test-${process.pid}-${Date.now()}`;
    const listener = native.seqpacketListen(name, 1);
    assert.equal(native.socketInfo(listener).path, name);
    const client = native.seqpacketConnect(name);
    const server = native.accept(listener);
    assert.equal(native.peerCredentials(server).pid, process.pid);
    closeAll([client, server, listener]);
  });

  fdTest('bad paths are argument errors', () => {
    assertArgError(() => native.seqpacketListen('', 1), TypeError, 'ERR_INVALID_ARG_VALUE');
    assertArgError(() => native.seqpacketConnect('a\0b'), TypeError, 'ERR_INVALID_ARG_VALUE');
    assertArgError(() => native.seqpacketConnect(Buffer.from('/tmp/x')), TypeError, 'ERR_INVALID_ARG_TYPE');
    assertArgError(() => native.seqpacketListen(path.join(tmp, 'b.sock'), -1), RangeError, 'ERR_OUT_OF_RANGE');
    assertArgError(() => native.seqpacketListen(path.join(tmp, 'b.sock')), TypeError, 'ERR_INVALID_ARG_TYPE');
  });
});

describe('peerCredentials', () => {
  const self = () => ({ pid: process.pid, uid: process.getuid(), gid: process.getgid() });

  fdTest('both ends of a pair', () => {
    const [a, b] = native.seqpacketPair();
    assert.deepEqual(native.peerCredentials(a), self());
    assert.deepEqual(native.peerCredentials(b), self());
    closeAll([a, b]);
  });

  fdTest('both ends of an accepted connection', () => {
    const socketPath = path.join(tmp, 'creds.sock');
    const listener = native.seqpacketListen(socketPath, 1);
    const client = native.seqpacketConnect(socketPath);
    const server = native.accept(listener);
    assert.deepEqual(native.peerCredentials(client), self());
    assert.deepEqual(native.peerCredentials(server), self());
    closeAll([client, server, listener]);
    fs.unlinkSync(socketPath);
  });

  fdTest('not a socket: ENOTSOCK', () => {
    const fileFd = fs.openSync(tempFile('creds.txt', ''), 'r');
    assertSystemError(() => native.peerCredentials(fileFd), 'ENOTSOCK', 'getsockopt');
    fs.closeSync(fileFd);
  });
});

describe('socketInfo', () => {
  fdTest('a TCP server on 127.0.0.1', async () => {
    const server = net.createServer();
    await listen(server, 0, '127.0.0.1');
    assert.deepEqual(native.socketInfo(server._handle.fd), { type: 'stream', family: 'inet', listening: true, address: '127.0.0.1', port: server.address().port });
    await closeServer(server);
  });

  fdTest('a TCP server on ::1', async (t) => {
    const server = net.createServer();
    try {
      await listen(server, 0, '::1');
    } catch (err) {
      t.skip(`IPv6 unavailable: ${err.code}`);
      return;
    }
    assert.deepEqual(native.socketInfo(server._handle.fd), { type: 'stream', family: 'inet6', listening: true, address: '::1', port: server.address().port });
    await closeServer(server);
  });

  fdTest('a connected TCP client and its accepted peer', async () => {
    const server = net.createServer();
    await listen(server, 0, '127.0.0.1');
    const accepted = once(server, 'connection');
    const client = net.connect(server.address().port, '127.0.0.1');
    await once(client, 'connect');
    const [peer] = await accepted;
    assert.deepEqual(native.socketInfo(client._handle.fd), { type: 'stream', family: 'inet', listening: false, address: '127.0.0.1', port: client.localPort });
    assert.deepEqual(native.socketInfo(peer._handle.fd), { type: 'stream', family: 'inet', listening: false, address: '127.0.0.1', port: server.address().port });
    await destroySocket(client);
    await destroySocket(peer);
    await closeServer(server);
  });

  fdTest('a unix stream server', async () => {
    const socketPath = path.join(tmp, 'stream.sock');
    const server = net.createServer();
    await listen(server, socketPath);
    assert.deepEqual(native.socketInfo(server._handle.fd), { type: 'stream', family: 'unix', listening: true, path: socketPath });
    await closeServer(server);
  });

  fdTest('a UDP socket', async () => {
    const socket = dgram.createSocket('udp4');
    try {
      await new Promise((resolve, reject) => {
        socket.once('error', reject);
        socket.bind(0, '127.0.0.1', resolve);
      });
      const { port } = socket.address();
      assert.deepEqual(native.socketInfo(udpSocketFd(port)), { type: 'dgram', family: 'inet', listening: false, address: '127.0.0.1', port });
    } finally {
      // Whatever failed above, the socket must not keep this file's event loop alive.
      await new Promise((resolve) => {
        try {
          socket.close(resolve);
        } catch {
          resolve(); // never bound, or already closed
        }
      });
    }
  });

  fdTest('a regular file: ENOTSOCK; a closed fd: EBADF', () => {
    const fileFd = fs.openSync(tempFile('info.txt', ''), 'r');
    assertSystemError(() => native.socketInfo(fileFd), 'ENOTSOCK', 'getsockopt');
    fs.closeSync(fileFd);
    assertSystemError(() => native.socketInfo(fileFd), 'EBADF', 'getsockopt');
  });
});

describe('checkConnections', () => {
  fdTest('a connection, a listener, a seqpacket socket, a file and a closed fd, in one call', async () => {
    const server = net.createServer();
    await listen(server, 0, '127.0.0.1');
    const accepted = once(server, 'connection');
    const client = net.connect(server.address().port, '127.0.0.1');
    await once(client, 'connect');
    const [peer] = await accepted;
    const pair = native.seqpacketPair();
    const fileFd = fs.openSync(tempFile('check.txt', ''), 'r');
    const closedFd = native.dup(fileFd);
    native.close(closedFd);
    const checks = native.checkConnections([client._handle.fd, peer._handle.fd, server._handle.fd, pair[0], fileFd, closedFd]);
    assert.ok(checks instanceof Uint8Array);
    assert.deepEqual([...checks], [0, 0, 4, 2, 1, 1]);
    fs.closeSync(fileFd);
    closeAll(pair);
    await destroySocket(client);
    await destroySocket(peer);
    await closeServer(server);
  });
});

describe('epoll', () => {
  fdTest('parked fds are reported once readable or hung up, and no longer once deleted', (t) => {
    if (process.platform !== 'linux') {
      t.skip('epoll is Linux only');
      return;
    }
    const epollFd = native.epollCreate();
    const [a, b] = native.seqpacketPair();
    const [c, d] = native.seqpacketPair();
    native.epollAdd(epollFd, [a, c]);
    assert.deepEqual(native.epollWait(epollFd), []);
    native.sendmsg(b, Buffer.from('x'), []);
    assert.deepEqual(native.epollWait(epollFd), [a]);
    native.close(d); // hung up
    assert.deepEqual(native.epollWait(epollFd).sort(), [a, c].sort());
    native.epollDelete(epollFd, a);
    assert.deepEqual(native.epollWait(epollFd), [c]);
    assertSystemError(() => native.epollDelete(epollFd, a), 'ENOENT', 'epoll_ctl');
    assertSystemError(() => native.epollAdd(epollFd, [c]), 'EEXIST', 'epoll_ctl');
    closeAll([epollFd, a, b, c]);
  });
});

describe('dup, close, setNonBlocking', () => {
  fdTest('dup gives a close-on-exec copy of the same socket', () => {
    const [a, b] = native.seqpacketPair();
    native.setNonBlocking(a, false); // the copy shares the file status flags, not the fd flags
    const copy = native.dup(a);
    assert.notEqual(copy, a);
    assert.equal(fdFlags(copy) & O_CLOEXEC, O_CLOEXEC);
    assert.equal(fdFlags(copy) & O_NONBLOCK, 0);
    native.setNonBlocking(a, true);
    native.sendmsg(copy, Buffer.from('via copy'), []);
    assert.equal(native.recvmsg(b, Buffer.alloc(16), 0).bytes, 8);
    closeAll([copy, a, b]);
  });

  fdTest('closing twice: EBADF', () => {
    const [a, b] = native.seqpacketPair();
    native.close(a);
    const err = assertSystemError(() => native.close(a), 'EBADF', 'close');
    assert.equal(err.errno, -9);
    assert.equal(err.message, 'close: Bad file descriptor');
    native.close(b);
    assertSystemError(() => native.dup(b), 'EBADF', 'fcntl');
    assertSystemError(() => native.setNonBlocking(b, true), 'EBADF', 'fcntl');
  });

  fdTest('setNonBlocking toggles O_NONBLOCK', () => {
    const [a, b] = native.seqpacketPair();
    native.setNonBlocking(a, false);
    assert.equal(fdFlags(a) & O_NONBLOCK, 0);
    native.setNonBlocking(a, false);
    assert.equal(fdFlags(a) & O_NONBLOCK, 0);
    native.setNonBlocking(a, true);
    assert.equal(fdFlags(a) & O_NONBLOCK, O_NONBLOCK);
    closeAll([a, b]);
  });
});

describe('argument checks', () => {
  fdTest('bad fds, buffers, fd lists and counts throw Node-style argument errors', () => {
    const [a, b] = native.seqpacketPair();
    const data = Buffer.from('x');
    assertArgError(() => native.close(-1), RangeError, 'ERR_OUT_OF_RANGE');
    assertArgError(() => native.close(1.5), RangeError, 'ERR_OUT_OF_RANGE');
    assertArgError(() => native.close(2 ** 31), RangeError, 'ERR_OUT_OF_RANGE');
    assertArgError(() => native.close(NaN), RangeError, 'ERR_OUT_OF_RANGE');
    assertArgError(() => native.close('3'), TypeError, 'ERR_INVALID_ARG_TYPE');
    assertArgError(() => native.close(), TypeError, 'ERR_INVALID_ARG_TYPE');
    assertArgError(() => native.sendmsg(a, 'x', []), TypeError, 'ERR_INVALID_ARG_TYPE');
    assertArgError(() => native.sendmsg(a, data, a), TypeError, 'ERR_INVALID_ARG_TYPE');
    assertArgError(() => native.sendmsg(a, data, [-1]), RangeError, 'ERR_OUT_OF_RANGE');
    assertArgError(() => native.sendmsg(a, data, ['0']), TypeError, 'ERR_INVALID_ARG_TYPE');
    assertArgError(() => native.recvmsg(b, null, 1), TypeError, 'ERR_INVALID_ARG_TYPE');
    assertArgError(() => native.recvmsg(b, data, 254), RangeError, 'ERR_OUT_OF_RANGE');
    assertArgError(() => native.recvmsg(b, data, -1), RangeError, 'ERR_OUT_OF_RANGE');
    assertArgError(() => native.setNonBlocking(a, 1), TypeError, 'ERR_INVALID_ARG_TYPE');
    assertArgError(() => native.createPoller(a, 'callback'), TypeError, 'ERR_INVALID_ARG_TYPE');
    assertArgError(() => native.createPoller(-1, () => {}), RangeError, 'ERR_OUT_OF_RANGE');
    assert.throws(() => native.close(-1), { message: 'The value of "fd" is out of range. It must be >= 0 && <= 2147483647. Received -1' });
    assert.throws(() => native.sendmsg(a, data, [3, 'x']), { message: 'The "fds[1]" argument must be of type number. Received type string' });
    assert.equal(native.recvmsg(b, Buffer.alloc(4), 0), null, 'nothing was sent by the failed calls');
    closeAll([a, b]);
  });
});

describe('createPoller', () => {
  /** A poller on fd whose callback records events and runs onEvent, if given. */
  function watch(fd, onEvent = () => {}) {
    const events = [];
    let waiter;
    const poller = native.createPoller(fd, (status, readable, writable, disconnect) => {
      const event = { status, readable, writable, disconnect };
      events.push(event);
      onEvent(event, poller);
      if (waiter) waiter();
    });
    const next = (timeoutMs = 2000) =>
      new Promise((resolve, reject) => {
        if (events.length > 0) return resolve(events.shift());
        const timer = setTimeout(() => {
          waiter = undefined;
          reject(new Error('no poll event'));
        }, timeoutMs);
        waiter = () => {
          clearTimeout(timer);
          waiter = undefined;
          resolve(events.shift());
        };
      });
    return { poller, events, next };
  }

  fdTest('readable fires when a message arrives; stop stops; start re-arms', async () => {
    const [a, b] = native.seqpacketPair();
    const received = [];
    const buffer = Buffer.alloc(64);
    const { poller, events, next } = watch(b, (event) => {
      if (!event.readable) return;
      let message;
      while ((message = native.recvmsg(b, buffer, 0)) !== null) received.push(buffer.toString('utf8', 0, message.bytes));
    });
    poller.start(true, false);
    await sleep(20);
    assert.equal(events.length, 0, 'nothing to read yet');

    native.sendmsg(a, Buffer.from('ping'), []);
    const event = await next();
    assert.deepEqual(event, { status: 0, readable: true, writable: false, disconnect: false });
    assert.deepEqual(received, ['ping']);

    poller.stop();
    native.sendmsg(a, Buffer.from('while stopped'), []);
    await sleep(50);
    assert.equal(events.length, 0, 'no callback while stopped');

    poller.start(true, false);
    await next();
    assert.deepEqual(received, ['ping', 'while stopped']);

    poller.close();
    closeAll([a, b]);
  });

  fdTest('writable fires on a socket with room', async () => {
    const [a, b] = native.seqpacketPair();
    const { poller, next } = watch(a, (event, self) => self.stop());
    poller.start(false, true);
    assert.deepEqual(await next(), { status: 0, readable: false, writable: true, disconnect: false });
    poller.close();
    closeAll([a, b]);
  });

  fdTest('the peer hanging up reports readable and disconnect', async () => {
    const [a, b] = native.seqpacketPair();
    const { poller, next } = watch(b, (event, self) => self.stop());
    poller.start(true, false);
    native.close(a);
    const event = await next();
    assert.equal(event.status, 0);
    assert.equal(event.readable, true);
    if (process.platform === 'linux') assert.equal(event.disconnect, true);
    assert.deepEqual(native.recvmsg(b, Buffer.alloc(8), 0), { bytes: 0, fds: [] });
    poller.close();
    native.close(b);
  });

  fdTest('the callback runs with the poller as this, on a poller nobody references', async () => {
    const [a, b] = native.seqpacketPair();
    const fired = new Promise((resolve) => {
      native.createPoller(b, function () {
        this.close();
        resolve(this);
      }).start(true, false);
    });
    await sleep(10);
    if (global.gc) global.gc();
    native.sendmsg(a, Buffer.from('x'), []);
    const self = await fired;
    assert.equal(typeof self.close, 'function');
    closeAll([a, b]);
  });

  fdTest('close is idempotent; stop after close is a no-op; start after close throws', () => {
    const [a, b] = native.seqpacketPair();
    const poller = native.createPoller(a, () => {});
    poller.start(true, true);
    poller.close();
    poller.close();
    poller.stop();
    assert.throws(() => poller.start(true, false), { code: 'ERR_INVALID_STATE' });
    assertArgError(() => native.createPoller(b, () => {}).start('yes', false), TypeError, 'ERR_INVALID_ARG_TYPE');
    closeAll([a, b]);
  });

  fdTest('the poller never closes the fd', async () => {
    const [a, b] = native.seqpacketPair();
    const poller = native.createPoller(a, () => {});
    poller.start(true, false);
    poller.close();
    await sleep(10);
    assert.equal(native.sendmsg(a, Buffer.from('alive'), []), 5);
    closeAll([a, b]);
  });

  fdTest('start on an fd closed behind the poller throws EBADF (libuv would abort)', () => {
    const [a, b] = native.seqpacketPair();
    const poller = native.createPoller(a, () => {});
    native.close(a);
    assertSystemError(() => poller.start(true, false), 'EBADF', 'fstat');
    poller.close();
    native.close(b);
  });

  for (const action of ['close', 'stop', 'start']) {
    fdTest(`${action} on a stopped poller whose fd number was reused leaves the new owner alone`, async (t) => {
      const server = net.createServer();
      await listen(server, 0, '127.0.0.1');
      const accepted = once(server, 'connection');
      const [a, b] = native.seqpacketPair();
      const poller = native.createPoller(b, () => {});
      poller.start(true, false);
      poller.stop();
      // The wrong order, on purpose: the fd goes before its poller. (Closed while armed, the
      // number stays claimed in libuv's loop and whoever reuses it is lost: nothing can help.)
      native.close(b);
      // Fill any lower hole so that the client socket below gets b's number.
      const fillers = [];
      for (let fd = fs.openSync('/dev/null', 'r'); ; fd = fs.openSync('/dev/null', 'r')) {
        if (fd === b) {
          fs.closeSync(fd);
          break;
        }
        fillers.push(fd);
        if (fd > b) break;
      }
      const client = net.connect(server.address().port, '127.0.0.1');
      await once(client, 'connect');
      const [peer] = await accepted;
      try {
        if (client._handle.fd !== b) {
          t.skip('the fd number was not reused');
          return;
        }
        await sleep(20); // let libuv register the client's fd with epoll first
        // Stopping or closing a uv_poll_t deletes its fd number from epoll, and starting one re-adds
        // it: either would disturb the TCP client, which libuv now watches under that number.
        if (action === 'start') assertSystemError(() => poller.start(true, false), 'EBADF', 'uv_poll_start');
        else poller[action]();
        const received = once(client, 'data');
        peer.write('still heard');
        const data = await Promise.race([received.then(([chunk]) => String(chunk)), sleep(2000).then(() => 'nothing')]);
        assert.equal(data, 'still heard');
      } finally {
        poller.close();
        for (const fd of fillers) fs.closeSync(fd);
        await destroySocket(client);
        await destroySocket(peer);
        await closeServer(server);
        native.close(a);
      }
    });
  }

  fdTest('a regular file cannot be polled: EPERM from uv_poll_init', () => {
    const fileFd = fs.openSync(tempFile('poll.txt', ''), 'r');
    assertSystemError(() => native.createPoller(fileFd, () => {}), 'EPERM', 'uv_poll_init');
    fs.closeSync(fileFd);
  });
});

describe('poller life cycle in child processes', () => {
  async function assertCleanExit(script, nodeArgs, expectedStdout) {
    const result = await runChild(script, nodeArgs);
    assert.equal(result.stderr, '');
    assert.equal(result.signal, null);
    assert.equal(result.code, 0);
    assert.equal(result.stdout, expectedStdout);
  }

  test('process.exit with a started poller', async () => {
    await assertCleanExit(
      `const [a, b] = NATIVE.seqpacketPair();
       NATIVE.createPoller(b, () => {}).start(true, false);
       setTimeout(() => { console.log('exiting'); process.exit(0); }, 20);`,
      [],
      'exiting\n',
    );
  });

  test('a started poller keeps the loop alive until close; then the process ends by itself', async () => {
    await assertCleanExit(
      `const [a, b] = NATIVE.seqpacketPair();
       const poller = NATIVE.createPoller(b, () => {});
       poller.start(true, false);
       setTimeout(() => { poller.close(); poller.close(); NATIVE.close(a); NATIVE.close(b); console.log('closed'); }, 50);`,
      [],
      'closed\n',
    );
  });

  test('pollers stopped or never started, and never closed, are cleaned up at exit', async () => {
    await assertCleanExit(
      `const [a, b] = NATIVE.seqpacketPair();
       const stopped = NATIVE.createPoller(a, () => {});
       stopped.start(true, true);
       stopped.stop();
       globalThis.idle = NATIVE.createPoller(b, () => {});
       console.log('end');`,
      [],
      'end\n',
    );
  });

  test('dropped pollers are collected, armed ones are not, and a reused fd number is left alone', async () => {
    await assertCleanExit(
      `let finalized = 0;
       const registry = new FinalizationRegistry(() => finalized++);
       for (let i = 0; i < 20; i++) {
         const [a, b] = NATIVE.seqpacketPair();
         const poller = NATIVE.createPoller(b, () => {});
         poller.start(true, false);
         poller.stop();
         registry.register(poller, i);
       }
       // A dropped poller whose fd is closed first, and the number reused by an armed poller that
       // nothing references: collecting the first must not deafen the second.
       const [c, d] = NATIVE.seqpacketPair();
       (() => {
         const doomed = NATIVE.createPoller(d, () => {});
         doomed.start(true, false);
         doomed.stop();
         registry.register(doomed, 'doomed');
       })();
       NATIVE.close(c);
       NATIVE.close(d);
       const [e, f] = NATIVE.seqpacketPair();
       if (e !== d && f !== d) console.log('not reused');
       const [sender, watched] = e === d ? [f, e] : [e, f];
       NATIVE.createPoller(watched, function () {
         NATIVE.recvmsg(watched, Buffer.alloc(8), 0);
         console.log('fired');
         this.close();
         clearTimeout(watchdog);
       }).start(true, false);
       const watchdog = setTimeout(() => { console.log('deaf'); process.exit(1); }, 3000).unref();
       (async () => {
         for (let i = 0; i < 20 && finalized < 21; i++) {
           global.gc();
           await new Promise((resolve) => setTimeout(resolve, 10));
         }
         console.log(finalized === 21 ? 'collected' : 'kept ' + (21 - finalized));
         await new Promise((resolve) => setTimeout(resolve, 20)); // the addon's finalizers run after
         NATIVE.sendmsg(sender, Buffer.from('x'), []);
       })();`,
      ['--expose-gc'],
      'collected\nfired\n',
    );
  });

  test('an exception thrown by the callback reaches uncaughtException', async () => {
    await assertCleanExit(
      `const [a, b] = NATIVE.seqpacketPair();
       const poller = NATIVE.createPoller(a, () => { throw new Error('boom'); });
       process.on('uncaughtException', (err) => {
         console.log('caught ' + err.message);
         poller.close();
       });
       poller.start(false, true);`,
      [],
      'caught boom\n',
    );
  });

  test('workers that exit, end, or are terminated with pollers open', async () => {
    await assertCleanExit(
      `const { Worker } = require('node:worker_threads');
       const prelude = 'const NATIVE = require(' + JSON.stringify(${JSON.stringify(path.join(root, 'node_modules', 'node-gyp-build'))}) + ')(' + JSON.stringify(${JSON.stringify(root)}) + ');'
         + 'const [a, b] = NATIVE.seqpacketPair(); const poller = NATIVE.createPoller(b, () => {}); poller.start(true, false);';
       const endings = {
         exit: 'poller.start(true, true); process.exit(0);',
         end: 'poller.stop(); NATIVE.createPoller(a, () => {});',
         // Armed for writable, its callback runs on every loop iteration until the worker dies.
         terminate: 'poller.start(true, true); require("node:worker_threads").parentPort.postMessage("ready");',
       };
       (async () => {
         for (const [name, ending] of Object.entries(endings)) for (let round = 0; round < 5; round++) {
           const worker = new Worker(prelude + ending, { eval: true });
           if (name === 'terminate') {
             await new Promise((resolve) => worker.once('message', resolve));
             await worker.terminate();
           } else {
             await new Promise((resolve, reject) => { worker.once('exit', resolve); worker.once('error', reject); });
           }
           if (round === 4) console.log(name);
         }
       })();`,
      [],
      'exit\nend\nterminate\n',
    );
  });
});
