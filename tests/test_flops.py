"""The FastV paper's FLOPs formula, with its headline worked by hand."""

from fastv.flops import fastv_flops_ratio, layer_flops


def test_layer_flops_by_hand():
    # n = 10, d = 4, m = 8: 4*10*16 + 2*100*4 + 2*10*4*8 = 640 + 800 + 640
    assert layer_flops(10, 4, 8) == 2080


def test_fastv_headline_on_llava_15_13b():
    # LLaVA-1.5-13B (d 5120, m 13824, 40 layers), n = 612 (35 system + 576 image + 1), K = 2, R = 50%: 288 dropped.
    ratio = fastv_flops_ratio(612, 288, 2, 40, 5120, 13824)
    assert 0.54 < ratio < 0.56  # about 45% fewer FLOPs, the paper's headline
    assert fastv_flops_ratio(612, 0, 2, 40, 5120, 13824) == 1.0
    assert fastv_flops_ratio(612, 288, 40, 40, 5120, 13824) == 1.0  # pruning after the last layer saves nothing
