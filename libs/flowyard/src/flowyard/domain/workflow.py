"""A stored workflow: one version of a definition and the workflow's lifecycle state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from flowyard.domain.definition import WorkflowDefinition


class WorkflowState(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"


@dataclass(frozen=True)
class StoredWorkflow:
    workflow_id: str
    version: int
    state: WorkflowState
    definition: WorkflowDefinition
    created_at: datetime
    updated_at: datetime

    @property
    def name(self) -> str:
        return self.definition.name
