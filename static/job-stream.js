// Watch one generation job through EventSource.
//
// EventSource resumes by itself after a dropped connection (it sends
// Last-Event-ID and the server continues the same job), but when the server
// refuses a request it only says `error` with readyState CLOSED: the status
// and the JSON body are hidden.  So, once closed without an ending event, the
// stream asks again with fetch() to learn why: the same URL when no job was
// started yet (400 with the bad field, 429 or 503 with a message), or
// /jobs/<id> when a job was already running.

import { TERMINAL } from './job-status.js';

const MAX_REATTACH = 3;

function withParam(url, name, value) {
  const target = new URL(url, location.href);
  target.searchParams.set(name, value);
  return target.pathname + target.search;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return {};
  }
}

function isEventStream(response) {
  return (response.headers.get('Content-Type') || '').startsWith('text/event-stream');
}

async function firstEventId(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = '';
  while (text.length < 65536) {
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
    const match = /^id: ?([^\r\n]*)[\r\n]/m.exec(text);
    if (match) return match[1];
  }
  return null;
}

export class GenerationStream {
  /**
   * @param {string} url  /generate?amount=..&length=..[&delay_ms=..]
   * @param {string} jobsUrl  /jobs
   * @param {object} on  callbacks: job(id), item(data), gap(info), status(state),
   *   end(type, data), refused({status, error, field, retryAfter}), lost(message)
   * @param {string|null} resume  a job started earlier, to watch from its first string
   */
  constructor(url, jobsUrl, on, resume = null) {
    this.url = url;
    this.jobsUrl = jobsUrl;
    this.on = on;
    this.job = null;
    this.lastId = null;
    this.ended = false;
    this.asked = false;
    this.reattached = 0;
    this.source = null;
    this.timer = 0;
    this.controller = new AbortController();
    if (resume) {
      this.job = resume;
      this.on.job?.(resume);
      this.open(withParam(url, 'last_event_id', `${resume}:0`));
    } else {
      this.open(url);
    }
  }

  open(url) {
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => this.on.status?.('open');
    source.onmessage = (event) => {
      const data = JSON.parse(event.data);
      this.lastId = event.lastEventId;
      if (this.job === null) {
        this.job = data.job;
        this.on.job?.(data.job);
      }
      this.on.item(data);
    };
    for (const type of TERMINAL) {
      source.addEventListener(type, (event) => this.finish(type, JSON.parse(event.data)));
    }
    source.addEventListener('gap', (event) => this.on.gap?.(JSON.parse(event.data)));
    source.onerror = () => {
      if (this.ended || source !== this.source) return;
      if (source.readyState === EventSource.CONNECTING) {
        this.on.status?.('reconnecting');
        return;
      }
      this.diagnose();
    };
  }

  get connected() {
    return this.source?.readyState === EventSource.OPEN;
  }

  finish(type, data) {
    if (this.ended) return;
    this.stop();
    this.on.end(type, data);
  }

  /** Stop watching (the job itself goes on until cancelled or orphaned). */
  stop() {
    this.ended = true;
    this.source?.close();
    clearTimeout(this.timer);
    this.controller.abort();
  }

  async diagnose() {
    this.source.close();
    try {
      if (this.job === null) await this.whyRefused();
      else await this.whatBecameOfJob();
    } catch {
      if (this.ended) return;
      if (this.job !== null && this.reattached < MAX_REATTACH) {
        // A server restarting, say: jobs outlive restarts, so come back and resume.
        this.reattach();
        return;
      }
      this.stop();
      this.on.lost(
        this.job === null
          ? 'The server cannot be reached.'
          : 'The server cannot be reached; the job goes on there and resumes when you reconnect.',
      );
    }
  }

  reattach() {
    // Come back after a while and resume after the last string received.
    this.reattached += 1;
    this.on.status?.('reconnecting');
    const resume = this.lastId || `${this.job}:0`;
    this.timer = setTimeout(
      () => this.open(withParam(this.url, 'last_event_id', resume)),
      1000 * this.reattached,
    );
  }

  async whyRefused() {
    if (this.asked) {
      this.stop();
      this.on.refused({ status: 0, error: 'The server refused to start the job.' });
      return;
    }
    this.asked = true;
    const probe = new AbortController();
    this.controller.signal.addEventListener('abort', () => probe.abort());
    const response = await fetch(this.url, {
      headers: { Accept: 'application/json' },
      signal: probe.signal,
    });
    if (this.ended) return;
    if (response.status === 200 && isEventStream(response)) {
      // What refused the first request (a job limit) has cleared and this one
      // started a job: watch that job rather than leave it to be orphaned.
      const id = await firstEventId(response);
      probe.abort();
      const cut = id ? id.lastIndexOf(':') : -1;
      if (cut > 0 && !this.ended) {
        this.open(withParam(this.url, 'last_event_id', `${id.slice(0, cut)}:0`));
        return;
      }
    }
    const body = response.ok ? {} : await readJson(response);
    if (this.ended) return;
    this.stop();
    this.on.refused({
      status: response.status,
      error: body.error || `The server answered ${response.status} ${response.statusText}`.trim(),
      field: body.field,
      retryAfter: response.headers.get('Retry-After'),
    });
  }

  async whatBecameOfJob() {
    const response = await fetch(`${this.jobsUrl}/${encodeURIComponent(this.job)}`, {
      headers: { Accept: 'application/json' },
      signal: this.controller.signal,
    });
    const body = await readJson(response);
    if (this.ended) return;
    if (!response.ok) {
      this.stop();
      this.on.lost(body.error || `The job is gone (${response.status}).`);
    } else if (TERMINAL.includes(body.status)) {
      this.finish(body.status, body);
    } else if (this.reattached < MAX_REATTACH) {
      // Still running but this stream was refused (a server restarting, say).
      this.reattach();
    } else {
      this.stop();
      this.on.lost('Lost the connection to the job; it is still running on the server.');
    }
  }
}
