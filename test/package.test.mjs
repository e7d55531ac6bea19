// The package as users get it: `npm pack` of a copy of the checkout (prepack builds the prebuilt
// binary, prepare the TypeScript) ships only what it should; the tarball installs into an empty
// project with no compiler on the PATH, offline (its dependencies packed from this checkout's
// node_modules), loads the prebuilt binary, and the example HTTP server runs and upgrades from it.
// And package.json and package-lock.json agree: `npm install` on a clone leaves the tree clean.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { Sandbox, get, root } from './helpers.mjs';
import { retirement, upgrade } from './rolling.mjs';

const run = promisify(execFile);
const manifest = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const sandbox = new Sandbox();
after(() => sandbox.cleanup());

/** npm, run by the Node under test (the npm on PATH is a script; its shebang would pick any node). */
function npmCli() {
  const onPath = process.env.PATH.split(path.delimiter).map((dir) => path.join(dir, 'npm')).find((file) => fs.existsSync(file));
  assert.ok(onPath, 'npm on PATH');
  const real = fs.realpathSync(onPath);
  assert.match(real, /npm-cli\.js$/);
  return real;
}
const npm = (args, options) => run(process.execPath, [npmCli(), ...args], { maxBuffer: 64 * 1024 * 1024, ...options });

let tarball;
let files;

before(async () => {
  // Pack a copy, so that the checkout's own build/, prebuilds/ and dist/ stay as they are.
  const copy = sandbox.dir('handover-pack-');
  for (const entry of ['package.json', 'binding.gyp', 'tsconfig.json', 'README.md', 'LICENSE', 'src', 'native', 'docs']) {
    fs.cpSync(path.join(root, entry), path.join(copy, entry), { recursive: true });
  }
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(copy, 'node_modules'));
  const { stdout } = await npm(['pack', '--json', '--pack-destination', copy], { cwd: copy });
  const [packed] = JSON.parse(stdout.slice(stdout.indexOf('[')));
  tarball = path.join(copy, packed.filename);
  files = packed.files.map((file) => file.path).sort();
});

test('npm pack ships dist/, the native sources, the linux-x64 prebuilt binary, README, LICENSE and docs: nothing else', () => {
  const allowed = [/^dist\/[\w/-]+\.(js|d\.ts|js\.map)$/, /^native\/\w+\.(cc|h)$/, /^prebuilds\/linux-x64\/handover\.glibc\.node$/, /^docs\/[\w-]+\.(md|svg)$/, /^(binding\.gyp|package\.json|README\.md|LICENSE)$/];
  assert.deepEqual(files.filter((file) => !allowed.some((pattern) => pattern.test(file))), []);
  for (const needed of ['dist/index.js', 'dist/index.d.ts', 'dist/testing.js', 'native/fdpass.cc', 'native/fdpass.h', 'binding.gyp', 'prebuilds/linux-x64/handover.glibc.node', 'README.md', 'LICENSE', 'docs/api.md']) {
    assert.ok(files.includes(needed), `${needed} in the package`);
  }
  // Every source file has its compiled output; no source map points at a file left out.
  for (const source of fs.readdirSync(path.join(root, 'src'), { recursive: true }).filter((file) => file.endsWith('.ts'))) {
    assert.ok(files.includes(`dist/${source.replace(/\.ts$/, '.js')}`), `dist/ for src/${source}`);
  }
  assert.equal(files.filter((file) => file.endsWith('.d.ts.map')).length, 0);
  assert.equal(manifest.license, 'MIT');
  assert.match(fs.readFileSync(path.join(root, 'LICENSE'), 'utf8'), /^MIT License/);
});

test('the tarball installs offline with no compiler on the PATH, loads the prebuilt binary, and serves through an upgrade', { timeout: 60_000 }, async () => {
  const project = sandbox.dir('handover-install-');
  // The dependencies, packed from this checkout's node_modules (the whole production closure).
  const deps = path.join(project, 'deps');
  fs.mkdirSync(deps);
  const closure = new Set();
  const visit = (name) => {
    if (closure.has(name)) return;
    closure.add(name);
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'node_modules', name, 'package.json'), 'utf8'));
    for (const dep of Object.keys(pkg.dependencies ?? {})) visit(dep);
  };
  for (const dep of Object.keys(manifest.dependencies)) visit(dep);
  for (const name of closure) await npm(['pack', '--ignore-scripts', '--pack-destination', deps, path.join(root, 'node_modules', name)], { cwd: deps });

  // A PATH with node and sh (npm runs scripts with it) and nothing else: no g++, cc, make or
  // python to build the addon with.
  const bin = path.join(project, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync('/bin/sh', path.join(bin, 'sh'));
  const env = { ...process.env, PATH: bin, npm_config_cache: path.join(project, 'npm-cache') };
  for (const tool of ['g++', 'c++', 'cc', 'gcc', 'make', 'python3']) {
    await assert.rejects(run('/bin/sh', ['-c', `command -v ${tool}`], { env }), `${tool} is not on the restricted PATH`);
  }
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'empty-project', version: '1.0.0', private: true, type: 'module' }));
  const tarballs = [tarball, ...fs.readdirSync(deps).map((file) => path.join(deps, file))];
  await npm(['install', '--offline', '--no-audit', '--no-fund', ...tarballs], { cwd: project, env });

  const installed = path.join(project, 'node_modules', 'handover');
  assert.equal(fs.existsSync(path.join(installed, 'build')), false, 'nothing was compiled');
  const { stdout: loaded } = await run(process.execPath, ['-e', `console.log(require('node-gyp-build').path(${JSON.stringify(installed)}))`], { cwd: project });
  assert.equal(loaded.trim(), path.join(installed, 'prebuilds', 'linux-x64', 'handover.glibc.node'));

  // The example HTTP server (with the scaffolding it shares with the other examples), run from the
  // project: it imports 'handover' from the installed package.
  fs.copyFileSync(path.join(root, 'examples', 'http-server.mjs'), path.join(project, 'http-server.mjs'));
  fs.cpSync(path.join(root, 'examples', 'lib'), path.join(project, 'lib'), { recursive: true });
  const group = sandbox.group();
  group.start([path.join(project, 'http-server.mjs'), '--port', '0', '--host', '127.0.0.1', '--dir', path.join(project, 'ctl')], { cwd: project });
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  assert.equal((await get(Number(port))).headers['x-pid'], firstPid);
  const next = await upgrade(group, Number(firstPid));
  assert.deepEqual(await retirement(group, Number(firstPid)), { closed: 0, moved: 0, left: 0 });
  assert.equal((await get(Number(port))).headers['x-pid'], String(next));
});

test('package.json and package-lock.json agree: npm install changes nothing in the lockfile', { timeout: 60_000 }, async () => {
  const clone = sandbox.dir('handover-lock-');
  for (const file of ['package.json', 'package-lock.json']) fs.copyFileSync(path.join(root, file), path.join(clone, file));
  // --package-lock-only --offline: the lockfile is reconciled with package.json and nothing is
  // fetched; a lockfile that disagrees is rewritten, or needs the registry and fails here.
  await npm(['install', '--package-lock-only', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: clone, env: { ...process.env, npm_config_cache: path.join(clone, 'npm-cache') } });
  assert.equal(fs.readFileSync(path.join(clone, 'package-lock.json'), 'utf8'), fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8'));
});

test('os and engines claim what the CI tests: Linux, Node 22, 24 and 26', () => {
  assert.deepEqual(manifest.os, ['linux']);
  assert.equal(manifest.engines.node, '^22 || ^24 || ^26');
  const ciLines = /node_lines=\(([\d ]+)\)/.exec(fs.readFileSync(path.join(root, '.ci', 'run'), 'utf8'))[1].split(' ').map(Number);
  assert.deepEqual(ciLines, [22, 24, 26]);
});
