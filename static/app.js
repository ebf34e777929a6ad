// The generator page: session-bound character sets, the job form, and one
// job watched live (progress, strings, ending).

import { GenerationStream } from './job-stream.js';
import { Toaster } from './toasts.js';
import { VirtualList } from './virtual-list.js';

const app = document.getElementById('app');
const urls = {
  generate: app.dataset.generateUrl,
  session: app.dataset.sessionUrl,
  jobs: app.dataset.jobsUrl,
};
const toaster = new Toaster(document.getElementById('toasts'));
const formatNumber = new Intl.NumberFormat('en').format;

// ---------------------------------------------------------------- session --

const charsets = document.getElementById('charsets');
const boxes = () => charsets.querySelectorAll('input[type=checkbox]');
// One request at a time, in click order, so quick toggles cannot cross.
let sessionQueue = Promise.resolve();

function showSelection(selection) {
  for (const box of boxes()) {
    if (box.name in selection) box.checked = Boolean(selection[box.name]);
  }
}

async function saveChoice(box, wanted) {
  charsets.setAttribute('aria-busy', 'true');
  try {
    const response = await fetch(urls.session, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ [box.name]: wanted ? 1 : 0 }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      showSelection(body.session);
      toaster.show(body.message, { kind: 'success' });
    } else {
      box.checked = !wanted;
      toaster.show(body.error || `The server answered ${response.status}.`, {
        kind: 'error',
        title: 'Not saved',
      });
    }
  } catch {
    box.checked = !wanted;
    toaster.show('The server cannot be reached; nothing was saved.', { kind: 'error' });
  } finally {
    charsets.removeAttribute('aria-busy');
  }
}

charsets.addEventListener('change', (event) => {
  const box = event.target;
  if (!(box instanceof HTMLInputElement)) return;
  const wanted = box.checked;
  sessionQueue = sessionQueue.then(() => saveChoice(box, wanted));
});

// A page restored from the back/forward cache may show an old selection.
window.addEventListener('pageshow', async (event) => {
  if (!event.persisted) return;
  try {
    const response = await fetch(urls.session, { headers: { Accept: 'application/json' } });
    if (response.ok) showSelection(await response.json());
  } catch {
    // The next change will tell the user if the server is gone.
  }
});

// ------------------------------------------------------------------- form --

const form = document.getElementById('generate-form');
const fields = ['amount', 'length', 'delay_ms'].map((name) => form.elements[name]);
const generateButton = document.getElementById('generate');
const cancelButton = document.getElementById('cancel');
let attempted = false;

function fieldLabel(input) {
  return input.labels[0].firstChild.textContent.trim();
}

// The limits are the input's own min/max, which the template fills from the
// server's configuration: one source for both sides.
function problemWith(input) {
  const raw = input.value.trim();
  const label = fieldLabel(input);
  if (input.validity.badInput) return `${label} must be a whole number.`;
  if (raw === '') return input.required ? `${label} is required.` : null;
  if (!/^\d+$/.test(raw)) return `${label} must be a whole number.`;
  const value = Number(raw);
  const min = Number(input.min);
  const max = Number(input.max);
  if (value < min || value > max) {
    return `${label} must be between ${formatNumber(min)} and ${formatNumber(max)}.`;
  }
  return null;
}

function showProblem(input, message) {
  const note = document.getElementById(`${input.name}-error`);
  note.textContent = message || '';
  note.hidden = !message;
  if (message) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
}

function validate() {
  let firstBad = null;
  for (const input of fields) {
    const problem = problemWith(input);
    showProblem(input, problem);
    if (problem && !firstBad) firstBad = input;
  }
  return firstBad;
}

form.addEventListener('input', (event) => {
  if (attempted && fields.includes(event.target)) showProblem(event.target, problemWith(event.target));
});

form.addEventListener('submit', (event) => {
  event.preventDefault();
  if (running) return;
  attempted = true;
  const bad = validate();
  if (bad) {
    bad.focus();
    return;
  }
  const params = new URLSearchParams();
  for (const input of fields) {
    if (input.value.trim() !== '') params.set(input.name, String(Number(input.value)));
  }
  start(params);
});

// -------------------------------------------------------------------- job --

const statusBadge = document.getElementById('status');
const progress = document.getElementById('progress');
const progressbar = document.getElementById('progressbar');
const progressFill = document.getElementById('progress-fill');
const progressPercent = document.getElementById('progress-percent');
const countLabel = document.getElementById('count');
const download = document.getElementById('download');
const results = document.getElementById('results');
const empty = document.getElementById('results-empty');

const MISSED = '… (missed here; the download has it)';
let strings = [];
const list = new VirtualList(results, (i) => strings[i] ?? MISSED);
let stream = null;
let running = false;
let amount = 0;
let percent = 0;
let dropped = false;
let frame = 0;

function setStatus(state, text) {
  statusBadge.dataset.state = state;
  statusBadge.textContent = text;
  progress.dataset.state = state;
}

// Events can arrive by the thousand per frame: they only touch arrays, and
// the DOM follows once per animation frame.
function scheduleRender() {
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  const received = strings.length;
  progressbar.setAttribute('aria-valuenow', String(percent));
  progressbar.setAttribute(
    'aria-valuetext',
    amount ? `${percent}%, ${formatNumber(received)} of ${formatNumber(amount)} strings` : `${percent}%`,
  );
  progressFill.style.transform = `scaleX(${percent / 100})`;
  progressPercent.textContent = `${percent}%`;
  countLabel.textContent = amount
    ? `${formatNumber(received)} of ${formatNumber(amount)} strings`
    : 'No strings yet.';
  results.dataset.count = String(received);
  empty.hidden = received > 0;
  list.update(received);
}

function setRunning(value) {
  running = value;
  generateButton.disabled = value;
  cancelButton.disabled = !value;
  form.setAttribute('aria-busy', String(value));
}

function start(params) {
  stream?.stop();
  strings = [];
  amount = Number(params.get('amount'));
  percent = 0;
  dropped = false;
  download.hidden = true;
  list.reset();
  setRunning(true);
  setStatus('running', 'Starting…');
  scheduleRender();

  stream = new GenerationStream(`${urls.generate}?${params}`, urls.jobs, {
    job(id) {
      download.href = `${urls.jobs}/${encodeURIComponent(id)}/result`;
      download.hidden = false;
    },
    item(data) {
      // Indexes are 1-based and arrive in order; after a gap the missing
      // ones are kept as holes so every line keeps its number.
      while (strings.length < data.index - 1) strings.push(null);
      if (data.index === strings.length + 1) strings.push(data.generated_string);
      amount = data.amount;
      percent = data.progress;
      scheduleRender();
    },
    gap(info) {
      toaster.show(
        `Some strings were sent while this page was away and are no longer kept for replay ` +
          `(after ${info.last_event_id}, resumed from ${info.resumed_from}). The download has them all.`,
        { kind: 'warning', title: 'Missed strings' },
      );
    },
    status(state) {
      if (state === 'reconnecting') {
        dropped = true;
        setStatus('reconnecting', 'Reconnecting…');
      } else if (state === 'open') {
        setStatus('running', 'Streaming');
        if (dropped) {
          dropped = false;
          toaster.show(`Reconnected; resuming after string ${formatNumber(strings.length)}.`);
        }
      }
    },
    end(type, data) {
      setRunning(false);
      if (type === 'done') {
        percent = 100;
        setStatus('done', 'Done');
        toaster.show(data.message || 'Done.', { kind: 'success', title: 'Job done' });
      } else if (type === 'cancelled') {
        setStatus('cancelled', 'Cancelled');
        toaster.show(data.message || 'Job cancelled.', { kind: 'warning', title: 'Job cancelled' });
      } else {
        setStatus('failed', 'Failed');
        toaster.show(data.message || 'Job failed.', { kind: 'error', title: 'Job failed' });
      }
      scheduleRender();
    },
    refused({ status, error, field, retryAfter }) {
      setRunning(false);
      setStatus('failed', 'Not started');
      const input = fields.find((candidate) => candidate.name === field);
      if (input) {
        showProblem(input, error);
        input.focus();
      }
      const later = retryAfter && (status === 429 || status === 503) ? ` Try again in ${retryAfter} s.` : '';
      toaster.show(`${error}${later}`, { kind: 'error', title: 'Job not started' });
    },
    lost(message) {
      setRunning(false);
      setStatus('failed', 'Disconnected');
      toaster.show(message, { kind: 'error', title: 'Stream lost' });
    },
  });
}

cancelButton.addEventListener('click', async () => {
  if (!running || !stream) return;
  cancelButton.disabled = true;
  if (stream.job === null) {
    // Nothing has come back yet, so there is no job to cancel by id: stop
    // watching, and a job the server did start is cancelled once orphaned.
    stream.finish('cancelled', { message: 'Stopped before the job started.' });
    return;
  }
  try {
    const response = await fetch(`${urls.jobs}/${encodeURIComponent(stream.job)}`, {
      method: 'DELETE',
      headers: { Accept: 'application/json' },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      toaster.show(body.error || `The server answered ${response.status}.`, {
        kind: 'error',
        title: 'Not cancelled',
      });
      cancelButton.disabled = !running;
    } else if (!stream.connected && body.status !== 'running') {
      // Connected, the stream brings the `cancelled` event itself; otherwise
      // the answer is all there is to say how the job ended.
      stream.finish(body.status, body);
    }
  } catch {
    toaster.show('The server cannot be reached; the job was not cancelled.', { kind: 'error' });
    cancelButton.disabled = !running;
  }
});

scheduleRender();
