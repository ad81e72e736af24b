"""lmms-eval task YAMLs (``--include_path`` this folder) and their functions (``playground_utils``)."""
