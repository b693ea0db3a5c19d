/**
 * Connects the BudgetModel to the notebooks' kernels (docs/live-budget.md).
 *
 * Every open notebook is watched from the moment it opens, not only the
 * active one, so switching notebooks shows a state that is already current
 * and costs no request. A notebook asks its kernel for the state once per
 * attach, restart or reconnection, and once when the kernel says the
 * extension was loaded; everything else is pushed by the kernel.
 */

import { ISessionContext } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';

import { BudgetModel } from './model';
import { BUDGET_TARGET, PROTOCOL, STATE_TARGET } from './tokens';

/** Kernel statuses in which a kernel reads its messages (a busy one answers after its cell). */
const ANSWERING_STATUSES: ReadonlySet<Kernel.Status> = new Set<Kernel.Status>(['idle', 'busy']);

/** Statuses after which the kernel has lost everything it knew. */
const RESTART_STATUSES: ReadonlySet<Kernel.Status> = new Set<Kernel.Status>(['restarting', 'autorestarting']);

function isLoadedNotice(data: unknown): boolean {
  const message = data as { protocol?: unknown; reason?: unknown } | null;
  return typeof message === 'object' && message !== null && message.protocol === PROTOCOL && message.reason === 'loaded';
}

/**
 * Watches one notebook's kernel for the model. Views of the same notebook
 * share its context and session, hence one watcher.
 */
class NotebookWatcher {
  private _kernel: Kernel.IKernelConnection | null = null;
  private _needsState = false;
  private _requestPending = false;
  /** Bumped when the kernel changes or restarts, so that answers to older requests are dropped. */
  private _epoch = 0;
  private _isDisposed = false;

  constructor(
    private readonly _context: NotebookPanel['context'],
    private readonly _connector: BudgetConnector
  ) {
    this._path = _context.path;
    const session = _context.sessionContext;
    session.kernelChanged.connect(this._onKernelChanged, this);
    session.statusChanged.connect(this._onStatusChanged, this);
    session.connectionStatusChanged.connect(this._onConnectionStatusChanged, this);
    _context.pathChanged.connect(this._onPathChanged, this);
    this._attach(session.session?.kernel ?? null);
    // Until the session is up, "no kernel" would be premature: the notebook may be starting one.
    void session.ready.then(() => {
      if (!this._isDisposed && this._kernel === null) {
        this._connector.model.kernelReset(this._path, false);
      }
    });
  }

  private _path: string;

  /** The notebook's path, the model's key for it. */
  get path(): string {
    return this._path;
  }

  get kernel(): Kernel.IKernelConnection | null {
    return this._kernel;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    const session = this._context.sessionContext;
    session.kernelChanged.disconnect(this._onKernelChanged, this);
    session.statusChanged.disconnect(this._onStatusChanged, this);
    session.connectionStatusChanged.disconnect(this._onConnectionStatusChanged, this);
    this._context.pathChanged.disconnect(this._onPathChanged, this);
    this._kernel = null;
  }

  /** A payload pushed by this notebook's kernel. */
  receive(data: unknown): void {
    this._connector.model.applyPayload(this._path, data);
    // The kernel just registered its state target; the request names the
    // datasets shown before a restart so that their budgets come back.
    // A request still pending is queued behind the cell that loaded the
    // extension, so it will be answered: no second one.
    if (isLoadedNotice(data) && !this._requestPending) {
      this._needsState = true;
      this._requestStateIfAnswering();
    }
  }

  private _attach(kernel: Kernel.IKernelConnection | null): void {
    this._kernel = kernel;
    this._epoch += 1;
    this._connector.model.kernelReset(this._path, kernel !== null || !this._context.sessionContext.isReady);
    this._requestPending = false;
    if (kernel === null) {
      this._needsState = false;
      return;
    }
    this._connector.listenTo(kernel);
    this._needsState = true;
    this._requestStateIfAnswering();
  }

  private _onKernelChanged(
    _: ISessionContext,
    change: { newValue: Kernel.IKernelConnection | null }
  ): void {
    this._attach(change.newValue);
  }

  private _onStatusChanged(_: ISessionContext, status: Kernel.Status): void {
    if (this._kernel === null) {
      return;
    }
    if (RESTART_STATUSES.has(status)) {
      this._epoch += 1;
      this._connector.model.kernelReset(this._path, true);
      this._requestPending = false;
      this._needsState = true;
      return;
    }
    if (status === 'dead') {
      this._connector.model.kernelReset(this._path, false);
      this._needsState = false;
      return;
    }
    this._requestStateIfAnswering();
  }

  private _onConnectionStatusChanged(_: ISessionContext, status: Kernel.ConnectionStatus): void {
    if (this._kernel === null) {
      return;
    }
    if (status !== 'connected') {
      // Pushes sent while the socket is down are lost: ask again once it is back.
      this._needsState = true;
      return;
    }
    this._requestStateIfAnswering();
  }

  private _onPathChanged(_: unknown, newPath: string): void {
    const oldPath = this._path;
    this._path = newPath;
    this._connector.model.renameNotebook(oldPath, newPath);
  }

  private _requestStateIfAnswering(): void {
    const kernel = this._kernel;
    if (
      !this._needsState ||
      this._requestPending ||
      kernel === null ||
      kernel.isDisposed ||
      kernel.connectionStatus !== 'connected' ||
      !ANSWERING_STATUSES.has(kernel.status)
    ) {
      return;
    }
    this._needsState = false;
    this._requestPending = true;
    const epoch = this._epoch;
    void this._connector.remembered.then(() => this._requestState(kernel, epoch));
  }

  private _requestState(kernel: Kernel.IKernelConnection, epoch: number): void {
    const current = () => !this._isDisposed && epoch === this._epoch;
    if (!current() || kernel.isDisposed) {
      return;
    }
    const model = this._connector.model;
    const path = this._path;
    const token = model.stateRequested(path);
    let answered = false;
    const comm = kernel.createComm(STATE_TARGET);
    comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => {
      answered = true;
      if (current()) {
        model.applyPayload(this._path, msg.content.data);
      }
    };
    comm.onClose = () => {
      if (!current()) {
        return;
      }
      this._requestPending = false;
      // A kernel without the target closes the comm at once, without a message.
      if (!answered) {
        model.stateUnavailable(this._path, token);
      }
      // Something asked for the state again while this request was out.
      this._requestStateIfAnswering();
    };
    try {
      comm.open({ request: 'state', datasets: model.remembered(path) });
    } catch (error) {
      // The kernel went away between the check and the request; its next status asks again.
      this._requestPending = false;
      this._needsState = true;
      console.warn('jupyter-dpmagic: could not ask the kernel for its privacy budget', error);
    }
  }
}

/** Follows the notebooks and their kernels for a BudgetModel. */
export class BudgetConnector {
  private _watchers = new Map<ISessionContext, NotebookWatcher>();
  private _views = new Map<ISessionContext, Set<NotebookPanel>>();
  private _listenedKernels = new WeakSet<Kernel.IKernelConnection>();
  private _isDisposed = false;

  /**
   * @param model - the model to keep current
   * @param tracker - the notebooks to follow
   * @param remembered - resolves once the remembered dataset names are in the
   *   model: state requests wait for it, so that they can name them
   */
  constructor(
    readonly model: BudgetModel,
    private readonly _tracker: INotebookTracker,
    readonly remembered: Promise<void> = Promise.resolve()
  ) {
    _tracker.forEach(panel => this._watch(panel));
    _tracker.widgetAdded.connect(this._onWidgetAdded, this);
    _tracker.currentChanged.connect(this._onCurrentChanged, this);
    this._follow(_tracker.currentWidget);
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._tracker.widgetAdded.disconnect(this._onWidgetAdded, this);
    this._tracker.currentChanged.disconnect(this._onCurrentChanged, this);
    for (const watcher of this._watchers.values()) {
      watcher.dispose();
    }
    this._watchers.clear();
  }

  /**
   * Registers the budget target on `kernel` once. The registration lives on
   * the connection, so it survives restarts of the same kernel.
   */
  listenTo(kernel: Kernel.IKernelConnection): void {
    if (this._listenedKernels.has(kernel)) {
      return;
    }
    this._listenedKernels.add(kernel);
    kernel.registerCommTarget(BUDGET_TARGET, (_comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg) => {
      // The kernel closes this comm itself right after opening it.
      const data = msg.content.data;
      for (const watcher of this._watchers.values()) {
        if (watcher.kernel === kernel) {
          watcher.receive(data);
        }
      }
    });
  }

  private _onWidgetAdded(_: INotebookTracker, panel: NotebookPanel): void {
    this._watch(panel);
  }

  private _onCurrentChanged(_: INotebookTracker, panel: NotebookPanel | null): void {
    this._follow(panel);
  }

  private _follow(panel: NotebookPanel | null): void {
    if (panel) {
      // currentChanged may come before widgetAdded.
      this._watch(panel);
    }
    const watcher = panel ? this._watchers.get(panel.sessionContext) : undefined;
    this.model.setActive(watcher ? watcher.path : null);
  }

  private _watch(panel: NotebookPanel): void {
    if (this._isDisposed) {
      return;
    }
    const session = panel.sessionContext;
    const views = this._views.get(session) ?? new Set<NotebookPanel>();
    if (views.has(panel)) {
      return;
    }
    views.add(panel);
    this._views.set(session, views);
    if (!this._watchers.has(session)) {
      this._watchers.set(session, new NotebookWatcher(panel.context, this));
    }
    panel.disposed.connect(() => this._unwatch(panel, session));
  }

  private _unwatch(panel: NotebookPanel, session: ISessionContext): void {
    const views = this._views.get(session);
    views?.delete(panel);
    const watcher = this._watchers.get(session);
    if (watcher && !views?.size) {
      this._views.delete(session);
      this._watchers.delete(session);
      watcher.dispose();
      this.model.forgetNotebook(watcher.path);
    }
    if (this._tracker.currentWidget === null) {
      this.model.setActive(null);
    }
  }
}
