"""The trainer of the project's shipped small models (`models/llava-shapes-tiny`, LLaVA-1.5;
`models/llava-next-shapes-tiny`, LLaVA-NeXT; `models/llava-video-shapes-tiny`, Video-LLaVA), on the synthetic
shapes-VQA task (`llava.data.synthetic`) and its video look (`llava.data.video_clips`).

    python -m llava.train --out runs/X --export runs/X/export [options]   (--help lists them)

- `data`: synthetic samples -> token ids, the image as the model takes it, and the
  auxiliary labels of each view of the vision tower;
- `model`: the model as it trains (token drop, what the losses read) and the training-only heads;
- `losses`: the answers' cross-entropy and the auxiliary losses;
- `video`: the Video-LLaVA recipe (`--video`): the model from a LLaVA-1.5 one, clips and images mixed;
- `vision`: the vision phase (the tower alone on its heads, before the whole model trains);
- `export`: the llava-hf layout that our loader and transformers both load;
- `loop`: options, the loop, validation, checkpoints.

Each model card (MODEL_CARD.md beside the weights) gives the one command that made it.
"""
