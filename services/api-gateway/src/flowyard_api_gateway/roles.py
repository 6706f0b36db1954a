"""Who may call what: every gRPC method of the gateway and the least role it needs.

viewer reads; operator also acts on runs (start, stop, retry, skip, replay, approve,
resolve, subscribe to alerts); admin also changes definitions, alert policies, allowed
domains, Slack settings, credentials and tokens. A method missing from this table is
refused, and a test fails, so a new method cannot ship without a decision here.
"""

from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


# Full gRPC method name -> the least role allowed to call it. Health and reflection are
# open to everyone and not listed.
METHOD_ROLES: dict[str, Role] = {
    "/flowyard.v1.WorkflowService/ApplyWorkflow": Role.ADMIN,
    "/flowyard.v1.WorkflowService/GetWorkflow": Role.VIEWER,
    "/flowyard.v1.WorkflowService/ListWorkflows": Role.VIEWER,
    "/flowyard.v1.WorkflowService/SetWorkflowState": Role.ADMIN,
    "/flowyard.v1.WorkflowService/CloneWorkflow": Role.ADMIN,
    "/flowyard.v1.WorkflowService/DryRunWorkflow": Role.ADMIN,
    "/flowyard.v1.WorkflowService/GetWebhookSecret": Role.ADMIN,
    "/flowyard.v1.WorkflowService/RotateWebhookSecret": Role.ADMIN,
    "/flowyard.v1.RunService/StartRun": Role.OPERATOR,
    "/flowyard.v1.RunService/GetRun": Role.VIEWER,
    "/flowyard.v1.RunService/WatchRun": Role.VIEWER,
    "/flowyard.v1.RunService/DecideApproval": Role.OPERATOR,
    "/flowyard.v1.HistoryService/ListRuns": Role.VIEWER,
    "/flowyard.v1.HistoryService/ExportRuns": Role.VIEWER,
    "/flowyard.v1.HistoryService/GetRunGraph": Role.VIEWER,
    "/flowyard.v1.HistoryService/GetLogs": Role.VIEWER,
    "/flowyard.v1.HistoryService/TailLogs": Role.VIEWER,
    "/flowyard.v1.HistoryService/GetAnalytics": Role.VIEWER,
    "/flowyard.v1.HistoryService/GetStorageCounts": Role.VIEWER,
    "/flowyard.v1.HistoryService/PurgeRuns": Role.ADMIN,
}
