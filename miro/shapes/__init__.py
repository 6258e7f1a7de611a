"""The embedded shapes world: the one package of MIRO that knows circles, squares and triangles.

Everything a domain brings lives here: the scene renderer and its shards (:mod:`.scenes`), the caption
grammar (:mod:`.captions`) and its "synthetic" second family (:mod:`.synthetic`), the detector reward
that checks a caption against an image (:mod:`.alignment`), the GenEval-style benchmark built from the
grammar and GRPO's default prompt pool (:mod:`.benchmark`), the shape probe (:mod:`.probe`), the evidence
study (:mod:`.study`) and ``miro-data shapes`` (:mod:`.cli`). The core packages (data, rewards, models,
flow, lit, rl, eval, pipeline) never import it (tests/test_import_contract.py); they reach it only
through configuration, as they would reach any other domain: ``conf/benchmark/shapes.yaml``,
``conf/rewards/alignment.yaml`` (the reward registry reads the modules of conf/rewards/),
``conf/experiment/rl_shapes_step.yaml`` (the prompt pool) and ``+experiment=shapes``.
"""
