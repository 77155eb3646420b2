"""Policies: strict policy YAML, rule evaluation, decisions and alert receivers."""
