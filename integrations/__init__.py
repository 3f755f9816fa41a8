"""Adapters that let other frameworks use turngym's envs and estimators, one module per framework
(``turngym.integrations.trl``: TRL's GRPOTrainer plays turngym episodes).

Each adapter imports its framework lazily, so importing this package needs nothing but turngym.
"""
