"""Evaluation on the LLaVA-1.5 benchmark suite (see EVAL.md).

    common.py     Question, answer files, images, the VQA normaliser and soft accuracy, option letters
    <bench>.py    one module per benchmark: load_questions, build_prompt, score
    registry.py   benchmark names -> where their files are, how to load and score them
    run.py        `python -m llava.eval.run`: answer (resumable, multi-process), then score
"""
