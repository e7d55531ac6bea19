// Moving live connections between generations: the predecessor's mover, the successor's adopter,
// and the shapes the application sees. One concern per file; this one only re-exports.
export { ConnectionMover, checkInternals } from './mover';
export type { MoverHooks, MoverOptions } from './mover';
export { ConnectionAdopter, readyCredit, startParkedConnections } from './adopter';
export type { AdopterHooks } from './adopter';
export type { TransferOptions, AdoptedConnection, AdoptHandler } from './types';
