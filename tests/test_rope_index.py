"""The mRoPE positions (`qvl.engine.rope_index`): the published model's, checked by hand on small
prompts, against transformers' own where the two agree, and in the loaded engine."""

from __future__ import annotations

import functools

import pytest
import torch

from qvl.engine.rope_index import rope_index

T, IMG, VID = 7, 8, 9  # a text token, the image and video placeholders
index = functools.partial(rope_index, image_token_id=IMG, video_token_id=VID, spatial_merge_size=2, tokens_per_second=2)


def test_text_after_a_video_starts_past_the_videos_time():
    # 2 temporal patches 1.5 s apart (time step 2 x 1.5 = 3), 4 x 2 patches merged to 2 x 1.
    ids = torch.tensor([[T, T, VID, VID, VID, VID, T, T]])
    positions, delta = index(ids, video_grid_thw=torch.tensor([[2, 4, 2]]), second_per_grid_ts=torch.tensor([1.5]))
    assert positions[:, 0].tolist() == [
        [0, 1, 2, 2, 5, 5, 6, 7],  # time: the text after the video at 6, one past its 5
        [0, 1, 2, 3, 2, 3, 6, 7],  # rows
        [0, 1, 2, 2, 2, 2, 6, 7],  # columns
    ]
    assert delta.tolist() == [[0]]


def test_an_image_takes_one_time_and_padding_takes_position_one():
    ids = torch.tensor([[0, 0, T, IMG, IMG, IMG, IMG, T]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    positions, delta = index(ids, image_grid_thw=torch.tensor([[1, 4, 4]]), attention_mask=mask)
    assert positions[:, 0].tolist() == [
        [1, 1, 0, 1, 1, 1, 1, 3],
        [1, 1, 0, 1, 1, 2, 2, 3],
        [1, 1, 0, 1, 2, 1, 2, 3],
    ]
    assert delta.tolist() == [[4 - 6]]


def test_text_alone_counts_up_with_no_delta():
    positions, delta = index(torch.tensor([[T] * 5]))
    assert positions[:, 0].tolist() == [list(range(5))] * 3 and delta.tolist() == [[0]]


def test_tokens_that_do_not_match_their_grid_are_refused():
    with pytest.raises(ValueError, match="media tokens"):
        index(torch.tensor([[T, VID, VID, T]]), video_grid_thw=torch.tensor([[2, 4, 2]]))


def test_the_engine_uses_it_and_agrees_with_transformers_where_they_agree(tiny_model_dir):
    # An image, and a video of one temporal patch: its time span (0) is within its rows, where
    # transformers' releases since 5.3 start the following text where the published model does.
    import numpy as np
    from PIL import Image
    from transformers import Qwen2_5_VLModel

    from qvl.engine import Engine, Request, VideoFrames

    engine = Engine("tiny", device="cpu")
    core = engine.model.model
    assert isinstance(core.get_rope_index, functools.partial) and core.get_rope_index.func is rope_index
    requests = [
        Request("What is it?", images=[Image.new("RGB", (112, 84), "red")]),
        Request("What happens?", video=VideoFrames(np.zeros((2, 112, 84, 3), np.uint8), sampled_fps=2.0)),
    ]
    for request in requests:
        inputs = engine.prepare(request)
        keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids", "attention_mask")
        given = {k: inputs[k] for k in keys if inputs.get(k) is not None}
        ours = core.get_rope_index(inputs["input_ids"], **given)
        theirs = Qwen2_5_VLModel.get_rope_index(core, inputs["input_ids"], **given)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1].flatten(), theirs[1].flatten())
