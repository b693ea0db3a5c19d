/**
 * Keeps the dataset names the sidebar showed per notebook in the state
 * database, so that after a page reload and a kernel restart the state
 * request can still name them (their budgets then come back from the ledger
 * before the data is protected again).
 */

import { IStateDB } from '@jupyterlab/statedb';

import { BudgetModel, IRememberedChange } from './model';
import { STATE_DB_KEY } from './tokens';

/** Names by notebook path, as stored. */
type StoredNames = { [path: string]: string[] };

/**
 * Loads the stored names into `model` and stores every change. Resolves once
 * they are loaded (at once, and without storing, when there is no state
 * database: the model then remembers for this page only).
 */
export async function rememberDatasets(model: BudgetModel, state: IStateDB | null): Promise<void> {
  if (state === null) {
    return;
  }
  let stored: StoredNames = {};
  try {
    const value = await state.fetch(STATE_DB_KEY);
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      stored = { ...(value as StoredNames) };
    }
  } catch (error) {
    console.warn('jupyter-dpmagic: could not read the remembered dataset names', error);
  }
  for (const [path, names] of Object.entries(stored)) {
    if (Array.isArray(names)) {
      model.restoreRemembered(path, names);
    }
  }
  model.rememberedChanged.connect((_: BudgetModel, change: IRememberedChange) => {
    if (change.names.length) {
      stored[change.notebook] = change.names;
    } else {
      delete stored[change.notebook];
    }
    state.save(STATE_DB_KEY, stored).catch(error => {
      console.warn('jupyter-dpmagic: could not store the remembered dataset names', error);
    });
  });
}
