"""The decoder's per-layer KV cache: decoding writes into preallocated buffers (no copy of the whole cache per token),
a second continuation of one prefix leaves the first intact, and a full buffer grows."""

import torch

from llava.model.language_model.llava_llama import LayerCache


def kv(B=2, H=3, T=4, hd=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, T, hd, generator=g), torch.randn(B, H, T, hd, generator=g)


def mask(B, T):
    return torch.ones(B, T, dtype=torch.bool)


def test_prefill_reserves_room_and_decoding_writes_in_place():
    keys, values = kv()
    cache = LayerCache.start(keys, values, mask(2, 4), reserve=3)
    assert cache.length == 4 and cache.buffer.keys.shape[2] == 7
    torch.testing.assert_close(cache.keys, keys, rtol=0, atol=0)
    storage = cache.buffer.keys.data_ptr()
    for step in range(3):
        new_k, new_v = kv(T=1, seed=step + 1)
        cache = cache.append(new_k, new_v, mask(2, 5 + step))
        assert cache.buffer.keys.data_ptr() == storage  # no copy while there is room
        torch.testing.assert_close(cache.keys[:, :, -1:], new_k, rtol=0, atol=0)
        torch.testing.assert_close(cache.values[:, :, -1:], new_v, rtol=0, atol=0)
    assert cache.length == 7
    torch.testing.assert_close(cache.keys[:, :, :4], keys, rtol=0, atol=0)


def test_a_full_buffer_grows_and_keeps_what_it_held():
    keys, values = kv()
    cache = LayerCache.start(keys, values, mask(2, 4))  # no reserve: the buffer is the prefill's keys
    grown = cache.append(*kv(T=1, seed=9), mask(2, 5))
    assert grown.buffer.keys.shape[2] == 8 and grown.length == 5  # twice the length
    torch.testing.assert_close(grown.keys[:, :, :4], keys, rtol=0, atol=0)


def test_two_continuations_of_one_prefix_do_not_overwrite_each_other():
    keys, values = kv()
    prefix = LayerCache.start(keys, values, mask(2, 4), reserve=4)
    first_k, first_v = kv(T=1, seed=1)
    second_k, second_v = kv(T=2, seed=2)
    first = prefix.append(first_k, first_v, mask(2, 5))
    second = prefix.append(second_k, second_v, mask(2, 6))  # the buffer's slot 4 is first's: second copies
    torch.testing.assert_close(first.keys[:, :, 4:], first_k, rtol=0, atol=0)
    torch.testing.assert_close(second.keys[:, :, 4:], second_k, rtol=0, atol=0)
    torch.testing.assert_close(prefix.keys, keys, rtol=0, atol=0)  # the prefix still reads its own tokens
    assert first.buffer is prefix.buffer and second.buffer is not prefix.buffer
