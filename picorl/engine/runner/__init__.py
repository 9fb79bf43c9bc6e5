"""The model runner: the trainer's modules run step by step over the paged cache, compiled and graphed."""
