"""Retrains nobody's rule asked for: an operator's `driftwarden retrain`, or a policy's cron.

Both become an ordinary :class:`~driftwarden.policies.model.Decision` carrying the policy's
``retrain`` action, so they take the same path as a rule's retrain (outbox, data gate, model
gates, registry) and leave the same audit trail.
"""

from __future__ import annotations

from driftwarden.policies.model import Action, Decision, Policy, fingerprint, iso_utc

__all__ = ["manual_retrain_decision"]


def manual_retrain_decision(
    policy: Policy,
    model: str,
    at: float,
    *,
    requested_by: str,
    reason: str,
    rule: str | None = None,
    name: str = "manual-retrain",
) -> Decision:
    """A ``name`` decision for ``model`` at event/wall time ``at`` with a retrain action.

    The trainer, gates and data come from the retrain action of ``rule`` (or the policy's first
    rule that retrains). Raises ``ValueError`` naming the policy file when there is none.
    """
    params = next(
        (
            dict(p)
            for r in policy.rules
            if rule is None or r.name == rule
            for t, p in r.actions
            if t == "retrain"
        ),
        None,
    )
    if params is None:
        which = f"rule {rule!r}" if rule else "any rule"
        raise ValueError(f"{policy.source}: {which} of this policy has no retrain action to use.")
    end = iso_utc(at)
    key = f"{model}/{name}/{end}"
    return Decision(
        model=model,
        rule=name,
        severity="info",
        status="firing",
        window_start=end,
        window_end=end,
        window_index=-1,
        detectors={},
        actions=(Action("retrain", params, f"{key}/retrain/{model}"),),
        evidence={"requested_by": requested_by},
        reasons=(reason,),
        fingerprint=fingerprint(model, name),
        key=key,
    )
