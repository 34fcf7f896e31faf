// A job in the main area: its state, each attempt with its cause and what it asked for, what it
// used against what it asked, its parents and children, its log tail; Cancel and Retry in the
// panel's toolbar. Read again when the change feed names its task; a running job's log is read
// every 2 s while the panel shows (a log grows without a ledger change).
import { MainAreaWidget, Notification } from '@jupyterlab/apputils';
import { refreshIcon, stopIcon, Toolbar } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { api, ChangeFeed, chip, el, post, taskPath, toolbarButton } from './api';

export interface IJobRef {
  projectId: string;
  taskId: string;
  jobId: string;
}

const LOG_LINES = 200;
const LOG_EVERY_MS = 2000;
const LIVE = new Set(['SUBMITTED', 'RUNNABLE', 'STARTING', 'RUNNING']); // states in which a log can grow

function when(iso: string | null): string {
  return iso ? new Date(iso).toLocaleTimeString() : '';
}

function cells(row: HTMLTableRowElement, values: (string | number | null | undefined)[], tag: 'td' | 'th' = 'td') {
  for (const v of values) {
    row.append(el(tag, '', v === null || v === undefined ? '' : String(v)));
  }
}

class JobView extends Widget {
  private head = el('div', 'htc-jobhead');
  private usage = el('table', 'htc-usage');
  private attempts = el('table', 'htc-attempts');
  private links = el('div', 'htc-links');
  private log = el('pre', 'htc-log');
  private running = false;
  private reading: Promise<void> | null = null;
  private again = false;
  private timer = 0;
  private unlisten: () => void;

  constructor(readonly job: IJobRef, feed: ChangeFeed, private open: (job: IJobRef) => void) {
    super();
    this.addClass('htc-jobpanel');
    this.log.tabIndex = 0; // scrollable by keyboard
    this.log.setAttribute('role', 'log');
    this.log.setAttribute('aria-label', `log of job ${job.jobId}`);
    this.usage.setAttribute('aria-label', 'used against asked');
    this.attempts.setAttribute('aria-label', 'attempts');
    this.node.append(this.head, el('h3', '', 'Used / asked'), this.usage, el('h3', '', 'Attempts'), this.attempts,
      this.links, el('h3', '', 'Log (last 200 lines)'), this.log);
    this.unlisten = feed.listen(change => {
      if (!change || change.tasks.some(t => t.taskId === job.taskId && t.projectId === job.projectId)) {
        void this.refresh();
      }
    });
    void this.refresh();
  }

  get path(): string {
    return `${taskPath(this.job.projectId, this.job.taskId)}/jobs`;
  }

  /** Read the job again (one read at a time; a request meanwhile reads once more after it). */
  refresh(): Promise<void> {
    if (this.reading) {
      this.again = true;
      return this.reading;
    }
    this.reading = this.read().finally(() => {
      this.reading = null;
      if (this.again) {
        this.again = false;
        void this.refresh();
      }
    });
    return this.reading;
  }

  private async read(): Promise<void> {
    let view: any;
    try {
      view = await api(`${this.path}/${encodeURIComponent(this.job.jobId)}`);
    } catch (e) {
      this.head.replaceChildren(el('span', 'htc-error', `job ${this.job.jobId}: ${(e as Error).message}`));
      return;
    }
    const head = el('div', 'htc-jobhead');
    head.append(el('span', 'htc-jobname', view.jobName), chip(view.toolkitStatus || view.status),
      el('span', 'htc-muted', ` job ${view.jobId}, ${view.attempts} attempt(s)${view.host ? ' on ' + view.host : ''}`));
    if (view.statusReason) {
      head.append(el('div', 'htc-reason', view.statusReason));
    }
    this.head.replaceWith(head);
    this.head = head;
    this.renderUsage(view);
    this.renderAttempts(view.attemptHistory || []);
    this.renderLinks(view);
    this.running = LIVE.has(view.toolkitStatus || view.status);
    await this.readLog();
  }

  private renderUsage(view: any): void {
    const asked = view.requested || {};
    const used = view.usage || {};
    const table = el('table', 'htc-usage');
    table.setAttribute('aria-label', 'used against asked');
    const head = table.createTHead().insertRow();
    cells(head, ['', 'used', 'asked'], 'th');
    const body = table.createTBody();
    cells(body.insertRow(), ['memory (MiB)', used.maxMemoryMiB?.toFixed?.(1), asked.memoryMiB ?? '-']);
    cells(body.insertRow(), ['CPU (s) / vCPUs', used.cpuSeconds?.toFixed?.(2), asked.vCpus]);
    cells(body.insertRow(), ['time limit (s)', '', asked.execTimeoutSeconds ?? '-']);
    cells(body.insertRow(), ['memory limit held', view.memoryHeld ?? '', '']);
    cells(body.insertRow(), ['sandbox', view.sandbox ?? '', '']);
    this.usage.replaceWith(table);
    this.usage = table;
  }

  private renderAttempts(history: any[]): void {
    const table = el('table', 'htc-attempts');
    table.setAttribute('aria-label', 'attempts');
    cells(table.createTHead().insertRow(), ['#', 'status', 'cause', 'reason', 'memory asked', 'time limit', 'host',
      'started', 'ended'], 'th');
    const body = table.createTBody();
    for (const a of history) {
      const row = body.insertRow();
      cells(row, [a.attempt]);
      row.insertCell().append(chip(a.status));
      cells(row, [a.cause, a.statusReason, a.maxMemory, a.execTimeoutSeconds, a.host, when(a.startedAt),
        when(a.endedAt)]);
    }
    this.attempts.replaceWith(table);
    this.attempts = table;
  }

  private renderLinks(view: any): void {
    const links = el('div', 'htc-links');
    const group = (label: string, ids: string[]) => {
      if (!ids?.length) {
        return;
      }
      const line = el('div', 'htc-linkline', `${label}: `);
      for (const id of ids) {
        const link = el('button', 'htc-joblink', `job ${id}`);
        link.type = 'button';
        link.onclick = () => this.open({ projectId: this.job.projectId, taskId: this.job.taskId, jobId: id });
        line.append(link, ' ');
      }
      links.append(line);
    };
    group('depends on', view.dependsOn);
    group('jobs depending on it', view.dependents);
    this.links.replaceWith(links);
    this.links = links;
  }

  private async readLog(): Promise<void> {
    window.clearTimeout(this.timer);
    const base = `${this.path}/${encodeURIComponent(this.job.jobId)}/logs?pageSize=${LOG_LINES}`;
    // newest line first on the wire: shown in reading order
    const lines = (page: any) => page.items.slice().reverse().map((l: any) => l.message).join('\n');
    try {
      const [out, err] = await Promise.all([api(base), api(`${base}&stream=err`)]);
      const text = lines(out) + (err.items.length ? '\n--- stderr ---\n' + lines(err) : '');
      const atEnd = this.log.scrollTop + this.log.clientHeight >= this.log.scrollHeight - 4;
      if (this.log.textContent !== text) {
        this.log.textContent = text;
        if (atEnd) {
          this.log.scrollTop = this.log.scrollHeight; // follow the tail unless the reader scrolled up
        }
      }
    } catch (e) {
      this.log.textContent = `(no log: ${(e as Error).message})`;
    }
    if (this.running && !this.isDisposed) {
      this.timer = window.setTimeout(() => {
        if (this.isVisible) {
          void this.readLog(); // hidden: read again when shown (onAfterShow)
        }
      }, LOG_EVERY_MS);
    }
  }

  protected onAfterShow(): void {
    if (this.running) {
      void this.readLog();
    }
  }

  async act(action: 'cancel' | 'retry'): Promise<void> {
    const id = this.job.jobId;
    try {
      const r = await post(`${this.path}/${action}`, { jobIds: [id] });
      if (action === 'cancel' ? r.cancelled : r.retried) {
        Notification.success(`HTC: job ${id} ${action === 'cancel' ? 'cancelled' : 'sent to run again'}`,
          { autoClose: 4000 });
      } else {
        Notification.warning(action === 'cancel' ? `HTC: job ${id} was not cancelled: it had ended` :
          `HTC: job ${id} was not retried: only a FAILED, CANCELLED or LOST job runs again`, { autoClose: 8000 });
      }
    } catch (e) {
      Notification.error(`HTC: ${action} job ${this.job.jobId}: ${(e as Error).message}`, { autoClose: 8000 });
    }
    void this.refresh();
  }

  dispose(): void {
    window.clearTimeout(this.timer);
    this.unlisten();
    super.dispose();
  }
}

/** The panel of a job: a MainAreaWidget, id `htc-job-<task>-<job>` (one per job). */
export function jobPanel(job: IJobRef, feed: ChangeFeed, open: (job: IJobRef) => void): MainAreaWidget<JobView> {
  const view = new JobView(job, feed, open);
  // a plain toolbar: the default one folds buttons behind Lab's own "More commands" opener, which
  // axe-core finds a critical fault in (aria-pressed on a role-less element); two buttons always fit
  const panel = new MainAreaWidget({ content: view, toolbar: new Toolbar() });
  panel.id = `htc-job-${job.taskId}-${job.jobId}`;
  panel.addClass('htc-jobwidget');
  panel.title.label = `HTC job ${job.jobId}`;
  panel.title.caption = `job ${job.jobId} of task ${job.taskId} (project ${job.projectId})`;
  panel.title.closable = true;
  panel.toolbar.addItem('cancel', toolbarButton('htc-cancel', 'Cancel', stopIcon, () => void view.act('cancel'),
    'Cancel this job'));
  panel.toolbar.addItem('retry', toolbarButton('htc-retry', 'Retry', refreshIcon, () => void view.act('retry'),
    'Retry this job (a new attempt)'));
  return panel;
}
