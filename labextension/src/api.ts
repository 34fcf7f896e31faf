// The HTC REST API of this Jupyter server, and its change feed (server/changes.py): what changed
// is pushed over one websocket; the views read what they show through the REST API.
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

export const API = 'htc/api/v1/htc';

/** A JSON call to the HTC API; an error response throws its `message`. */
export async function api(path: string, init: RequestInit = {}): Promise<any> {
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

export function post(path: string, body: unknown): Promise<any> {
  return api(path, { method: 'POST', body: JSON.stringify(body) });
}

export function taskPath(projectId: string, taskId: string): string {
  return `projects/${encodeURIComponent(projectId)}/tasks/${encodeURIComponent(taskId)}`;
}

/** What the feed says changed: jobs of these tasks; `structure`: projects or tasks made or archived. */
export interface IChange {
  tasks: { projectId: string; taskId: string }[];
  structure: boolean;
}

export type Listener = (change: IChange | null) => void; // null: (re)connected, read everything

/** The server's change feed, shared by the sidebar and the job panels: one websocket, reopened
 * (1 s, doubling to 30 s) when it drops; on each (re)open every listener reads everything again. */
export class ChangeFeed {
  private socket: WebSocket | null = null;
  private listeners = new Set<Listener>();
  private retry = 1000;
  private timer = 0;

  listen(listener: Listener): () => void {
    this.listeners.add(listener);
    if (!this.socket) {
      this.connect();
    }
    return () => this.listeners.delete(listener);
  }

  get connected(): boolean {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  private connect(): void {
    window.clearTimeout(this.timer);
    const settings = ServerConnection.makeSettings();
    let url = URLExt.join(settings.wsUrl, API, 'changes');
    if (settings.appendToken && settings.token) {
      url += `?token=${encodeURIComponent(settings.token)}`;
    }
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onmessage = event => {
      const message = JSON.parse(event.data);
      this.retry = 1000;
      this.tell(message.hello ? null : (message as IChange));
    };
    socket.onclose = () => {
      if (this.socket !== socket) {
        return;
      }
      this.socket = null;
      this.timer = window.setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 30000);
    };
  }

  private tell(change: IChange | null): void {
    for (const listener of [...this.listeners]) {
      listener(change);
    }
  }
}

/** A DOM element with a class and text. */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls = '', text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) {
    node.className = cls;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

/** A status chip: its colour from Lab's theme (index.css), its count if given. */
export function chip(status: string, count?: number): HTMLSpanElement {
  const node = el('span', `htc-chip st-${status}`, count === undefined ? status : `${status} ${count}`);
  node.dataset.state = status;
  return node;
}

/** A Lab-styled button (its label also its accessible name). */
export function button(cls: string, label: string, onclick: () => void, title = ''): HTMLButtonElement {
  const node = el('button', `jp-Button jp-mod-styled jp-mod-reject htc-button ${cls}`, label);
  node.type = 'button';
  node.title = title || label;
  node.onclick = onclick;
  return node;
}

/** A toolbar button: a plain <button> in Lab's toolbar style with its icon and label (Lab's own
 * ToolbarButton puts aria-pressed on an element without a button role: axe-core's critical
 * aria-allowed-attr). */
export function toolbarButton(cls: string, label: string, icon: LabIcon, onclick: () => void, title: string): Widget {
  const node = el('button', `jp-ToolbarButtonComponent jp-Button jp-mod-minimal htc-toolbar-button ${cls}`);
  node.type = 'button';
  node.title = title;
  node.append(icon.element({ tag: 'span', className: 'htc-toolbar-icon' }), el('span', 'htc-toolbar-label', label));
  node.onclick = onclick;
  return new Widget({ node });
}
