"""Checks of the fast path against transformers that the CPU and GPU tests share."""

from __future__ import annotations

import torch


def assert_decode_logits_match_stock(engine, inputs, steps: int = 12, use_graph: bool = False) -> None:
    """Each decode step's logits (through the CUDA graph with `use_graph`) against transformers'
    generate's raw logits for the same greedy tokens, after our prefill's: the positions, the cache
    and the step's kernels, not only the argmax. The decoder follows stock's tokens, so every step
    compares the same prefix."""
    from qvl.engine.decode import Sampling, StaticDecoder
    from qvl.engine.prefill import prefill

    with torch.inference_mode():
        stock = engine.model.generate(
            **inputs,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            repetition_penalty=1.0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    prompt = inputs["input_ids"]
    decoder = StaticDecoder(engine.model, prompt.shape[1] + steps + 1, Sampling(), use_graph=use_graph)
    done = prefill(engine.model, inputs, lambda: decoder)
    torch.testing.assert_close(done.logits, stock.logits[0][0].float(), rtol=1e-4, atol=1e-4)
    tokens = stock.sequences[0, prompt.shape[1] :].tolist()
    decoder.start(prompt, tokens[0], done.rope_delta, Sampling())
    decoder.capture()
    assert (decoder.graph is not None) == use_graph
    for i in range(1, steps):
        decoder.advance()
        torch.testing.assert_close(decoder.last_logits, stock.logits[i][0].float(), rtol=1e-4, atol=1e-4)
        decoder.token.fill_(tokens[i])
