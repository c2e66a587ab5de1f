"""The `chatglm` entries of zhlora's family registry.

Two entries share model_type "chatglm": ChatGLM-6B (v1, no packing: its 2D positions and
prefix-bidirectional mask depend on where [gMASK]/<sop> sit in a row) and ChatGLM2/3/GLM-4
(packing with 4D block masks supported). LoRA presets never include the output layer.
"""
from __future__ import annotations

from zhlora.families import Family, register_family
from zhlora.models.chatglm.configuration import detect_version, template_for_config

PRESETS = {"default": ["query_key_value"],
           "attn": ["query_key_value", "dense"],
           "all": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]}

register_family(Family(
    name="chatglm", model_types=("chatglm",), template="chatglm2", lora_presets=PRESETS,
    embedding_modules=("word_embeddings", "output_layer"), packing=True, ptuning=True,
    matches=lambda cfg: detect_version(cfg) == 2, template_for=template_for_config,
    templates=("chatglm2", "chatglm3", "glm4"),
    notes="ChatGLM2-6B / ChatGLM3-6B / GLM-4 (original THUDM chatglm format), native code"))

register_family(Family(
    name="chatglm-6b", model_types=("chatglm",), template="chatglm", lora_presets=PRESETS,
    embedding_modules=("word_embeddings", "lm_head"), packing=False, ptuning=True,
    matches=lambda cfg: detect_version(cfg) == 1, template_for=template_for_config, templates=("chatglm",),
    notes="ChatGLM-6B (v1): packing unsupported (2D positions, prefix-bidirectional mask)"))
