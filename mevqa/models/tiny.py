"""Tiny offline checkpoints of real VLM architectures, for tests and the demo.

No weights can be downloaded here, so we build ordinary Hugging Face directories ourselves: the real
model class with small random weights, a byte-level BPE tokenizer trained locally with the family's
special tokens, the family's real processor and its chat template. `AutoProcessor` and
`AutoModelForImageTextToText.from_pretrained(DIR)` load them with no network, exactly as they load a
real checkpoint; only the sizes differ. Same seed, same bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForImageTextToText, PreTrainedTokenizerFast

from mevqa import facs, prompts
from mevqa.errors import InputError
from mevqa.io import atomic_dir
from mevqa.models import families

log = logging.getLogger(__name__)

# Qwen2-VL / Qwen2.5-VL chat template (as published with the Instruct checkpoints).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-Instruct's chat template, without its tool-call branches: no default system turn.
_QWEN3_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
)
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _QWEN3_CONTENT + "<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3.5's: the same turns, an answer opens with a (here empty) think block. The published template
# thinks unless `enable_thinking=False`; this one answers directly unless `enable_thinking=True`, since
# ME-VQA scores short answers.
QWEN3_5_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}<think>\n\n</think>\n\n{% endif %}"
    + _QWEN3_CONTENT
    + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking %}<think>\n{% else %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)

# Idefics3 / SmolVLM chat template (as published with HuggingFaceTB/SmolVLM-Instruct).
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN3_5_SPECIAL = [*QWEN_SPECIAL, "<think>", "</think>"]
IDEFICS3_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
]


def _corpus() -> list[str]:
    """Text the tokenizer learns from: the ME-VQA vocabulary plus plain English glue."""
    words = [
        *facs.COARSE_LABELS,
        *facs.FINE_LABELS,
        *facs.AU_NAMES.values(),
        "yes",
        "no",
        "left",
        "right",
    ]
    # each word also alone on a line: an answer starts right after "assistant\n" with no leading space,
    # and a label split into four rare pieces there is much harder to learn than one token
    lines = [*prompts.TEMPLATE_EXAMPLES, " ".join(words), *words, *(w.capitalize() for w in words)]
    lines += [
        f"The action units present are: {a}. Therefore, the fine-grained expression class is {f}, "
        f"and the coarse expression class is {c}."
        for a, f, c in zip(facs.AU_NAMES.values(), facs.FINE_LABELS * 4, facs.COARSE_LABELS * 9)
    ]
    lines += [
        "You are a helpful assistant. Look at the face in these frames and answer the question.",
        "System user assistant: the subject shows a brief facial movement between onset and offset.",
        "Answer with one of the labels. The face, the eyes, the brows, the mouth and the nose move.",
        "0 1 2 3 4 5 6 7 8 9 10 100 200 fps frame frames video image picture clip Picture Video",
    ]
    return lines * 4


def train_tokenizer(special: list[str], vocab_size: int = 1200) -> Tokenizer:
    """A byte-level BPE tokenizer (the scheme Qwen and SmolVLM use) trained on `_corpus()`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


# The language model of every tiny family: small enough for a 2-core CPU, large enough to learn SynthME.
# Head size 32 (64 / 2 heads): vLLM's CPU attention kernels take head sizes 32, 64, 80, 96, 112, 128, ...
# and refuse 16, so the tiny model must have 32 to be served by a real vLLM in the tests.
_TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=4096,
)
TEXT_SIZES = {
    "tiny": _TINY,
    # the demo's: the tiny model in the layout its recipes (adapters/recipes/tiny_synthme*.yaml) were tuned
    # on, 4 heads of 16 and 2 key/value heads; vLLM's CPU kernels refuse head size 16, and the demo never
    # serves its model
    "demo": {**_TINY, "num_attention_heads": 4, "num_key_value_heads": 2},
    # ~110M language-model parameters (~450 MB in fp32): large enough to measure what 4-bit loading saves
    "small": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=4096,
    ),
}


def _sections(half: int) -> list[int]:
    """Multimodal RoPE splits `half` rotary frequencies into (time, height, width) sections, 1:1.5:1.5
    (Qwen2.5-VL's 16:24:24): 16 -> [4, 6, 6], 8 -> [2, 3, 3]."""
    hw = 3 * half // 8
    return [half - 2 * hw, hw, hw]


def _head_dim(size: str) -> int:
    return TEXT_SIZES[size]["hidden_size"] // TEXT_SIZES[size]["num_attention_heads"]


def _qwen_tokenizer(special: list[str]) -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(special),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
    )
    return fast, {t: fast.convert_tokens_to_ids(t) for t in special}


def _qwen_ids(ids: dict[str, int]) -> dict[str, int]:
    """The multimodal token ids a Qwen-VL config names."""
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def qwen2_5_vl_parts(size: str) -> tuple[object, object, int]:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    fast, ids = _qwen_tokenizer(QWEN_SPECIAL)
    # 112 px frames -> 8x8 patches of 14 px -> 16 tokens per frame after the 2x2 merge.
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels, cap_pixels_per_frame=True),
        tokenizer=fast,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _sections(_head_dim(size) // 2)}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(fast),
            **TEXT_SIZES[size],
            rope_parameters=rope,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=TEXT_SIZES[size]["hidden_size"],
            fullatt_block_indexes=[1],
            window_size=56,
            tokens_per_second=2,
        ),
        **_qwen_ids(ids),
    )
    return config, processor, ids["<|im_end|>"]


def _qwen3_processor(fast: PreTrainedTokenizerFast, template: str) -> object:
    """Qwen3-VL's processor (Qwen3.5 uses it too): 16 px patches, 2x2 merge; 112-128 px frames -> 128 px
    -> 16 tokens per frame."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=16, merge_size=2, min_pixels=64 * 64, max_pixels=128 * 128
        ),
        video_processor=Qwen3VLVideoProcessor(
            size={"shortest_edge": 64 * 64, "longest_edge": 128 * 128 * 16}, cap_pixels_per_frame=True
        ),
        tokenizer=fast,
        chat_template=template,
    )


def _qwen3_vision(size: str, **extra: object) -> dict:
    return dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        num_position_embeddings=64,  # an 8x8 grid, interpolated to the frame's patches
        out_hidden_size=TEXT_SIZES[size]["hidden_size"],
        **extra,
    )


def qwen3_vl_parts(size: str) -> tuple[object, object, int]:
    from transformers import Qwen3VLConfig

    fast, ids = _qwen_tokenizer(QWEN_SPECIAL)
    head = _head_dim(size)
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(fast),
            **TEXT_SIZES[size],
            head_dim=head,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": _sections(head // 2),
                "mrope_interleaved": True,
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        # DeepStack: the first vision block's features are added to the first language-model layer
        vision_config=_qwen3_vision(size, deepstack_visual_indexes=[0]),
        **_qwen_ids(ids),
    )
    return config, _qwen3_processor(fast, QWEN3_CHAT_TEMPLATE), ids["<|im_end|>"]


def qwen3_5_parts(size: str) -> tuple[object, object, int]:
    from transformers import Qwen3_5Config

    fast, ids = _qwen_tokenizer(QWEN3_5_SPECIAL)
    head = _head_dim(size)
    layers = TEXT_SIZES[size]["num_hidden_layers"]
    config = Qwen3_5Config(
        text_config=dict(
            vocab_size=len(fast),
            **TEXT_SIZES[size],
            head_dim=head,
            # half the head rotary (the published quarter leaves the demo's 16-wide heads 2 frequencies)
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e7,
                "mrope_section": _sections(head // 4),
                "mrope_interleaved": True,
                "partial_rotary_factor": 0.5,
            },
            # Gated DeltaNet linear attention, then full attention (every 2nd layer here, 4th published);
            # one linear head of the published width 128: vLLM's CPU kernel takes no other
            layer_types=["linear_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
            linear_num_key_heads=1,
            linear_num_value_heads=1,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=_qwen3_vision(size),
        **_qwen_ids(ids),
    )
    return config, _qwen3_processor(fast, QWEN3_5_CHAT_TEMPLATE), ids["<|im_end|>"]


def idefics3_parts(size: str) -> tuple[object, object, int]:
    from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    fast = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(IDEFICS3_SPECIAL),
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        model_max_length=4096,
    )
    ids = {t: fast.convert_tokens_to_ids(t) for t in IDEFICS3_SPECIAL}
    side = 64  # one 64 px tile per frame, 8 px patches, pixel shuffle 2 -> 16 tokens per frame
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(
            do_image_splitting=False,
            size={"longest_edge": side},
            max_image_size={"longest_edge": side},
        ),
        tokenizer=fast,
        image_seq_len=16,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    config = Idefics3Config(
        text_config=dict(
            model_type="llama",
            vocab_size=len(fast),
            **TEXT_SIZES[size],
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<end_of_utterance>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=side,
            patch_size=8,
        ),
        scale_factor=2,
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    return config, processor, ids["<end_of_utterance>"]


def build_tiny(family: str, out: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    """Write a tiny random-weight checkpoint of `family` to `out` and return the path.

    The directory is written to a temporary sibling and renamed into place, so an interrupted build
    never leaves a half-written checkpoint behind.
    """
    builder = families.get(family).tiny_builder()
    out = Path(out)
    if size not in TEXT_SIZES:
        raise InputError(f"--size {size!r} — choose one of {', '.join(TEXT_SIZES)}")
    config, processor, eos_id = builder(size)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    log.info(
        "wrote tiny %s checkpoint (%d params) to %s", family, sum(p.numel() for p in model.parameters()), out
    )
    return out
