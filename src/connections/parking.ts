// Parking for connections that wait without a Node object: their fds in one epoll set, watched by
// one poller on the main loop. A connection leaves when it is readable (its client sent
// something, or hung up) or when its owner starts it anyway.
import { createDebug } from '../log';
import { binding, type Poller } from '../native';
import { closeFds } from '../listeners';

const debug = createDebug('handover:connections');

/** epollWait hands back at most this many fds per call (native/binding.cc): more may be ready. */
const WAIT_BATCH = 256;

/** ParkingLot holds items by fd in one epoll set; onReadable(item) when one's fd is readable. */
export class ParkingLot<T extends { readonly fd: number }> {
  private epoll: { fd: number; poller: Poller } | undefined;
  private readonly byFd = new Map<number, T>();

  constructor(private readonly onReadable: (item: T) => void) {}

  /** has: the item is parked here. */
  has(item: T): boolean {
    return this.byFd.get(item.fd) === item;
  }

  /**
   * park adds items to the epoll set. Where epoll is missing (or has no fd for it) none is parked
   * and the caller starts them its own way; once the set exists, those added stay parked.
   */
  park(items: readonly T[]): void {
    if (items.length === 0) return;
    const native = binding();
    try {
      if (!this.epoll) {
        const fd = native.epollCreate();
        const poller = native.createPoller(fd, () => this.wake());
        poller.start(true, false);
        this.epoll = { fd, poller };
      }
      native.epollAdd(this.epoll.fd, items.map((item) => item.fd));
    } catch (err) {
      debug('cannot park connections: %s', (err as Error).message);
    }
    if (this.epoll) for (const item of items) this.byFd.set(item.fd, item);
  }

  /** leave: the item leaves the epoll set (libuv watches its fd from now on); the set closes when empty. */
  leave(item: T): void {
    if (!this.has(item)) return;
    this.byFd.delete(item.fd);
    const epoll = this.epoll;
    if (!epoll) return;
    try {
      binding().epollDelete(epoll.fd, item.fd);
    } catch (err) {
      debug('epoll_ctl(DEL) of fd %d: %s', item.fd, (err as Error).message);
    }
    if (this.byFd.size === 0) {
      epoll.poller.close();
      closeFds([epoll.fd]);
      this.epoll = undefined;
    }
  }

  /** wake: every parked item whose fd is readable goes to onReadable. */
  private wake(): void {
    const epoll = this.epoll;
    if (!epoll) return;
    for (;;) {
      let ready: number[];
      try {
        ready = binding().epollWait(epoll.fd);
      } catch (err) {
        debug('epoll_wait: %s', (err as Error).message);
        return;
      }
      for (const fd of ready) {
        const item = this.byFd.get(fd);
        if (item) this.onReadable(item);
      }
      if (ready.length < WAIT_BATCH) break;
    }
  }
}
