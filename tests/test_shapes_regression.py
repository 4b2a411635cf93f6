"""Accuracy floors of the shipped models on fixed subsets of their synthetic benchmarks.

A wrong index in a pruning method (a kept set that misses the objects, a
mis-aligned span, a cache that loses the image) shows up here as lost accuracy.
Each floor sits MARGIN points under what the shipped model scored on the same
first questions, greedy, at the same batch size, in the sweeps docs/results.md
reports:

    .venv/bin/fastv sweep --limit 300 --batch-size 32 --out results/cpu-2core-2026-12-05/shapes-sweep
    .venv/bin/fastv sweep --benchmark shapes_hr --limit 300 --batch-size 32 --out results/cpu-2core-2026-12-05/shapes-hr-sweep
    .venv/bin/fastv sweep --benchmark shapes_video --limit 144 --batch-size 16 \
        --out results/cpu-2core-2026-12-07/shapes-video-sweep

(sweep.json in each holds every method and budget; MEASURED copies the rows
checked here: LLaVA-1.5 unpruned, FasterVLM and FastV at 25% on shapes;
LLaVA-NeXT unpruned, HiRED at 20% and FasterVLM at the matched count, 29 of 144
per partition, on shapes_hr; Video-LLaVA unpruned, FasterVLM per frame and FastV over the
whole span at 25% of the video tokens, 296 of 1160, on shapes_video). Decoding is greedy and
deterministic, so the margin only absorbs float noise from other CPUs and batch
layouts flipping a near-tie answer: 4 points is 12 of 300 questions. A method
that keeps the wrong tokens fails its floor: random keeps score 55.3% at 25% on
shapes and 40.3% at 20% on shapes_hr (the same sweeps). The video floors
catch a gross break only (a span cut across frames, a clip lost): the small
video model answers its temporal questions near chance, so random keeps score
56.9% at 25% there, level with FasterVLM's 55.6%, and only uniform sampling,
44.4%, falls under the floors.
"""

import pytest

from fastv.shipped import SHIPPED_MODEL, SHIPPED_NEXT_MODEL, SHIPPED_VIDEO_MODEL
from fastv.sweep import method_spec, video_spec

MARGIN = 4.0  # points under the measured accuracy
MEASURED_SHAPES = {"none": 96.0, "fastervlm": 76.3, "fastv": 86.7}  # accuracy (%) at 25% of 144 tokens, sweep.json
MEASURED_HR = {"none": 94.7, "hired": 75.0, "fastervlm": 78.7}  # accuracy (%) at 20% of the tokens, sweep.json
MEASURED_VIDEO = {"none": 62.5, "fastervlm": 55.6, "fastv": 54.2}  # accuracy (%) at 25% of the video tokens, sweep.json
CASES = {  # benchmark -> (model, questions, batch size, share of the visual tokens kept, measured accuracies)
    "shapes": (SHIPPED_MODEL, 300, 32, 0.25, MEASURED_SHAPES),
    "shapes_hr": (SHIPPED_NEXT_MODEL, 300, 32, 0.2, MEASURED_HR),
    "shapes_video": (SHIPPED_VIDEO_MODEL, 144, 16, 0.25, MEASURED_VIDEO),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from llava.data.synthetic import write_split
    from llava.eval.shapes import LOOKS

    root = tmp_path_factory.mktemp("eval")
    for benchmark, (_, questions, *_) in CASES.items():
        write_split("test", questions, root / benchmark, look=LOOKS[benchmark])
    return root


@pytest.fixture(scope="module")
def pipes():
    from llava.pipeline import LlavaPipeline

    cache = {}

    def load(folder):
        if folder not in cache:
            cache[folder] = LlavaPipeline.load(str(folder))
        return cache[folder]

    return load


@pytest.mark.parametrize("benchmark, method", [(b, m) for b, case in CASES.items() for m in case[-1]])
def test_accuracy_floor(benchmark, method, data_root, pipes, tmp_path):
    from llava.eval.run import run_benchmark

    model, questions, batch_size, share, measured = CASES[benchmark]
    if not (model / "config.json").is_file():
        pytest.skip(f"{model.name} is not in this checkout")
    pipe = pipes(model)
    config = pipe.model.config
    if config.video is not None:  # matched on the video tokens the LLM runs on, as the sweep matches them
        spec = video_spec(method, share, config.tokens_per_image, config.video.num_frames, config.video.cls == "keep",
                          config.text.num_layers)
    else:
        spec = method_spec(method, share, config.tokens_per_image)
    spec = pipe.model.set_pruning(spec).spec
    scores = run_benchmark(benchmark, pipe, data_root, tmp_path, model_path=str(model), method=spec,
                           batch_size=batch_size, progress=False)
    accuracy, floor = scores["metrics"]["accuracy"], measured[method] - MARGIN
    assert scores["metrics"]["questions"] == questions
    assert accuracy >= floor, f"{spec}: {accuracy:.1f}% on the first {questions} {benchmark} questions, floor {floor:.1f}%"
