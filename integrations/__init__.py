"""Adapters that let other frameworks use turngym's envs: ``turngym.integrations.trl`` (TRL's GRPOTrainer).

Each adapter imports its framework lazily, so importing this package needs nothing but turngym.
"""
