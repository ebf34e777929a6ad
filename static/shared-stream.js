/**
 * SharedEventSource: one EventSource per stream for all tabs of a browser.
 *
 *   const numbers = new SharedEventSource('/numbers', {
 *     events: ['newnumber'],
 *     onStatus: ({ state, role }) => { ... },
 *   });
 *   numbers.addEventListener('newnumber', (e) => use(JSON.parse(e.data)));
 *
 * Browsers allow only a few HTTP/1.1 connections per host, and every tab that
 * opens its own EventSource costs the server a stream. So the tabs of one
 * browser elect a leader per URL with the Web Locks API: the tab that holds
 * the lock `stream:<url>` (for as long as it lives) opens the EventSource and
 * relays each event to the other tabs over a BroadcastChannel `sse:<url>`.
 * The others wait in the lock's queue. When the leader goes away the browser
 * hands the lock to the next tab, which reopens the stream with
 * `?last_event_id=<last id it saw>`, so the server resumes after it.
 *
 * A tab that joins late asks the leader for the events it keeps (the last
 * `replay` of them), so it starts with the same history as the leader.
 * Events that carry an id are delivered at most once per tab even across a
 * hand-over; a `gap` event (the server could not resume exactly) resets that
 * bookkeeping, since ids may start again after a server restart.
 *
 * Events without an id (live-only ones, such as presence's `join` and `leave`)
 * are relayed but not kept for late tabs: what those need instead is the state
 * they build, which the `snapshot` option gives (an event the leader makes
 * from its own state, sent to a late tab before the events it keeps).
 *
 * Listeners get MessageEvents with `data` and `lastEventId`. `state` is
 * 'connecting' (never open yet), 'open', 'reconnecting' (was open, is not
 * now) or 'closed' (after close()); `role` is 'leader', 'follower' or 'solo'
 * (no Web Locks or BroadcastChannel, e.g. a page served over plain HTTP to a
 * non-local address: every tab then has its own EventSource).
 */

const HELLO_TIMEOUT_MS = 1000;
const SEEN_IDS = 1024;

export class SharedEventSource extends EventTarget {
  /**
   * @param {string} url  same-origin stream URL
   * @param {object} [options]
   * @param {string[]} [options.events=['message']]  event types to listen to
   *   ('message' is the default type); 'gap' is always delivered too
   * @param {number} [options.replay=50]  events kept for tabs that join later
   * @param {(status: {state: string, role: string}) => void} [options.onStatus]
   * @param {number} [options.maxRetryMs=30000]  cap of the back-off used when
   *   the browser gives up on the stream (an HTTP error, e.g. 503 in a restart)
   * @param {() => ({type: string, data: string} | null)} [options.snapshot]
   *   in the leading tab: an event that sums up the id-less events so far, for a
   *   tab that joins later (it gets it first)
   */
  constructor(url, { events = ['message'], replay = 50, onStatus = null, maxRetryMs = 30000, snapshot = null } = {}) {
    super();
    this.url = url;
    this._types = [...new Set([...events, 'gap'])];
    this._replaySize = Math.max(0, replay);
    this._onStatus = onStatus;
    this._maxRetryMs = maxRetryMs;
    this._snapshot = snapshot;

    this._state = 'connecting';
    this._role = 'follower';
    this._lastEventId = '';
    this._everOpen = false;
    this._closed = false;
    this._buffer = [];
    this._seen = new Set();
    this._es = null;
    this._esLastId = '';
    this._retryMs = 1000;
    this._retryTimer = 0;
    this._release = null;
    this._reported = '';
    // Until the leader's replay arrives, live relays wait here so that the
    // history is shown before (and in order with) what follows it.
    this._synced = false;
    this._pending = [];
    this._helloTimer = 0;
    this._tab = Math.random().toString(36).slice(2) + Date.now().toString(36);

    // Later, so that a callback may already use the object being built.
    queueMicrotask(() => {
      if (!this._closed && !this._reported) this._setState(this._state);
    });

    if (!('locks' in navigator) || typeof BroadcastChannel === 'undefined') {
      this._role = 'solo';
      this._synced = true;
      this._open();
      return;
    }
    this._channel = new BroadcastChannel(`sse:${url}`);
    this._channel.onmessage = (e) => this._onChannel(e.data);
    this._abort = new AbortController();
    navigator.locks
      .request(`stream:${url}`, { signal: this._abort.signal }, () => this._lead())
      .catch((error) => {
        if (error.name !== 'AbortError') throw error;
      });
    this._hello();
  }

  /** 'connecting' | 'open' | 'reconnecting' | 'closed' */
  get state() {
    return this._state;
  }

  /** 'leader' | 'follower' | 'solo' */
  get role() {
    return this._role;
  }

  /** The id of the last event delivered to this tab ('' if none yet). */
  get lastEventId() {
    return this._lastEventId;
  }

  /**
   * Open the stream again (after what changes who the server sees: a new name
   * in the session), resuming after the last event: the leading tab does it,
   * whichever tab asks.
   */
  reconnect() {
    if (this._closed) return;
    if (this._role === 'follower') this._post({ kind: 'reconnect' });
    else if (this._es || this._retryTimer) this._restart();
  }

  _restart() {
    clearTimeout(this._retryTimer);
    this._retryTimer = 0;
    if (this._es) this._es.close();
    this._es = null;
    this._open();
  }

  /** Stop listening; a leader gives the lock (and the stream) to another tab. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._retryTimer);
    clearTimeout(this._helloTimer);
    if (this._es) this._es.close();
    this._es = null;
    if (this._abort) this._abort.abort();
    if (this._release) this._release();
    if (this._channel) this._channel.close();
    this._setState('closed');
  }

  // -- leader ---------------------------------------------------------------

  _lead() {
    if (this._closed) return undefined;
    this._role = 'leader';
    clearTimeout(this._helloTimer);
    this._flushPending();
    this._post({ kind: 'leader' });
    this._setState(this._everOpen ? 'reconnecting' : 'connecting');
    this._open();
    // The lock is held until this promise settles: for the life of the tab.
    return new Promise((resolve) => {
      this._release = resolve;
    });
  }

  _open() {
    if (this._closed) return;
    const target = new URL(this.url, location.href);
    if (this._lastEventId) target.searchParams.set('last_event_id', this._lastEventId);
    const es = new EventSource(target);
    this._es = es;
    this._esLastId = '';
    es.onopen = () => {
      this._everOpen = true;
      this._retryMs = 1000;
      this._setState('open');
    };
    es.onerror = () => {
      if (this._es !== es) return;
      this._setState(this._everOpen ? 'reconnecting' : 'connecting');
      if (es.readyState === EventSource.CLOSED) {
        // The browser retries network errors itself but gives up on HTTP
        // errors; a restarting server answers 503, so keep trying, gently.
        this._es = null;
        const delay = this._retryMs * (0.5 + Math.random());
        this._retryMs = Math.min(this._retryMs * 2, this._maxRetryMs);
        this._retryTimer = setTimeout(() => this._open(), delay);
      }
    };
    for (const type of this._types) {
      es.addEventListener(type, (e) => {
        // An event without an id field keeps the previous lastEventId.
        const id = e.lastEventId !== this._esLastId ? e.lastEventId : null;
        this._esLastId = e.lastEventId;
        const event = { type, data: e.data, id };
        if (this._deliver(event)) this._post({ kind: 'event', event });
      });
    }
  }

  // -- followers ------------------------------------------------------------

  _hello() {
    this._post({ kind: 'hello', from: this._tab });
    clearTimeout(this._helloTimer);
    // No answer (a leader that is itself only starting): show what comes.
    this._helloTimer = setTimeout(() => this._flushPending(), HELLO_TIMEOUT_MS);
  }

  _onChannel(message) {
    if (this._closed || !message) return;
    switch (message.kind) {
      case 'hello':
        if (this._role === 'leader') {
          this._post({
            kind: 'replay',
            to: message.from,
            snapshot: this._snapshot ? this._snapshot() : null,
            events: this._buffer,
            state: this._state,
          });
        }
        break;
      case 'replay':
        if (message.to !== this._tab || this._role !== 'follower') break;
        clearTimeout(this._helloTimer);
        if (message.snapshot) this._deliver({ ...message.snapshot, id: null });
        for (const event of message.events) this._deliver(event);
        this._flushPending();
        this._followState(message.state);
        break;
      case 'leader':
        if (this._role === 'follower' && !this._synced) this._hello();
        break;
      case 'event':
        // A leader reads the server itself; a relay it still gets comes
        // from the tab it replaced.
        if (this._role !== 'follower') break;
        if (this._synced) this._deliver(message.event);
        else this._pending.push(message.event);
        break;
      case 'status':
        if (this._role === 'follower') this._followState(message.state);
        break;
      case 'reconnect':
        if (this._role === 'leader') this._restart();
        break;
      default:
        break;
    }
  }

  _followState(state) {
    if (state === 'open') this._everOpen = true;
    this._setState(state);
  }

  _flushPending() {
    const pending = this._pending;
    this._pending = [];
    this._synced = true;
    for (const event of pending) this._deliver(event);
  }

  // -- both -----------------------------------------------------------------

  /** Dispatch an event unless this tab has had it; true if dispatched. */
  _deliver(event) {
    if (event.type === 'gap') {
      this._seen.clear();
    } else if (event.id !== null) {
      if (this._seen.has(event.id)) return false;
      this._seen.add(event.id);
      if (this._seen.size > SEEN_IDS) this._seen.delete(this._seen.values().next().value);
      this._lastEventId = event.id;
      if (this._replaySize > 0) {
        this._buffer.push(event);
        if (this._buffer.length > this._replaySize) this._buffer.shift();
      }
    }
    this.dispatchEvent(new MessageEvent(event.type, { data: event.data, lastEventId: this._lastEventId }));
    return true;
  }

  _post(message) {
    if (this._channel && !this._closed) this._channel.postMessage(message);
  }

  _setState(state) {
    this._state = state;
    if (this._role === 'leader') this._post({ kind: 'status', state });
    const key = `${state}/${this._role}`;
    if (this._onStatus && key !== this._reported) {
      this._reported = key;
      this._onStatus({ state, role: this._role });
    }
  }
}
