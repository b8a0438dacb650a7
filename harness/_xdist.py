"""xdist scheduling that keeps every case of one model on one worker.

pytest 9.2 with pytest-xdist 3.8 silently stops honouring ``--dist loadgroup`` (xdist issue
#1386), so the harness brings its own scheduler through the public
``pytest_xdist_make_scheduler`` hook: xdist's scope scheduler with the scope of a harness case
being its model.  Other tests are each their own scope (plain load balancing).
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling


class ModelScheduling(LoadScopeScheduling):
    def __init__(self, config, log, harness_session):
        super().__init__(config, log)
        self._harness = harness_session

    def _split_scope(self, nodeid: str) -> str:
        try:
            spec = self._harness.case_of_nodeid(nodeid)
        except Exception:
            spec = None
        if spec is None:
            return nodeid
        return f"harness-model::{spec.model}"
