"""Thin glue between respec and vLLM: the rollout server, its scheduler and worker extension.

Nothing is imported here: each module imports vLLM (and verl's vLLM glue) and is loaded only in
the process that needs it (the rollout server actor, vLLM's engine core, vLLM's workers).
"""
