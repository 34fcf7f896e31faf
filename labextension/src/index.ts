// The HTC sidebar: projects -> tasks -> jobs from htc_notebook's REST API (the ledger is the
// truth), live counts by status, a job's log, cancel and retry. Polls every 2 s while visible.
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

const API = 'htc/api/v1/htc';

async function api(path: string, init: RequestInit = {}): Promise<any> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, API, path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error((body && body.message) || response.statusText);
  }
  return body;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls = '', text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) {
    node.className = cls;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

class HTCSidebar extends Widget {
  private selectedTask: { project: string; task: string } | null = null;
  private selectedJob: string | null = null;
  private timer = 0;
  private tree = el('div', 'htc-tree');
  private jobs = el('div', 'htc-jobs');
  private detail = el('div', 'htc-detail');
  private status = el('div', 'htc-error');
  private clusters = el('div', 'htc-clusters');
  private form = el('div', 'htc-form');

  constructor() {
    super();
    this.id = 'htc-sidebar';
    this.addClass('htc-sidebar');
    this.title.label = 'HTC';
    this.title.caption = 'HTC projects, tasks and jobs';
    this.node.append(el('h3', '', 'Projects'), this.tree, this.jobs, this.detail,
      el('h3', '', 'Clusters'), this.clusters, el('h3', '', 'New cluster'), this.form, this.status);
    void this.buildForm();
  }

  // A form generated from the site's profiles; each change is checked by the server.
  private async buildForm(): Promise<void> {
    const profiles = await api('profiles');
    const select = el('select', 'htc-profile');
    for (const p of profiles.items) {
      const option = el('option', '', `${p.name} (${p.backend}: ${p.coresPerNode} cores, ${p.gpusPerNode} GPUs/node)`);
      option.value = p.name;
      option.selected = p.name === profiles.default;
      select.append(option);
    }
    const fields: Record<string, HTMLInputElement> = {};
    const inputs = el('div', 'htc-fields');
    for (const [name, value] of [['nodes', '1'], ['cores', '1'], ['gpus', '0'], ['memory', ''], ['walltime', '']]) {
      const input = el('input', `htc-field htc-${name}`);
      input.placeholder = name;
      input.value = value;
      input.title = name;
      fields[name] = input;
      inputs.append(el('label', '', name), input);
    }
    const verdict = el('div', 'htc-verdict');
    const start = el('button', 'htc-start', 'Start');
    const check = async () => {
      const body: Record<string, any> = {};
      for (const [k, input] of Object.entries(fields)) {
        if (input.value.trim()) {
          body[k] = /^[0-9]+$/.test(input.value.trim()) ? Number(input.value.trim()) : input.value.trim();
        }
      }
      try {
        const r = await api(`profiles/${encodeURIComponent(select.value)}/check`, { method: 'POST', body: JSON.stringify(body) });
        verdict.textContent = (r.ok ? '\u2713 ' : '\u2717 ') + r.message;
        verdict.className = r.ok ? 'htc-verdict ok' : 'htc-verdict htc-error';
        start.disabled = !r.ok;
      } catch (e) {
        verdict.textContent = (e as Error).message;
        start.disabled = true;
      }
    };
    select.onchange = () => void check();
    for (const input of Object.values(fields)) {
      input.oninput = () => void check();
    }
    start.onclick = async () => {
      verdict.textContent = `starting ${select.value} ...`;
      await api(`clusters/${encodeURIComponent(select.value)}`, { method: 'POST', body: JSON.stringify({ action: 'start', jobs: 1 }) });
      void this.refresh();
    };
    this.form.append(select, inputs, verdict, start);
    await check();
  }

  private async renderClusters(): Promise<void> {
    const list = el('div', 'htc-clusters');
    const clusters = (await api('clusters')).items;
    if (!clusters.length) {
      list.append(el('div', '', 'none running in this server'));
    }
    for (const c of clusters) {
      const row = el('div', 'htc-cluster', `${c.profile} ${c.kind}: ${c.workers} workers, ${c.jobs} jobs `);
      if (c.dashboard) {
        // through this Jupyter server (jupyter-server-proxy): opens with no port forwarding
        const link = el('a', 'htc-dashboard', 'dashboard');
        link.href = c.dashboard;
        link.target = '_blank';
        link.rel = 'noopener';
        row.append(link, ' ');
      }
      if (c.kind === 'pilots') {
        const scale = el('button', 'htc-scale', '+1 pilot');
        scale.onclick = async () => {
          await api(`clusters/${encodeURIComponent(c.profile)}`, { method: 'POST', body: JSON.stringify({ action: 'scale', jobs: c.workers + 1 }) });
          void this.refresh();
        };
        row.append(scale);
      }
      const stop = el('button', 'htc-stop', 'Stop');
      stop.onclick = async () => {
        await api(`clusters/${encodeURIComponent(c.profile)}`, { method: 'POST', body: JSON.stringify({ action: 'stop' }) });
        void this.refresh();
      };
      row.append(stop);
      list.append(row);
    }
    this.clusters.replaceWith(list);
    this.clusters = list;
  }

  protected onAfterShow(): void {
    void this.refresh();
    this.timer = window.setInterval(() => void this.refresh(), 2000);
  }

  protected onBeforeHide(): void {
    window.clearInterval(this.timer);
  }

  async refresh(): Promise<void> {
    try {
      const projects = (await api('projects')).items;
      const tree = el('div', 'htc-tree');
      for (const p of projects) {
        tree.append(el('div', 'htc-project', p.projectName));
        if (p.containerRegistry) {
          // the project's registry: where to push, and the images jobs may name (imageName)
          let images: string[] = [];
          try {
            images = (await api(`projects/${encodeURIComponent(p.projectId)}/container-registry/images`)).images;
          } catch {
            // the registry went down between the two calls: show the prefix only
          }
          const registry = el('div', 'htc-registry', `images at ${p.containerRegistry}: `);
          registry.append(el('span', 'htc-images', images.length ? images.join(', ') : '(none pushed)'));
          tree.append(registry);
        }
        const tasks = (await api(`projects/${encodeURIComponent(p.projectId)}/tasks`)).items;
        for (const t of tasks) {
          const stats = (await api(`projects/${encodeURIComponent(p.projectId)}/tasks/${t.taskId}/summary-statistics`)).jobStatuses;
          const row = el('div', 'htc-task', `${t.taskName} (${t.lifecycleStatus.toLowerCase()})`);
          row.dataset.task = t.taskId;
          for (const [s, n] of Object.entries(stats)) {
            if (n) {
              row.append(el('span', `htc-count st-${s}`, `${s} ${n}`));
            }
          }
          if (this.selectedTask && this.selectedTask.task === t.taskId) {
            row.classList.add('sel');
          }
          row.onclick = () => {
            this.selectedTask = { project: p.projectId, task: t.taskId };
            this.selectedJob = null;
            void this.refresh();
          };
          tree.append(row);
        }
      }
      this.tree.replaceWith(tree);
      this.tree = tree;
      await this.renderJobs();
      await this.renderClusters();
      this.status.textContent = '';
    } catch (e) {
      this.status.textContent = `HTC API: ${(e as Error).message}`;
    }
  }

  private taskPath(): string {
    const s = this.selectedTask!;
    return `projects/${encodeURIComponent(s.project)}/tasks/${s.task}`;
  }

  private async renderJobs(): Promise<void> {
    const jobs = el('div', 'htc-jobs');
    if (this.selectedTask) {
      jobs.append(el('h3', '', 'Jobs'));
      const page = await api(`${this.taskPath()}/jobs?pageSize=200`);
      for (const j of page.items) {
        const row = el('div', `htc-job st-${j.status}`, `${j.jobUUID} ${j.jobName} ${j.status}` +
          (j.statusReason ? ` - ${j.statusReason}` : ''));
        row.dataset.job = j.jobUUID;
        if (j.jobUUID === this.selectedJob) {
          row.classList.add('sel');
        }
        row.onclick = () => {
          this.selectedJob = j.jobUUID;
          void this.refresh();
        };
        jobs.append(row);
      }
      if (page.next) {
        jobs.append(el('div', '', '… more jobs than shown'));
      }
    }
    this.jobs.replaceWith(jobs);
    this.jobs = jobs;
    await this.renderDetail();
  }

  private async renderDetail(): Promise<void> {
    const detail = el('div', 'htc-detail');
    if (this.selectedTask && this.selectedJob) {
      const job = this.selectedJob;
      const base = `${this.taskPath()}/jobs`;
      const cancel = el('button', 'htc-cancel', 'Cancel');
      cancel.onclick = async () => {
        await api(`${base}/cancel`, { method: 'POST', body: JSON.stringify({ jobIds: [job] }) });
        void this.refresh();
      };
      const retry = el('button', 'htc-retry', 'Retry');
      retry.onclick = async () => {
        await api(`${base}/retry`, { method: 'POST', body: JSON.stringify({ jobIds: [job] }) });
        void this.refresh();
      };
      const view = await api(`${base}/${job}`);
      const links = el('div', 'htc-links');
      if (view.dependsOn?.length) {
        links.append(el('div', '', `depends on jobs ${view.dependsOn.join(', ')}`));
      }
      if (view.dependents?.length) {
        links.append(el('div', '', `jobs depending on it: ${view.dependents.join(', ')}`));
      }
      const out = await api(`${base}/${job}/logs?pageSize=200`);
      const err = await api(`${base}/${job}/logs?pageSize=200&stream=err`);
      // the last 200 lines, newest first on the wire: shown in reading order
      const lines = (page: any) => page.items.slice().reverse().map((l: any) => l.message).join('\n');
      const log = el('div', 'htc-log', lines(out) + (err.items.length ? '\n--- stderr ---\n' + lines(err) : ''));
      detail.append(el('h3', '', `Job ${job}`), links, cancel, retry, log);
    }
    this.detail.replaceWith(detail);
    this.detail = detail;
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'htc-notebook:sidebar',
  description: 'HTC projects, tasks and jobs in the left sidebar',
  autoStart: true,
  requires: [ILabShell],
  activate: (app: JupyterFrontEnd, shell: ILabShell) => {
    const sidebar = new HTCSidebar();
    shell.add(sidebar, 'left', { rank: 900 });
  }
};

export default plugin;
