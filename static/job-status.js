// A job's statuses as the server names them (JobStatus in quart_app/jobs/model.py):
// the one place the front end writes them. A job's terminal events are named
// after its terminal statuses, so these are also the SSE event types that end
// a job's stream.

export const JobStatus = Object.freeze({
  RUNNING: 'running',
  DONE: 'done',
  CANCELLED: 'cancelled',
  FAILED: 'failed',
});

/** The statuses a job ends in, in the order the pages list them. */
export const TERMINAL = Object.freeze([JobStatus.DONE, JobStatus.CANCELLED, JobStatus.FAILED]);
