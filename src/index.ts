// The public API of handover.
export { createUpgrader, Upgrader } from './upgrader';
export type { UpgraderOptions, UpgraderEvents, ListenOptions } from './options';
export type { UpgraderState } from './lifecycle';
export type { SuccessorCommand } from './spawner';
export type { ConnectionsReport } from './connection-tracker';
export { registerAdapter } from './adapters/adapter';
export type { ServerAdapter, AdapterFactory, MoveConnection } from './adapters/adapter';
export type {
  ProtocolAdapter,
  ProtocolPredecessor,
  ProtocolSuccessor,
  MoveAnswer,
  MoveNow,
  MoveLater,
  MoveNever,
  AdoptedProtocolConnection,
  JsonValue,
} from './adapters/contract';
// The built-in adapters register themselves.
import './adapters/http';
export type { TransferOptions, AdoptHandler, AdoptedConnection } from './connections';
export type { ListenTarget, InheritedListener } from './listeners';
export { listenerKey } from './listeners';
export { HandoverError, isHandoverError } from './errors';
export type { HandoverErrorCode } from './errors';
export { FdChannel, DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_FDS_PER_FRAME } from './channel';
export { ChannelListener, connectChannel, channelPair } from './channel-endpoints';
export type { Frame, FdChannelOptions, SendOptions } from './channel';
export type { PeerCredentials, SocketInfo, SocketType, SocketFamily } from './native';
export { requestStatus, requestUpgrade } from './control-client';
export type { ControlRequestOptions, UpgradeProgress, UpgradeOutcome } from './control-client';
export type { GenerationStatus, UpgradeRecord, UpgradeStep } from './protocol';
