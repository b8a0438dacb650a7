"""xdist scheduling that keeps every case of one model on one worker.

pytest 9.2 with pytest-xdist 3.8 silently stops honouring ``--dist loadgroup`` (xdist issue
#1386), so the harness brings its own scheduler through the public
``pytest_xdist_make_scheduler`` hook: xdist's scope scheduler with the scope of a harness case
being its model.  Other tests are each their own scope (plain load balancing).

With fewer models than workers (one fine-tuned checkpoint on an 8-GPU node), a model's cases
are scoped per (model, dataset) instead, so that every worker gets work; the model then loads
once on each worker that runs some of its datasets.  :func:`spread_by_dataset` is the rule, and
the workers apply the same rule to plan their feature stage.  Under the same rule every worker
also helps extract the large splits of the whole selection before its first case, the scopes
notwithstanding (the fixtures' help pass, chunk claims in :mod:`harness.share`), so that a
single (model, dataset) -- one checkpoint on ImageNet -- still keeps every worker busy.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling


def spread_by_dataset(n_models: int, n_workers: int) -> bool:
    """Scope a model's cases per dataset when there are fewer models than workers."""
    return 0 < n_models < n_workers


class ModelScheduling(LoadScopeScheduling):
    def __init__(self, config, log, harness_session):
        super().__init__(config, log)
        self._harness = harness_session
        self._spread: bool | None = None

    def _spec(self, nodeid: str):
        try:
            return self._harness.case_of_nodeid(nodeid)
        except Exception:  # a bad suite is reported by collection, not here
            return None

    def _split_scope(self, nodeid: str) -> str:
        spec = self._spec(nodeid)
        if spec is None:
            return nodeid
        if self._spread is None:
            models = {s.model for s in map(self._spec, self.collection or []) if s is not None}
            self._spread = spread_by_dataset(len(models), self.numnodes)
        scope = f"harness-model::{spec.model}"
        return f"{scope}::{spec.dataset}" if self._spread else scope
