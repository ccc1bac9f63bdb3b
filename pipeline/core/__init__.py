"""The kernel under every stage: Parquet manifests (``manifest``), the workspace layout and its one
name rule (``workspace``), validation of upstream manifests on read (``validate``), the one user
error type (``errors``), progress bars (``progress``) and process settings scoped to a call
(``runtime``). It imports nothing else of dgamix, so stage 3 (``dgamix.mixing``) can read what
stages 1-2 wrote through it without depending on their code."""
