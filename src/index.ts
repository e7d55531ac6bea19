// The public API of handover.
export { createUpgrader, Upgrader } from './upgrader';
export type { UpgraderOptions, UpgraderState, UpgraderEvents, SuccessorCommand, ConnectionsReport, ListenOptions } from './upgrader';
export type { TransferOptions, AdoptHandler, AdoptedConnection } from './connections';
export type { ListenTarget, InheritedListener } from './listeners';
export { listenerKey } from './listeners';
export { HandoverError, isHandoverError } from './errors';
export type { HandoverErrorCode } from './errors';
export { FdChannel, ChannelListener, connectChannel, channelPair, DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_FDS_PER_FRAME } from './channel';
export type { Frame, FdChannelOptions, SendOptions } from './channel';
export type { PeerCredentials, SocketInfo, SocketType, SocketFamily } from './native';
