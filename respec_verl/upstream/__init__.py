"""The boundary with verl, vLLM and Ray: every private upstream name the package uses, in one module per upstream.

`verl_compat`, `vllm_compat` and `ray_compat` each name the version they were written against
(`WRITTEN_AGAINST`) and hold the overridden private methods, the private members reached through
small accessors, the patched methods and module globals, the mirrored values and the matched log
texts. The rest of the package calls them; `tests/test_upstream_contracts.py` checks every entry
against the installed upstream, and `tests/test_upstream_boundary.py` keeps new private names from
appearing elsewhere. The full list, with who uses what: docs/upstream/touch-points.md.
"""
