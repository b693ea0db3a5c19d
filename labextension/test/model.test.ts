import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { BudgetModel, IRememberedChange } from '../src/model';
import { captureWarnings, dataset, payload } from './fixtures';

const A = 'work/a.ipynb';
const B = 'work/b.ipynb';

/** A model following notebook A, whose kernel has just been attached. */
function modelWithKernel(): BudgetModel {
  const model = new BudgetModel();
  model.setActive(A);
  model.kernelReset(A, true);
  return model;
}

/** sent_at of the payload shown (a function, so that assertions do not narrow it for later reads). */
function shownSentAt(model: BudgetModel): number | undefined {
  return model.view.payload?.sent_at;
}

function countChanges(model: BudgetModel): { count: number } {
  const counter = { count: 0 };
  model.changed.connect(() => {
    counter.count += 1;
  });
  return counter;
}

describe('BudgetModel view states', () => {
  it('shows no-notebook until a notebook is active', () => {
    const model = new BudgetModel();
    assert.equal(model.view.state, 'no-notebook');
    assert.equal(model.view.notebook, '');
    model.setActive(A);
    assert.equal(model.view.state, 'no-kernel');
    assert.equal(model.view.notebook, A);
    model.setActive(null);
    assert.equal(model.view.state, 'no-notebook');
  });

  it('waits for the kernel once one is attached', () => {
    const model = modelWithKernel();
    assert.equal(model.view.state, 'waiting');
    model.kernelReset(A, false);
    assert.equal(model.view.state, 'no-kernel');
  });

  it('shows a payload with its datasets', () => {
    const model = modelWithKernel();
    assert.equal(model.applyPayload(A, payload()), true);
    const view = model.view;
    assert.equal(view.state, 'ready');
    assert.equal(view.payload?.sent_at, 1764300000123.4);
    assert.equal(view.datasets.length, 1);
    assert.equal(view.datasets[0].budget.name, 'visits');
    assert.equal(view.datasets[0].level, 'ok');
    assert.ok(Math.abs(view.datasets[0].remaining - 0.7) < 1e-12);
  });

  it('shows empty when the kernel protects nothing', () => {
    const model = modelWithKernel();
    model.applyPayload(A, payload({ reason: 'state' }, []));
    assert.equal(model.view.state, 'empty');
    assert.equal(model.view.datasets.length, 0);
  });

  it('updates with a newer payload', () => {
    const model = modelWithKernel();
    model.applyPayload(A, payload());
    model.applyPayload(A, payload({ sent_at: 1764300000200 }, [dataset({ epsilon_spent: 0.85 })]));
    assert.equal(model.view.datasets[0].level, 'warning');
    assert.equal(model.view.datasets[0].budget.epsilon_spent, 0.85);
  });

  it('marks warning at exactly 80% and exhausted at 100%', () => {
    const model = modelWithKernel();
    model.applyPayload(
      A,
      payload({}, [
        dataset({ name: 'low', epsilon_spent: 0.79 }),
        dataset({ name: 'eighty', epsilon_spent: 0.8 }),
        dataset({ name: 'all', epsilon_spent: 1.0 })
      ])
    );
    const levels = Object.fromEntries(model.view.datasets.map(d => [d.budget.name, d.level]));
    assert.deepEqual(levels, { low: 'ok', eighty: 'warning', all: 'exhausted' });
  });

  it('uses epsilon_spent, not epsilon_guarantee, for zCDP budgets', () => {
    const model = modelWithKernel();
    model.applyPayload(
      A,
      payload({}, [dataset({ mode: 'zcdp', epsilon_total: 1.0, epsilon_spent: 0.5, epsilon_guarantee: 0.95 })])
    );
    const [shown] = model.view.datasets;
    assert.equal(shown.level, 'ok');
    assert.equal(shown.fractionSpent, 0.5);
    assert.equal(shown.remaining, 0.5);
    assert.equal(shown.budget.epsilon_guarantee, 0.95);
  });
});

describe('BudgetModel ordering and validation', () => {
  it('ignores a payload older than the one shown', () => {
    const model = modelWithKernel();
    model.applyPayload(A, payload({ sent_at: 2000 }, [dataset({ epsilon_spent: 0.5 })]));
    const changes = countChanges(model);
    assert.equal(model.applyPayload(A, payload({ sent_at: 1000 }, [dataset({ epsilon_spent: 0.1 })])), false);
    assert.equal(shownSentAt(model), 2000);
    assert.equal(model.view.datasets[0].budget.epsilon_spent, 0.5);
    assert.equal(changes.count, 0);
  });

  it('accepts any payload of a new or restarted kernel', () => {
    const model = modelWithKernel();
    model.applyPayload(A, payload({ sent_at: 2000 }));
    model.kernelReset(A, true);
    assert.equal(model.view.state, 'waiting');
    assert.equal(shownSentAt(model), undefined);
    // Another kernel has another clock.
    assert.equal(model.applyPayload(A, payload({ sent_at: 1000 })), true);
    assert.equal(shownSentAt(model), 1000);
  });

  it('ignores malformed payloads and keeps what it shows', () => {
    const model = modelWithKernel();
    model.applyPayload(A, payload({ sent_at: 1000 }));
    const changes = countChanges(model);
    const warnings = captureWarnings(() => {
      assert.equal(model.applyPayload(A, payload({ protocol: 2, sent_at: 3000 }, [])), false);
      assert.equal(model.applyPayload(A, payload({ sent_at: undefined })), false);
      assert.equal(model.applyPayload(A, 'garbage'), false);
    });
    assert.equal(warnings.length, 3);
    assert.equal(model.view.state, 'ready');
    assert.equal(shownSentAt(model), 1000);
    assert.equal(changes.count, 0);
  });

  it('shows the valid datasets of a payload with a malformed one', () => {
    const model = modelWithKernel();
    captureWarnings(() => {
      model.applyPayload(A, payload({}, [dataset({ name: 'broken', epsilon_total: null }), dataset()]));
    });
    assert.deepEqual(
      model.view.datasets.map(d => d.budget.name),
      ['visits']
    );
  });
});

describe('BudgetModel notebooks', () => {
  it('keeps each notebook to its own budget', () => {
    const model = new BudgetModel();
    model.kernelReset(A, true);
    model.kernelReset(B, true);
    model.applyPayload(A, payload({ sent_at: 5000 }, [dataset({ name: 'visits' })]));
    model.applyPayload(B, payload({ sent_at: 1000 }, [dataset({ name: 'sales', epsilon_spent: 0.9 })]));

    model.setActive(A);
    assert.equal(model.view.notebook, A);
    assert.deepEqual(
      model.view.datasets.map(d => d.budget.name),
      ['visits']
    );
    model.setActive(B);
    assert.equal(model.view.notebook, B);
    // B's older sent_at is not compared with A's.
    assert.deepEqual(
      model.view.datasets.map(d => [d.budget.name, d.level]),
      [['sales', 'warning']]
    );
  });

  it('signals changes of the notebook shown only', () => {
    const model = modelWithKernel();
    model.kernelReset(B, true);
    const changes = countChanges(model);
    model.applyPayload(B, payload());
    assert.equal(changes.count, 0);
    model.applyPayload(A, payload());
    assert.equal(changes.count, 1);
    model.setActive(B);
    assert.equal(changes.count, 2);
    model.setActive(B);
    assert.equal(changes.count, 2);
  });

  it('follows a renamed notebook', () => {
    const model = modelWithKernel();
    model.applyPayload(A, payload());
    model.renameNotebook(A, B);
    assert.equal(model.active, B);
    assert.equal(model.view.notebook, B);
    assert.equal(model.view.state, 'ready');
    assert.deepEqual(model.remembered(B), ['visits']);
    assert.deepEqual(model.remembered(A), []);
  });

  it('forgets a closed notebook but not its dataset names', () => {
    const model = modelWithKernel();
    model.applyPayload(A, payload());
    model.forgetNotebook(A);
    assert.equal(model.view.state, 'no-kernel');
    assert.deepEqual(model.remembered(A), ['visits']);
  });
});

describe('BudgetModel state requests', () => {
  it('says not-loaded when the state request closes unanswered, then shows the loaded state', () => {
    const model = modelWithKernel();
    const token = model.stateRequested(A);
    assert.equal(model.view.state, 'waiting');
    model.stateUnavailable(A, token);
    assert.equal(model.view.state, 'not-loaded');

    // %load_ext pushes the state at once: from not-loaded to shown.
    model.applyPayload(A, payload({ reason: 'loaded' }, []));
    assert.equal(model.view.state, 'empty');
    model.applyPayload(A, payload({ reason: 'release', sent_at: 1764300000200 }));
    assert.equal(model.view.state, 'ready');
  });

  it('waits again when asked after not-loaded', () => {
    const model = modelWithKernel();
    model.stateUnavailable(A, model.stateRequested(A));
    model.stateRequested(A);
    assert.equal(model.view.state, 'waiting');
  });

  it('keeps showing the budget while a new state request is out', () => {
    const model = modelWithKernel();
    model.applyPayload(A, payload());
    model.stateRequested(A);
    assert.equal(model.view.state, 'ready');
  });

  it('does not let a late unanswered request hide a newer payload', () => {
    const model = modelWithKernel();
    const token = model.stateRequested(A);
    model.applyPayload(A, payload({ reason: 'loaded' }));
    model.stateUnavailable(A, token);
    assert.equal(model.view.state, 'ready');
  });
});

describe('BudgetModel remembered dataset names', () => {
  let model: BudgetModel;
  let changes: IRememberedChange[];

  beforeEach(() => {
    model = modelWithKernel();
    changes = [];
    model.rememberedChanged.connect((_, change) => changes.push(change));
  });

  it('remembers the names of the datasets shown', () => {
    model.applyPayload(A, payload({}, [dataset({ name: 'visits' }), dataset({ name: 'sales' })]));
    assert.deepEqual(model.remembered(A), ['visits', 'sales']);
    assert.deepEqual(changes, [{ notebook: A, names: ['visits', 'sales'] }]);
    assert.deepEqual(model.remembered(B), []);
  });

  it('keeps them across a restart, when the new kernel protects nothing yet', () => {
    model.applyPayload(A, payload({ sent_at: 1000 }, [dataset({ name: 'visits' })]));
    model.kernelReset(A, true);
    model.applyPayload(A, payload({ reason: 'loaded', sent_at: 2000 }, []));
    assert.deepEqual(model.remembered(A), ['visits']);
    model.applyPayload(A, payload({ reason: 'release', sent_at: 3000 }, [dataset({ name: 'sales' })]));
    assert.deepEqual(model.remembered(A), ['visits', 'sales']);
  });

  it('drops names a state reply does not know', () => {
    model.applyPayload(A, payload({ sent_at: 1000 }, [dataset({ name: 'visits' }), dataset({ name: 'gone' })]));
    model.applyPayload(A, payload({ reason: 'state', sent_at: 2000 }, [dataset({ name: 'visits', protected: false })]));
    assert.deepEqual(model.remembered(A), ['visits']);
  });

  it('restores stored names without storing them again', () => {
    model.restoreRemembered(B, ['visits', 7, '', 'sales']);
    assert.deepEqual(model.remembered(B), ['visits', 'sales']);
    assert.deepEqual(changes, []);
  });

  it('does not signal when the names stay the same', () => {
    model.applyPayload(A, payload({ sent_at: 1000 }));
    model.applyPayload(A, payload({ sent_at: 2000 }));
    assert.equal(changes.length, 1);
  });

  it('returns a copy', () => {
    model.applyPayload(A, payload());
    model.remembered(A).push('intruder');
    assert.deepEqual(model.remembered(A), ['visits']);
  });
});
