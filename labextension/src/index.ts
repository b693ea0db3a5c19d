/**
 * The "Privacy budget" sidebar: shows, live, the differential privacy budget
 * of the active notebook's kernel (see docs/live-budget.md).
 */

import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStateDB } from '@jupyterlab/statedb';
import { LabIcon } from '@jupyterlab/ui-components';

import budgetSvg from '../style/icons/budget.svg';
import { BudgetConnector } from './connector';
import { BudgetModel } from './model';
import { rememberDatasets } from './remembered';
import { OPEN_COMMAND, OPEN_COMMAND_LABEL, PALETTE_CATEGORY, PANEL_TITLE, PLUGIN_ID } from './tokens';
import { BudgetPanel } from './view';

/** The sidebar icon: a shield with a gauge. */
export const budgetIcon = new LabIcon({ name: 'jupyter-dpmagic:budget', svgstr: budgetSvg });

/** Low in the right sidebar, under JupyterLab's own panels. */
const SIDEBAR_RANK = 1000;

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Shows the privacy budget of the active notebook in the right sidebar, live.',
  autoStart: true,
  requires: [INotebookTracker, ILabShell],
  optional: [ICommandPalette, IStateDB],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    labShell: ILabShell,
    palette: ICommandPalette | null,
    state: IStateDB | null
  ) => {
    const model = new BudgetModel();
    const panel = new BudgetPanel(model);
    panel.title.icon = budgetIcon;
    panel.title.caption = PANEL_TITLE;
    labShell.add(panel, 'right', { rank: SIDEBAR_RANK });

    // Requests wait for the remembered names, so that they can name them.
    const remembered = rememberDatasets(model, state);
    new BudgetConnector(model, tracker, remembered);

    app.commands.addCommand(OPEN_COMMAND, {
      label: OPEN_COMMAND_LABEL,
      caption: 'Show the privacy budget of the active notebook in the right sidebar',
      icon: budgetIcon,
      execute: () => {
        labShell.activateById(panel.id);
      }
    });
    palette?.addItem({ command: OPEN_COMMAND, category: PALETTE_CATEGORY });
  }
};

export default plugin;
