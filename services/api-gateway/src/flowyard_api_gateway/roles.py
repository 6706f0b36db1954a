"""Who may call what: every gRPC method of the gateway and the least role it needs.

viewer reads; operator also acts on runs (start, stop, retry, skip, replay, approve,
resolve, subscribe to alerts); admin also changes definitions, alert policies, allowed
domains, Slack settings, credentials and tokens. A method missing from this table is
refused, and a test fails, so a new method cannot ship without a decision here.
"""

from __future__ import annotations

from flowyard.domain.access import Role

__all__ = ["METHOD_ROLES", "Role"]

# Full gRPC method name -> the least role allowed to call it. Health and reflection are
# open to everyone and not listed. Reads are viewer; acting on runs (and on one's own run
# subscriptions) is operator; whatever changes what runs, where alerts go, what is kept,
# secrets and tokens is admin (webhook secrets, purging runs, alert settings).
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
    "/flowyard.v1.RunControlService/StopRun": Role.OPERATOR,
    "/flowyard.v1.RunControlService/RetryTask": Role.OPERATOR,
    "/flowyard.v1.RunControlService/RestartRun": Role.OPERATOR,
    "/flowyard.v1.RunControlService/RerunFrom": Role.OPERATOR,
    "/flowyard.v1.RunControlService/SkipTask": Role.OPERATOR,
    "/flowyard.v1.RunControlService/ResumeRun": Role.OPERATOR,
    "/flowyard.v1.RunControlService/ReplayRun": Role.OPERATOR,
    "/flowyard.v1.RunControlService/CompareRuns": Role.VIEWER,
    "/flowyard.v1.RunControlService/ListResolutions": Role.VIEWER,
    "/flowyard.v1.RunControlService/ApplyResolution": Role.OPERATOR,
    "/flowyard.v1.HistoryService/ListRuns": Role.VIEWER,
    "/flowyard.v1.HistoryService/ExportRuns": Role.VIEWER,
    "/flowyard.v1.HistoryService/GetRunGraph": Role.VIEWER,
    "/flowyard.v1.HistoryService/GetLogs": Role.VIEWER,
    "/flowyard.v1.HistoryService/TailLogs": Role.VIEWER,
    "/flowyard.v1.HistoryService/GetAnalytics": Role.VIEWER,
    "/flowyard.v1.HistoryService/GetStorageCounts": Role.VIEWER,
    "/flowyard.v1.HistoryService/PurgeRuns": Role.ADMIN,
    "/flowyard.v1.AlertService/SetAlertPolicy": Role.ADMIN,
    "/flowyard.v1.AlertService/ListAlertPolicies": Role.VIEWER,
    "/flowyard.v1.AlertService/DeleteAlertPolicy": Role.ADMIN,
    "/flowyard.v1.AlertService/GetAlertSettings": Role.VIEWER,
    "/flowyard.v1.AlertService/SetAllowedDomains": Role.ADMIN,
    "/flowyard.v1.AlertService/SetSlackSettings": Role.ADMIN,
    "/flowyard.v1.AlertService/SubscribeToRun": Role.OPERATOR,
    "/flowyard.v1.AlertService/ListRunSubscriptions": Role.VIEWER,
    "/flowyard.v1.AlertService/UnsubscribeFromRun": Role.OPERATOR,
    "/flowyard.v1.AlertService/ListAlertActivity": Role.VIEWER,
    "/flowyard.v1.CredentialService/SetCredential": Role.ADMIN,
    "/flowyard.v1.CredentialService/RotateCredential": Role.ADMIN,
    "/flowyard.v1.CredentialService/DeleteCredential": Role.ADMIN,
    "/flowyard.v1.CredentialService/ListCredentials": Role.ADMIN,
    "/flowyard.v1.TokenService/IssueToken": Role.ADMIN,
    "/flowyard.v1.TokenService/RevokeToken": Role.ADMIN,
    "/flowyard.v1.TokenService/ListTokens": Role.ADMIN,
    "/flowyard.v1.TokenService/WhoAmI": Role.VIEWER,
}
