// Deploys that re-point a `current` symlink: the successor starts from the logical directory
// ($PWD), so after `current -> releases/v2` and SIGHUP, v2 answers (not v1 again from a new pid).
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { logicalDirectory, relocateScript } from '../dist/start-context.js';
import { Sandbox, root, get } from './helpers.mjs';

const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

/** A release: a copy of examples/http-server.mjs (and examples/lib/) whose answers start with its version. */
function makeRelease(app, version) {
  const dir = path.join(app, 'releases', version);
  fs.mkdirSync(dir, { recursive: true });
  const source = fs.readFileSync(path.join(root, 'examples', 'http-server.mjs'), 'utf8');
  const patched = source.replace('res.end(`hello from ${process.pid}\\n`)', `res.end(\`${version} hello from \${process.pid}\\n\`)`);
  assert.notEqual(patched, source, 'the example still answers "hello from <pid>"');
  fs.writeFileSync(path.join(dir, 'server.mjs'), patched);
  fs.cpSync(path.join(root, 'examples', 'lib'), path.join(dir, 'lib'), { recursive: true }); // what every example imports
  return dir;
}

/** repoint swaps `link` to `target` atomically (a new link renamed over the old), as deploy tools do. */
function repoint(link, target) {
  const next = `${link}.next`;
  fs.symlinkSync(target, next);
  fs.renameSync(next, link);
}

test('after current -> releases/v2 and SIGHUP, v2 answers from the successor', async () => {
  const app = sandbox.dir('handover-app-');
  makeRelease(app, 'v1');
  makeRelease(app, 'v2');
  fs.mkdirSync(path.join(app, 'node_modules'));
  fs.symlinkSync(root, path.join(app, 'node_modules', 'handover'));
  const current = path.join(app, 'current');
  fs.symlinkSync(path.join('releases', 'v1'), current);
  const dir = path.join(sandbox.dir(), 'ctl');

  const group = sandbox.group();
  // What `cd current && node server.mjs ...` does: the kernel's cwd is releases/v1, $PWD says current.
  group.start(['server.mjs', '--port', '0', '--host', '127.0.0.1', '--dir', dir], { cwd: current, env: { PWD: current } });
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/, { since: 0 });
  assert.equal((await get(Number(port))).body, `v1 hello from ${firstPid}\n`);

  repoint(current, path.join('releases', 'v2'));
  const since = group.lines.length;
  process.kill(Number(firstPid), 'SIGHUP');
  const [, secondPid] = await group.waitForLine(/^ready pid=(\d+)/, { since });
  assert.notEqual(secondPid, firstPid);
  assert.equal((await get(Number(port))).body, `v2 hello from ${secondPid}\n`);
});

test('logicalDirectory takes $PWD only when it names the working directory', () => {
  const base = fs.realpathSync(sandbox.dir());
  const real = path.join(base, 'real');
  const other = path.join(base, 'other');
  fs.mkdirSync(real);
  fs.mkdirSync(other);
  fs.symlinkSync(real, path.join(base, 'link'));
  assert.equal(logicalDirectory(path.join(base, 'link'), real), path.join(base, 'link'));
  assert.equal(logicalDirectory(`${path.join(base, 'link')}/`, real), `${path.join(base, 'link')}/`);
  assert.equal(logicalDirectory(other, real), real, 'another directory');
  assert.equal(logicalDirectory('link', real), real, 'a relative $PWD');
  assert.equal(logicalDirectory(path.join(base, 'gone'), real), real, 'a $PWD that no longer exists');
  assert.equal(logicalDirectory(undefined, real), real);
});

test('relocateScript re-roots only a script under the physical directory', () => {
  assert.equal(relocateScript('/srv/app/releases/v1/server.mjs', '/srv/app/releases/v1', '/srv/app/current'), '/srv/app/current/server.mjs');
  assert.equal(relocateScript('/srv/app/releases/v1/lib/main.js', '/srv/app/releases/v1', '/srv/app/current'), '/srv/app/current/lib/main.js');
  assert.equal(relocateScript('/opt/other/server.mjs', '/srv/app/releases/v1', '/srv/app/current'), '/opt/other/server.mjs');
  assert.equal(relocateScript('/srv/app/releases/v10/server.mjs', '/srv/app/releases/v1', '/srv/app/current'), '/srv/app/releases/v10/server.mjs');
  assert.equal(relocateScript('server.mjs', '/srv/app/releases/v1', '/srv/app/current'), 'server.mjs');
  assert.equal(relocateScript('/srv/app/releases/v1/server.mjs', '/srv/app/releases/v1', '/srv/app/releases/v1'), '/srv/app/releases/v1/server.mjs');
});
