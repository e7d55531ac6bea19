#!/usr/bin/env node
// The `handover` command line: status and upgrade of a running generation over its control
// socket, and `run`, the supervisor that keeps a container's main process while generations
// hand over under it. Usage: handover --help.
import { parseArgs } from 'node:util';
import * as path from 'node:path';
import { requestStatus, requestUpgrade, STATUS_TIMEOUT, UPGRADE_TIMEOUT, type UpgradeOutcome, type UpgradeProgress } from '../control-client';
import { HandoverError, isHandoverError, type HandoverErrorCode } from '../errors';
import type { GenerationStatus } from '../protocol';
import { run } from './run';

const USAGE = `usage:
  handover status  --dir D [--json] [--timeout MS]
  handover upgrade --dir D [--dir D2 ...] [--json] [--timeout MS]
  handover run [--dir D [--stay-after-handover]] -- <command> [args...]

status   what the generation serving in D is doing: pid, generation, uptime, listeners, connections,
         the last upgrade and its result.
upgrade  asks the generation serving in D to upgrade, shows each step, and exits 0 once its
         successor serves (non-zero, with the error code, when the upgrade failed: the old
         generation then serves on). Several --dir: one after the other, stopping at the first failure.
run      starts <command> and stays the main process while its generations hand over: reaps every
         child, forwards SIGTERM/SIGINT to the generation serving now, turns SIGHUP into an upgrade
         (over D's control socket with --dir, else SIGHUP to the generation), and exits with the
         status of the last generation. --stay-after-handover: when a process outside this
         container took over D, stay idle until SIGTERM instead of exiting (a pod's sidecar).
         Under systemd (NOTIFY_SOCKET) it is the unit's main process: --dir is required, it says
         READY=1 / RELOADING=1 / STOPPING=1 itself, and passes LISTEN_FDS to its first generation.

exit status: 0 done; 1 the upgrade failed or was refused (the generation serves on); 2 usage;
3 no generation runs in D; 4 --timeout passed (an upgrade may still finish); 5 other errors.`;

/** Exit statuses, stable for scripts. */
export const EXIT = { ok: 0, failed: 1, usage: 2, notRunning: 3, timeout: 4, error: 5 } as const;

function exitFor(code: HandoverErrorCode | undefined): number {
  if (code === 'ERR_HANDOVER_NOT_RUNNING') return EXIT.notRunning;
  if (code === 'ERR_HANDOVER_TIMEOUT') return EXIT.timeout;
  if (code === 'ERR_HANDOVER_INVALID_ARG') return EXIT.usage;
  if (code === 'ERR_HANDOVER_PROTOCOL' || code === 'ERR_HANDOVER_CHANNEL_CLOSED' || code === undefined) return EXIT.error;
  return EXIT.failed;
}

class UsageError extends Error {}

function duration(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  const parts: string[] = [];
  const units: [number, string][] = [[86400, 'd'], [3600, 'h'], [60, 'm']];
  let rest = seconds;
  for (const [size, unit] of units) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
  }
  parts.push(`${rest}s`);
  return parts.join(' ');
}

/** formatStatus: the status as an operator reads it, one fact per line. */
export function formatStatus(dir: string, status: GenerationStatus, local: boolean): string {
  const lines = [
    `dir          ${dir}`,
    `pid          ${status.pid}${local ? '' : ' (in another PID namespace: another container)'}`,
    `generation   ${status.generation}`,
    `state        ${status.state}`,
    `uptime       ${duration(status.uptime)} (since ${new Date(status.startedAt).toISOString()})`,
    `listeners    ${status.listeners.length === 0 ? 'none' : status.listeners.map((l) => (l.address === undefined ? l.key : `${l.address} (${l.key})`)).join(', ')}`,
    `connections  ${status.connections.open} open; since start ${status.connections.closed} closed, ${status.connections.moved} moved to a successor`,
  ];
  if (status.predecessorPid !== undefined) lines.push(`predecessor  pid ${status.predecessorPid}, still retiring`);
  const last = status.lastUpgrade;
  if (!last) lines.push('last upgrade none (started fresh)');
  else {
    const when = new Date(last.at).toISOString();
    const who = [last.predecessorPid === undefined ? '' : `from pid ${last.predecessorPid}`, last.successorPid === undefined ? '' : `to pid ${last.successorPid}`].filter(Boolean).join(' ');
    lines.push(`last upgrade ${last.result} at ${when}${who ? ` (${who})` : ''}${last.code ? `: ${last.code}` : ''}${last.reason ? ` ${last.reason}` : ''}`);
  }
  return lines.join('\n');
}

function describeProgress(progress: UpgradeProgress): string {
  switch (progress.step) {
    case 'spawned':
      return `spawned successor pid ${progress.pid}`;
    case 'connected':
      return `successor pid ${progress.pid} connected; listeners handed over`;
    case 'ready':
      return `successor pid ${progress.pid} is ready; the old generation stopped accepting`;
    case 'moving':
      return `moving ${progress.connections} connections`;
    case 'retired':
      return 'old generation retired';
  }
}

function errorRecord(err: unknown): { code: HandoverErrorCode | undefined; message: string } {
  return { code: isHandoverError(err) ? err.code : undefined, message: (err as Error).message };
}

async function statusCommand(dirs: string[], json: boolean, timeout: number): Promise<number> {
  if (dirs.length !== 1) throw new UsageError('status needs exactly one --dir');
  const dir = path.resolve(dirs[0]!);
  try {
    const { status, peer } = await requestStatus(dir, { timeout });
    // The kernel translates the peer's pid into this PID namespace: 0 when it runs in another one.
    const local = peer.pid > 0;
    process.stdout.write(json ? `${JSON.stringify({ ok: true, dir, local, status })}\n` : `${formatStatus(dir, status, local)}\n`);
    return EXIT.ok;
  } catch (err) {
    const record = errorRecord(err);
    if (json) process.stdout.write(`${JSON.stringify({ ok: false, dir, ...record })}\n`);
    else process.stderr.write(`handover: ${record.code ?? 'error'}: ${record.message}\n`);
    return exitFor(record.code);
  }
}

async function upgradeCommand(dirs: string[], json: boolean, timeout: number): Promise<number> {
  if (dirs.length === 0) throw new UsageError('upgrade needs --dir');
  const results: Record<string, unknown>[] = [];
  let status: number = EXIT.ok;
  for (const given of dirs) {
    const dir = path.resolve(given);
    const started = Date.now();
    const steps: (UpgradeProgress & { at: number })[] = [];
    if (!json) process.stdout.write(`upgrading ${dir}\n`);
    try {
      const outcome: UpgradeOutcome = await requestUpgrade(dir, {
        timeout,
        onProgress: (progress) => {
          steps.push({ ...progress, at: Date.now() - started });
          if (!json) process.stdout.write(`  ${describeProgress(progress)}\n`);
        },
      });
      const elapsed = Date.now() - started;
      results.push({ dir, ok: true, from: outcome.from, pid: outcome.pid, generation: outcome.generation, report: outcome.report, steps, ms: elapsed });
      if (!json) {
        const report = outcome.report ? `; connections: ${outcome.report.moved} moved, ${outcome.report.closed} closed, ${outcome.report.remaining} cut${outcome.report.timedOut ? ' (gracefulTimeout)' : ''}` : '';
        process.stdout.write(`upgraded ${dir}: generation ${outcome.from.generation} (pid ${outcome.from.pid}) -> generation ${outcome.generation}${outcome.pid ? ` (pid ${outcome.pid})` : ''} in ${(elapsed / 1000).toFixed(1)} s${report}\n`);
      }
    } catch (err) {
      const record = errorRecord(err);
      results.push({ dir, ok: false, ...record, steps, ms: Date.now() - started });
      if (!json) process.stderr.write(`handover: upgrade of ${dir} failed: ${record.code ?? 'error'}: ${record.message}\n`);
      status = exitFor(record.code);
      break;
    }
  }
  if (json) process.stdout.write(`${JSON.stringify({ ok: status === EXIT.ok, results })}\n`);
  return status;
}

/** main runs one command line; resolves with the exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  const split = argv.indexOf('--');
  const own = split === -1 ? [...argv] : argv.slice(0, split);
  const command = split === -1 ? [] : argv.slice(split + 1);
  let values;
  let positionals;
  try {
    ({ values, positionals } = parseArgs({
      args: own,
      allowPositionals: true,
      options: {
        dir: { type: 'string', multiple: true },
        json: { type: 'boolean' },
        timeout: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
        'stay-after-handover': { type: 'boolean' },
      },
    }));
  } catch (err) {
    process.stderr.write(`handover: ${(err as Error).message}\n${USAGE}\n`);
    return EXIT.usage;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return EXIT.ok;
  }
  if (values.version) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    process.stdout.write(`${(require('../../package.json') as { version: string }).version}\n`);
    return EXIT.ok;
  }
  const [name, ...extra] = positionals;
  const dirs = values.dir ?? [];
  const json = values.json === true;
  try {
    if (extra.length > 0) throw new UsageError(`unexpected ${extra.join(' ')}`);
    let timeout: number | undefined;
    if (values.timeout !== undefined) {
      timeout = Number(values.timeout);
      if (!Number.isFinite(timeout) || timeout <= 0) throw new UsageError(`--timeout must be a positive number of milliseconds, got ${values.timeout}`);
    }
    switch (name) {
      case 'status':
        return await statusCommand(dirs, json, timeout ?? STATUS_TIMEOUT);
      case 'upgrade':
        return await upgradeCommand(dirs, json, timeout ?? UPGRADE_TIMEOUT);
      case 'run':
        if (command.length === 0) throw new UsageError('run needs a command after --');
        if (dirs.length > 1) throw new UsageError('run takes at most one --dir');
        if (values['stay-after-handover'] && dirs.length === 0) throw new UsageError('--stay-after-handover needs --dir');
        return await run(command, { dir: dirs[0] === undefined ? undefined : path.resolve(dirs[0]), stayAfterHandover: values['stay-after-handover'] === true, log: (line) => process.stderr.write(`[handover run ${process.pid}] ${line}\n`) });
      case undefined:
        throw new UsageError('a command is needed');
      default:
        throw new UsageError(`unknown command ${name}`);
    }
  } catch (err) {
    if (err instanceof UsageError || isHandoverError(err, 'ERR_HANDOVER_INVALID_ARG')) {
      process.stderr.write(`handover: ${err.message}\n${USAGE}\n`);
      return EXIT.usage;
    }
    throw err;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (status) => process.exit(status),
    (err: unknown) => {
      process.stderr.write(`handover: ${err instanceof HandoverError ? `${err.code}: ` : ''}${(err as Error).stack ?? String(err)}\n`);
      process.exit(EXIT.error);
    },
  );
}
