"""Zero-shot evaluation: generation CLIs, answer-file integrity and exact LLaVA-1.5 scorers.

Kept import-free on purpose: ``python -m llava_restore.eval.eval_pope`` must not pull in torch.
Use :func:`llava_restore.eval.registry.get_scorer` to reach a scorer by benchmark name.
"""
