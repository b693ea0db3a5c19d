/**
 * Every id the extension shares with JupyterLab, the kernel side and the tests.
 *
 * The comm target names and PROTOCOL are the contract with the kernel
 * (docs/live-budget.md, jupyter_dpmagic/live.py); the panel id and the DOM
 * attributes set by the view are the contract with the browser tests.
 */

/** The plugin id, as JupyterLab lists it. */
export const PLUGIN_ID = 'jupyter-dpmagic:budget-sidebar';

/** The command that opens the sidebar panel. */
export const OPEN_COMMAND = 'dpmagic:open-budget';

/** Label of OPEN_COMMAND in the command palette. */
export const OPEN_COMMAND_LABEL = 'Show privacy budget';

/** Category of OPEN_COMMAND in the command palette. */
export const PALETTE_CATEGORY = 'Differential privacy';

/** Comm target the sidebar registers: the kernel opens it to push a payload. */
export const BUDGET_TARGET = 'jupyter_dpmagic.budget';

/** Comm target the kernel registers: the sidebar opens it to ask for the state. */
export const STATE_TARGET = 'jupyter_dpmagic.state';

/** Id of the sidebar panel's DOM node (and of the widget in the shell). */
export const PANEL_ID = 'jupyter-dpmagic-budget';

/** Title and caption of the sidebar panel. */
export const PANEL_TITLE = 'Privacy budget';

/** The payload protocol this frontend understands. */
export const PROTOCOL = 1;

/** Key under which the dataset names remembered per notebook are kept in the state database. */
export const STATE_DB_KEY = 'jupyter-dpmagic:remembered-datasets';
