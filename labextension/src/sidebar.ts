// The HTC sidebar: projects -> tasks with status chips, the selected task's jobs (a page at a
// time, filtered by status), the server's clusters as cards, and a new-cluster form checked by the
// server as you type. Nothing is polled: the change feed says which tasks changed and only those
// are read again. Keyboard: arrows move through the tree, Enter opens, Left/Right fold a project.
import { Notification } from '@jupyterlab/apputils';
import { refreshIcon, SidePanel } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { api, button, ChangeFeed, chip, el, IChange, post, taskPath, toolbarButton } from './api';
import { IJobRef } from './jobpanel';

const JOB_PAGE = 50;
// the toolkit's states (htc_notebook.states.STATES), in that order
const ORDER = ['WAITING', 'SUBMITTED', 'HELD', 'RUNNABLE', 'STARTING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED',
  'LOST'];

/** One section of the side panel (an accordion pane with its title). */
class Section extends Widget {
  constructor(label: string, cls: string) {
    super();
    this.addClass('htc-section');
    this.addClass(cls);
    this.title.label = label;
  }
}

export interface ISidebarOptions {
  feed: ChangeFeed;
  openJob: (job: IJobRef) => void;
  openDashboard: (url: string, profile: string, plot: string, label: string) => void;
}

export class HTCSidebar extends SidePanel {
  private projects = new Section('Projects', 'htc-projects');
  private jobs = new Section('Jobs', 'htc-jobs-section');
  private clusters = new Section('Clusters', 'htc-clusters');
  private form = new Section('New cluster', 'htc-form');
  private tree = el('div', 'htc-tree');
  private selected: { projectId: string; taskId: string; name: string } | null = null;
  private folded = new Set<string>();
  private filter = '';
  private shownJobs = JOB_PAGE;
  private pending = { all: false, tasks: new Set<string>(), clusters: false };
  private working: Promise<void> | null = null;
  private lastError = '';

  constructor(private options: ISidebarOptions) {
    super();
    this.id = 'htc-sidebar';
    this.addClass('htc-sidebar');
    this.title.caption = 'HTC projects, tasks and jobs';
    this.header.node.append(el('h2', 'htc-title', 'HTC'));
    this.toolbar.addItem('refresh', toolbarButton('htc-refresh', 'Refresh', refreshIcon, () => this.changed(null),
      'Read everything again'));
    this.tree.setAttribute('role', 'tree');
    this.tree.setAttribute('aria-label', 'HTC projects and tasks');
    this.tree.onkeydown = event => this.key(event);
    this.projects.node.append(this.tree);
    for (const section of [this.projects, this.jobs, this.clusters, this.form]) {
      this.addWidget(section);
    }
    void this.buildForm();
    options.feed.listen(change => this.changed(change));
  }

  /** What the feed said: queued, then read by one worker at a time (a burst costs one read each). */
  private changed(change: IChange | null): void {
    this.pending.clusters = true; // their workers and jobs move with any change (not in the ledger)
    if (!change || change.structure) {
      this.pending.all = true;
    } else {
      for (const t of change.tasks) {
        this.pending.tasks.add(t.taskId);
      }
    }
    if (!this.working) {
      this.working = this.work().finally(() => {
        this.working = null;
      });
    }
  }

  private async work(): Promise<void> {
    while (this.pending.all || this.pending.tasks.size || this.pending.clusters) {
      const { all, tasks } = this.pending;
      this.pending = { all: false, tasks: new Set(), clusters: false };
      try {
        if (all) {
          await this.renderTree();
        } else {
          for (const id of tasks) {
            await this.renderTaskChips(id);
          }
        }
        if (this.selected && (all || tasks.has(this.selected.taskId))) {
          await this.renderJobs();
        }
        await this.renderClusters();
        this.report('');
      } catch (e) {
        this.report((e as Error).message);
      }
    }
  }

  /** A failure once in Lab's notifications (not again while it lasts), and in the panel. */
  private report(message: string): void {
    if (message && message !== this.lastError) {
      Notification.error(`HTC: ${message}`, { autoClose: 8000 });
    }
    this.lastError = message;
    this.header.node.querySelector('.htc-error')?.remove();
    if (message) {
      this.header.node.append(el('div', 'htc-error', message));
    }
  }

  // -- the tree ------------------------------------------------------------------------------
  private async renderTree(): Promise<void> {
    const projects = (await api('projects')).items;
    const tree = el('div', 'htc-tree');
    tree.setAttribute('role', 'tree');
    tree.setAttribute('aria-label', 'HTC projects and tasks');
    tree.onkeydown = event => this.key(event);
    if (!projects.length) {
      tree.append(el('div', 'htc-muted', 'No projects yet: submit work from a notebook.'));
    }
    for (const p of projects) {
      const open = !this.folded.has(p.projectId);
      const item = el('div', 'htc-project-item');
      item.setAttribute('role', 'treeitem');
      item.setAttribute('aria-expanded', String(open));
      const label = el('div', 'htc-project htc-node', p.projectName);
      label.tabIndex = -1;
      label.dataset.project = p.projectId;
      label.onclick = () => this.fold(p.projectId);
      item.append(label);
      if (p.containerRegistry) {
        // the project's registry: where to push, and the images jobs may name (imageName)
        let images: string[] = [];
        try {
          images = (await api(`projects/${encodeURIComponent(p.projectId)}/container-registry/images`)).images;
        } catch {
          // the registry went down between the two calls: the prefix only
        }
        const registry = el('div', 'htc-registry', `images at ${p.containerRegistry}: `);
        registry.append(el('span', 'htc-images', images.length ? images.join(', ') : '(none pushed)'));
        item.append(registry);
      }
      const group = el('div', 'htc-group');
      group.setAttribute('role', 'group');
      group.hidden = !open;
      const tasks = (await api(`projects/${encodeURIComponent(p.projectId)}/tasks`)).items;
      for (const t of tasks) {
        const row = el('div', 'htc-task htc-node');
        row.setAttribute('role', 'treeitem');
        row.tabIndex = -1;
        row.dataset.task = t.taskId;
        row.dataset.project = p.projectId;
        row.append(el('span', 'htc-taskname', t.taskName));
        if (t.lifecycleStatus !== 'ACTIVE') {
          row.append(el('span', 'htc-muted', ` (${t.lifecycleStatus.toLowerCase()})`));
        }
        row.append(el('span', 'htc-chips'));
        const selected = this.selected?.taskId === t.taskId;
        row.setAttribute('aria-selected', String(selected));
        row.classList.toggle('sel', selected);
        row.onclick = () => this.select(p.projectId, t.taskId, t.taskName);
        group.append(row);
      }
      item.append(group);
      tree.append(item);
    }
    const focused = document.activeElement as HTMLElement | null;
    const keep = focused && this.tree.contains(focused) ? focused.dataset : null;
    this.tree.replaceWith(tree);
    this.tree = tree;
    const nodes = this.nodes();
    const again = keep ? nodes.find(n => n.dataset.task === keep.task && n.dataset.project === keep.project) : null;
    (again || nodes[0])?.setAttribute('tabindex', '0');
    again?.focus();
    await Promise.all([...tree.querySelectorAll<HTMLElement>('.htc-task')].map(
      row => this.renderTaskChips(row.dataset.task!, row)));
  }

  private async renderTaskChips(taskId: string, row?: HTMLElement): Promise<void> {
    row = row || this.tree.querySelector<HTMLElement>(`.htc-task[data-task="${CSS.escape(taskId)}"]`) || undefined;
    if (!row) {
      this.pending.all = true; // a task not shown yet
      return;
    }
    const stats = (await api(`${taskPath(row.dataset.project!, taskId)}/summary-statistics`)).toolkitStatuses;
    const chips = el('span', 'htc-chips');
    for (const s of ORDER) {
      if (stats[s]) {
        chips.append(chip(s, stats[s]));
      }
    }
    row.querySelector('.htc-chips')?.replaceWith(chips);
    row.setAttribute('aria-label', `task ${row.querySelector('.htc-taskname')?.textContent}: ` +
      (ORDER.filter(s => stats[s]).map(s => `${stats[s]} ${s.toLowerCase()}`).join(', ') || 'no jobs'));
    if (this.selected?.taskId === taskId) {
      this.renderFilter(stats);
    }
  }

  private nodes(): HTMLElement[] {
    return [...this.tree.querySelectorAll<HTMLElement>('.htc-node')].filter(n => !n.closest('[hidden]'));
  }

  private key(event: KeyboardEvent): void {
    const nodes = this.nodes();
    const at = nodes.indexOf(document.activeElement as HTMLElement);
    const move = (to: number) => {
      const next = nodes[Math.max(0, Math.min(nodes.length - 1, to))];
      nodes.forEach(n => n.setAttribute('tabindex', '-1'));
      next?.setAttribute('tabindex', '0');
      next?.focus();
    };
    const node = nodes[at];
    switch (event.key) {
      case 'ArrowDown': move(at + 1); break;
      case 'ArrowUp': move(at - 1); break;
      case 'Home': move(0); break;
      case 'End': move(nodes.length - 1); break;
      case 'Enter': case ' ': node?.click(); break;
      case 'ArrowLeft': case 'ArrowRight':
        if (node?.classList.contains('htc-project')) {
          const open = event.key === 'ArrowRight';
          if (this.folded.has(node.dataset.project!) === open) {
            this.fold(node.dataset.project!);
          }
        }
        break;
      default: return;
    }
    event.preventDefault();
  }

  private fold(projectId: string): void {
    if (!this.folded.delete(projectId)) {
      this.folded.add(projectId);
    }
    const label = this.tree.querySelector<HTMLElement>(`.htc-project[data-project="${CSS.escape(projectId)}"]`);
    const item = label?.parentElement;
    const open = !this.folded.has(projectId);
    item?.setAttribute('aria-expanded', String(open));
    const group = item?.querySelector<HTMLElement>('.htc-group');
    if (group) {
      group.hidden = !open;
    }
  }

  private select(projectId: string, taskId: string, name: string): void {
    if (this.selected?.taskId !== taskId) {
      this.filter = '';
      this.shownJobs = JOB_PAGE;
    }
    this.selected = { projectId, taskId, name };
    for (const row of this.tree.querySelectorAll<HTMLElement>('.htc-task')) {
      const on = row.dataset.task === taskId;
      row.classList.toggle('sel', on);
      row.setAttribute('aria-selected', String(on));
    }
    this.pending.tasks.add(taskId);
    this.changed({ tasks: [{ projectId, taskId }], structure: false });
  }

  // -- the selected task's jobs --------------------------------------------------------------
  private renderFilter(stats: Record<string, number>): void {
    const select = this.jobs.node.querySelector<HTMLSelectElement>('select.htc-status-filter');
    if (!select) {
      return;
    }
    const total = Object.values(stats).reduce((a, b) => a + b, 0);
    const options = [['', `all (${total})`], ...ORDER.filter(s => stats[s]).map(s => [s, `${s} (${stats[s]})`])];
    if (this.filter && !stats[this.filter]) {
      options.push([this.filter, `${this.filter} (0)`]);
    }
    select.replaceChildren(...options.map(([value, text]) => {
      const option = el('option', '', text);
      option.value = value;
      option.selected = value === this.filter;
      return option;
    }));
  }

  private async renderJobs(): Promise<void> {
    const task = this.selected;
    if (!task) {
      return;
    }
    const status = this.filter ? `&status=${encodeURIComponent(this.filter)}` : '';
    const page = await api(`${taskPath(task.projectId, task.taskId)}/jobs?pageSize=${this.shownJobs}${status}`);
    const body = el('div', 'htc-jobs-body');
    const head = el('div', 'htc-jobs-head');
    const label = el('label', 'htc-muted', `${task.name}: `);
    const select = el('select', 'jp-mod-styled htc-status-filter');
    select.id = 'htc-status-filter';
    label.htmlFor = select.id;
    select.setAttribute('aria-label', 'show jobs in status');
    select.onchange = () => {
      this.filter = select.value;
      this.shownJobs = JOB_PAGE;
      this.changed({ tasks: [{ projectId: task.projectId, taskId: task.taskId }], structure: false });
    };
    head.append(label, select);
    const list = el('ul', 'htc-joblist');
    list.setAttribute('aria-label', `jobs of ${task.name}`);
    for (const j of page.items) {
      const status = j.toolkitStatus || j.status;
      const row = el('button', `htc-job st-${status}`);
      row.type = 'button';
      row.dataset.job = j.jobId;
      row.dataset.status = status;
      row.append(chip(status), el('span', 'htc-jobname', ` ${j.jobName}`), el('span', 'htc-muted', ` #${j.jobId}`));
      if (j.statusReason) {
        row.append(el('span', 'htc-reason', ` ${j.statusReason}`));
      }
      row.title = `open job ${j.jobId} in the main area`;
      row.onclick = () => this.options.openJob({ projectId: task.projectId, taskId: task.taskId, jobId: j.jobId });
      const item = el('li');
      item.append(row);
      list.append(item);
    }
    body.append(head, list);
    if (page.next) {
      body.append(button('htc-more', `Show ${JOB_PAGE} more`, () => {
        this.shownJobs += JOB_PAGE;
        this.changed({ tasks: [{ projectId: task.projectId, taskId: task.taskId }], structure: false });
      }));
    }
    this.jobs.node.replaceChildren(body);
    const stats = (await api(`${taskPath(task.projectId, task.taskId)}/summary-statistics`)).toolkitStatuses;
    this.renderFilter(stats);
  }

  // -- clusters ------------------------------------------------------------------------------
  private async renderClusters(): Promise<void> {
    const clusters = (await api('clusters')).items;
    const list = el('div', 'htc-cards');
    if (!clusters.length) {
      list.append(el('div', 'htc-muted', 'None running in this server.'));
    }
    for (const c of clusters) {
      const card = el('div', 'htc-cluster htc-card');
      card.append(el('div', 'htc-cardtitle', `${c.profile} ${c.kind}`),
        el('div', 'htc-muted', `${c.workers} workers, ${c.jobs} jobs${c.adaptive ? ', adapting to the work' : ''}`));
      const actions = el('div', 'htc-actions');
      if (c.dashboard) {
        for (const [plot, label] of [['individual-task-stream', 'Task stream'], ['individual-progress', 'Progress'],
          ['individual-workers-memory', 'Memory'], ['status', 'Status']]) {
          actions.append(button(`htc-pane htc-pane-${plot}`, label,
            () => this.options.openDashboard(c.dashboard, c.profile, plot, label), `open dask's ${label} as a Lab pane`));
        }
        // through this Jupyter server (jupyter-server-proxy): opens with no port forwarding
        const link = el('a', 'htc-dashboard', 'in a tab');
        link.href = c.dashboard;
        link.target = '_blank';
        link.rel = 'noopener';
        actions.append(link);
      }
      const action = (what: string, jobs?: number) => async () => {
        try {
          await post(`clusters/${encodeURIComponent(c.profile)}`, { action: what, jobs, minimum: 0 });
        } catch (e) {
          Notification.error(`HTC: ${what} ${c.profile}: ${(e as Error).message}`, { autoClose: 8000 });
        }
        this.changed({ tasks: [], structure: false });
      };
      if (c.kind === 'pilots') {
        actions.append(button('htc-scale', '+1 pilot', action('scale', c.workers + 1), 'one more pilot (stops adapting)'));
        if (!c.adaptive) {
          actions.append(button('htc-adapt', 'Adapt', action('adapt'),
            'let the pilots follow the work, from none up to the profile\'s maximum'));
        }
      }
      actions.append(button('htc-stop', 'Stop', action('stop'), `stop ${c.profile}: its running jobs end CANCELLED`));
      card.append(actions);
      list.append(card);
    }
    this.clusters.node.replaceChildren(list);
  }

  // -- new cluster ---------------------------------------------------------------------------
  private async buildForm(): Promise<void> {
    let profiles: any;
    try {
      profiles = await api('profiles');
    } catch (e) {
      this.report((e as Error).message);
      return;
    }
    const select = el('select', 'jp-mod-styled htc-profile');
    select.id = 'htc-new-profile';
    for (const p of profiles.items) {
      const option = el('option', '', `${p.name} (${p.backend}: ${p.coresPerNode} cores, ${p.gpusPerNode} GPUs/node)`);
      option.value = p.name;
      option.selected = p.name === profiles.default;
      select.append(option);
    }
    const grid = el('div', 'htc-fields');
    const profileLabel = el('label', '', 'profile');
    profileLabel.htmlFor = select.id;
    grid.append(profileLabel, select);
    const fields: Record<string, HTMLInputElement> = {};
    for (const [name, value, hint] of [['nodes', '1', ''], ['cores', '1', ''], ['gpus', '0', ''],
      ['memory', '', 'MiB'], ['walltime', '', 's']]) {
      const input = el('input', `jp-mod-styled htc-field htc-${name}`);
      input.id = `htc-new-${name}`;
      input.placeholder = hint ? `${name} (${hint})` : name;
      input.value = value;
      input.inputMode = 'numeric';
      const label = el('label', '', name);
      label.htmlFor = input.id;
      fields[name] = input;
      grid.append(label, input);
    }
    const verdict = el('div', 'htc-verdict');
    verdict.setAttribute('role', 'status');
    const start = el('button', 'jp-Button jp-mod-styled jp-mod-accept htc-start', 'Start');
    start.type = 'button';
    const check = async () => {
      const body: Record<string, any> = {};
      for (const [k, input] of Object.entries(fields)) {
        const v = input.value.trim();
        if (v) {
          body[k] = /^[0-9]+$/.test(v) ? Number(v) : v;
        }
      }
      try {
        const r = await post(`profiles/${encodeURIComponent(select.value)}/check`, body);
        verdict.textContent = (r.ok ? '\u2713 ' : '\u2717 ') + r.message;
        verdict.className = r.ok ? 'htc-verdict ok' : 'htc-verdict htc-error';
        start.disabled = !r.ok;
      } catch (e) {
        verdict.textContent = (e as Error).message;
        verdict.className = 'htc-verdict htc-error';
        start.disabled = true;
      }
    };
    select.onchange = () => void check();
    for (const input of Object.values(fields)) {
      input.oninput = () => void check();
    }
    start.onclick = async () => {
      verdict.textContent = `starting ${select.value} ...`;
      try {
        await post(`clusters/${encodeURIComponent(select.value)}`, { action: 'start', jobs: 1 });
      } catch (e) {
        Notification.error(`HTC: start ${select.value}: ${(e as Error).message}`, { autoClose: 8000 });
      }
      await check();
      this.changed({ tasks: [], structure: false });
    };
    this.form.node.append(grid, verdict, start);
    await check();
  }
}
