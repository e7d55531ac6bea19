// The one interface between the upgrader and a protocol: what happens to a server's connections
// when its process retires, and to the connections its successor adopts. Adapters register
// themselves; the upgrader never imports a protocol module.
import type * as net from 'node:net';
import type { TransferOptions } from '../connections';

/** Moves one socket to the successor; rejects when it stays here (refused, or the successor is gone). */
export type MoveConnection = (socket: net.Socket, options?: TransferOptions) => Promise<void>;

/** ServerAdapter follows one server's connections for the upgrader. */
export interface ServerAdapter {
  /**
   * Retirement began: move every connection that can move, now or at its next safe point, with
   * `move`; drain the others (end keep-alive, GOAWAY). `move` is undefined when nothing can move
   * (no successor link, or a runtime without the internals moves need): drain everything.
   */
  retire(move: MoveConnection | undefined): void;
  /** Rollback: the successor is gone; serve every connection as before. */
  resume(): void;
  /** The successor side: a connection moved here was handed to the server (bytes unshifted, reading). */
  afterAdopt?(socket: net.Socket): void;
}

/** AdapterFactory recognises the servers an adapter handles and creates one adapter per server. */
export interface AdapterFactory {
  readonly name: string;
  matches(server: net.Server): boolean;
  create(server: net.Server): ServerAdapter;
}

const factories: AdapterFactory[] = [];

/** registerAdapter adds a factory; the last registered that matches a server wins (a more specific one registers later). */
export function registerAdapter(factory: AdapterFactory): void {
  if (!factories.some((known) => known.name === factory.name)) factories.push(factory);
}

/** adapterFor creates the adapter of `server`, or undefined for a server no adapter handles (connections stay the application's). */
export function adapterFor(server: net.Server): ServerAdapter | undefined {
  for (let i = factories.length - 1; i >= 0; i--) {
    const factory = factories[i]!;
    if (factory.matches(server)) return factory.create(server);
  }
  return undefined;
}

let controlService: () => void = () => undefined;

/** setControlService: how adapters let the control sockets be serviced between units of request work (set by the upgrader). */
export function setControlService(service: () => void): void {
  controlService = service;
}

let serviceScheduled = false;

/**
 * serviceControl: adapters call it between units of request work, so that a saturated server can
 * still be upgraded. The control sockets are serviced right after the current unit (on the next
 * tick), never inside it: a READY handled in the middle of parsing a request would change the
 * adapter under its own feet.
 */
export function serviceControl(): void {
  if (serviceScheduled) return;
  serviceScheduled = true;
  process.nextTick(() => {
    serviceScheduled = false;
    controlService();
  });
}
