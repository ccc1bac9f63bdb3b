"""The kernel under every stage: Parquet manifests (``manifest``), the workspace layout and its one
name rule (``workspace``), the stage runner (``stage``: lock, containment, atomic replacement), the
one place files are renamed, deleted and locked (``files``), the stages' parameters and defaults
(``params``), validation of upstream manifests on read (``validate``), the packaged model and the
trust rule for model folders (``models``), the one user error type (``errors``), progress bars
(``progress``) and process settings scoped to a call (``runtime``). It imports nothing else of dgamix, so stage 3 (``dgamix.mixing``) can read what
stages 1-2 wrote through it without depending on their code."""
