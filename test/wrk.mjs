// Drive wrk (a real client that counts every failed request) and parse its report. The tests and
// the benchmarks (bench/) both use this module.
import { spawn } from 'node:child_process';

/**
 * runWrk runs wrk for `duration` seconds (or until `stop()`: SIGINT makes wrk stop and report) and
 * resolves with its counts. `scriptArgs` go to the Lua `script` (after `--`). With `nice`, wrk runs
 * at that niceness: a load generator on the same cores as the servers must not starve a process
 * that is starting (a successor, a new worker), as clients on other machines would not.
 */
export function runWrk({ url, connections = 16, threads = 2, duration = 10, headers = [], script, scriptArgs = [], nice }) {
  const args = [`-t${threads}`, `-c${connections}`, `-d${duration}s`, '--latency'];
  for (const header of headers) args.push('-H', header);
  if (script) args.push('-s', script);
  args.push(url);
  if (scriptArgs.length > 0) args.push('--', ...scriptArgs);
  const command = nice === undefined ? ['wrk', ...args] : ['nice', '-n', String(nice), 'wrk', ...args]; // nice execs wrk: same pid
  const child = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (chunk) => (out += chunk));
  child.stderr.on('data', (chunk) => (out += chunk));
  const result = new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`wrk exited with ${code}:\n${out}`));
      resolve(parseWrk(out));
    });
  });
  const stop = () => child.exitCode === null && child.signalCode === null && child.kill('SIGINT');
  return { child, result, stop };
}

export function parseWrk(out) {
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN);
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  return {
    requests,
    connect: Number(errors?.[1] ?? 0),
    read: Number(errors?.[2] ?? 0),
    write: Number(errors?.[3] ?? 0),
    timeout: Number(errors?.[4] ?? 0),
    non2xx,
    raw: out,
  };
}
