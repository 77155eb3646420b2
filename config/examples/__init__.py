"""Example models for driftwarden's policies and walkthroughs (``examples.churn:train``)."""
