"""Drop-in integrations of baton-fast into other frameworks.

Each submodule imports its framework, so import it explicitly:
``from baton_fast.integrations import diffusers as baton_diffusers``.
"""
