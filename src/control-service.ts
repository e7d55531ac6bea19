// Servicing the control sockets between units of request work: a saturated event loop runs each
// uv_poll_t callback once per turn, and one turn can take seconds under a flood of requests.

/** Control endpoints that serviceControlSockets() looks at, besides their uv_poll_t. */
const serviced = new Set<{ service(): void }>();

/** serviceWith registers (true) or removes (false) an endpoint that serviceControlSockets() reads. */
export function serviceWith(endpoint: { service(): void }, on: boolean): void {
  if (on) serviced.add(endpoint);
  else serviced.delete(endpoint);
}

let servicing = false;

/**
 * serviceControlSockets accepts and reads what the control sockets hold now, without waiting for
 * their uv_poll_t. A poll callback runs once per turn of the event loop, and under a flood of
 * requests one turn can take seconds (every ready connection parses a full read of pipelined
 * requests); a handshake needs a few turns, so the successor's readyTimeout would expire.
 * Request work calls this between reads (see the HTTP adapter): a handshake then waits for one
 * read's work, not for whole turns. Costs one non-blocking accept/recvmsg per endpoint.
 */
export function serviceControlSockets(): void {
  if (servicing || serviced.size === 0) return;
  servicing = true;
  try {
    for (const endpoint of [...serviced]) endpoint.service();
  } finally {
    servicing = false;
  }
}
