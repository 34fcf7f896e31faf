// htc_notebook in JupyterLab: the HTC sidebar (sidebar.ts), a main-area panel per job
// (jobpanel.ts) and dask's dashboard plots as Lab panes, all fed by the server's change feed
// (api.ts): nothing is polled while nothing changes.
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { IFrame, MainAreaWidget } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';

import { ChangeFeed } from './api';
import { IJobRef, jobPanel } from './jobpanel';
import { HTCSidebar } from './sidebar';

const htcIcon = new LabIcon({
  name: 'htc-notebook:htc',
  svgstr: '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<rect x="3" y="4" width="18" height="4" rx="1"/><rect x="3" y="10" width="12" height="4" rx="1"/>' +
    '<rect x="3" y="16" width="7" height="4" rx="1"/></g></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'htc-notebook:sidebar',
  description: 'HTC projects, tasks and jobs in the left sidebar; jobs and dask dashboards as Lab panes',
  autoStart: true,
  requires: [ILabShell],
  activate: (app: JupyterFrontEnd, shell: ILabShell) => {
    const feed = new ChangeFeed();
    const openJob = (job: IJobRef): void => {
      const id = `htc-job-${job.taskId}-${job.jobId}`;
      const panels = [...shell.widgets('main')].filter(w => w.id.startsWith('htc-job-'));
      if (!panels.some(w => w.id === id)) {
        // the first beside what is open, the others as tabs with it
        const last = panels[panels.length - 1];
        shell.add(jobPanel(job, feed, openJob), 'main', last ? { ref: last.id, mode: 'tab-after' } : { mode: 'split-right' });
      }
      shell.activateById(id);
    };
    const openDashboard = (url: string, profile: string, plot: string, label: string): void => {
      const id = `htc-dask-${profile}-${plot}`;
      if (![...shell.widgets('main')].some(w => w.id === id)) {
        const frame = new IFrame({ sandbox: ['allow-scripts', 'allow-same-origin'] });
        frame.url = url.replace(/\/status$/, `/${plot}`);
        const pane = new MainAreaWidget({ content: frame });
        pane.id = id;
        pane.addClass('htc-dask-pane');
        pane.title.label = `${profile}: ${label}`;
        pane.title.closable = true;
        shell.add(pane, 'main', { mode: 'split-bottom' });
      }
      shell.activateById(id);
    };
    const sidebar = new HTCSidebar({ feed, openJob, openDashboard });
    sidebar.title.icon = htcIcon;
    shell.add(sidebar, 'left', { rank: 900 });
  }
};

export default plugin;
